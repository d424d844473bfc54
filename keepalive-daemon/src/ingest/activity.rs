//! Fresh activity (`ages::Activity`: the ages of a socket's last segments) on demand: when
//! `/sockets`, `/advice` or the metrics are read, the iterator walks every namespace's TCP
//! table (the same walk as `rewalk`, handed on in chunks) so that each socket's idle time is
//! the kernel's own, not an extrapolation. No per-packet hook: a walk costs what the
//! re-walk costs (tens of ms at 100 k sockets), so it runs at most once per `MIN_INTERVAL`
//! unless a socket opened since the last walk; readers within that window get the last walk's
//! values aged by the clock (exact while the socket stays silent, which is what risk is about).
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use super::ages::Activity;
use keepalive_common::RawEvent;

use super::decode::{self, KernelEvent};
use crate::kernel::attach::{self, Attached};

/// At most one walk per this interval, whoever asks.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

pub struct ActivityWalk {
    attached: Arc<Mutex<Option<Attached>>>,
    hz: u32,
    /// Held across a walk so that concurrent readers wait for one walk instead of each
    /// starting their own; holds when the last one finished.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl ActivityWalk {
    pub fn new(attached: Arc<Mutex<Option<Attached>>>, hz: u32) -> Self {
        ActivityWalk {
            attached,
            hz,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Walks every socket's record afresh and hands them to `apply` in chunks of at most
    /// `attach::CHUNK_RECORDS` as the kernel produces them (the walk's memory is one chunk
    /// or two, not 150 bytes a socket); false when one ran within `MIN_INTERVAL` (or the
    /// programs are detached). `unwalked`: sockets opened since the last walk, whose ages the
    /// kernel had not stamped yet when they were reported; they are walked at once.
    pub async fn fresh(&self, unwalked: bool, mut apply: impl FnMut(&[KernelEvent])) -> bool {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        let waited = asked.elapsed();
        if !unwalked && last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
            return false;
        }
        // Two chunks in flight: the walk decodes the next while the inventory takes this one.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<KernelEvent>>(2);
        let (att, hz) = (self.attached.clone(), self.hz);
        let walk = tokio::task::spawn_blocking(move || {
            let mut guard = att.lock().unwrap_or_else(|e| e.into_inner());
            let Some(a) = guard.as_mut() else { return };
            let mut each = |recs: &[u8]| {
                let chunk: Vec<KernelEvent> = decode::records(recs)
                    .filter_map(|r| decode::decode(r, hz).ok())
                    .collect();
                tx.blocking_send(chunk).is_ok()
            };
            if let Err(e) = attach::inventory_each(&mut a.ebpf, RawEvent::SIZE, &mut each) {
                log::debug!("activity walk failed: {e}");
            }
        });
        // Phases, for a walk slower than its peers: waiting for another reader's walk, the
        // kernel's (the time this side waited for chunks), and applying them (the inventory
        // lock included).
        let (mut applying, mut chunks) = (Duration::ZERO, 0usize);
        let started = Instant::now();
        while let Some(chunk) = rx.recv().await {
            let t = Instant::now();
            apply(&chunk);
            applying += t.elapsed();
            chunks += 1;
        }
        let _ = walk.await;
        let took = started.elapsed();
        log::debug!(
            "activity walk: {took:?} ({chunks} chunks: applying {applying:?}, waiting for the \
             kernel {:?}), after {waited:?} waiting for another reader's walk",
            took.saturating_sub(applying)
        );
        *last = Some(Instant::now());
        true
    }
}
