//! Fresh activity (`ages::Activity`: the ages of a socket's last segments) on demand: when
//! `/sockets`, `/advice` or the metrics are read, the iterator walks every namespace's TCP table (the same walk as `rewalk`) so that each socket's idle time
//! is the kernel's own, not an extrapolation. No per-packet hook: a walk costs what the
//! re-walk costs (tens of ms at 100 k sockets), so it runs at most once per `MIN_INTERVAL`
//! unless a socket opened since the last walk; readers within that window get the last walk's
//! values aged by the clock (exact while the socket stays silent, which is what risk is about).
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use super::ages::Activity;
use super::decode::KernelEvent;
use crate::kernel::attach::Attached;

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

    /// Every socket's record from a new walk, or `None` when one ran within `MIN_INTERVAL`
    /// (or the walk failed, or the programs are detached). `unwalked`: sockets opened since the
    /// last walk, whose ages the kernel had not stamped yet when they were reported; they are
    /// walked at once.
    pub async fn fresh(&self, unwalked: bool) -> Option<Vec<KernelEvent>> {
        let mut last = self.last.lock().await;
        if !unwalked && last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
            return None;
        }
        let walked = super::rewalk::walk(&self.attached, self.hz).await;
        *last = Some(Instant::now());
        Some(walked?.ok()?.events)
    }
}
