//! Re-walks every namespace's TCP table when events may have been lost and hands the result to
//! the event loop, which reconciles the inventory with it (`inventory::resync`). With nothing
//! lost the inventory is exact (every open and close was seen), so the walk, which stalls the
//! event loop for tens of milliseconds at 100 k sockets, only runs then and as a slow safety net.
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use log::warn;
use tokio::sync::mpsc;

use super::{
    Input,
    decode::{self, KernelEvent},
};
use crate::{kernel::attach::Attached, service::heap};

/// One finished walk: every socket the kernel listed, and the namespaces it could enter (a
/// namespace that could not be walked says nothing about its sockets).
pub struct Walked {
    pub events: Vec<KernelEvent>,
    pub namespaces: HashSet<u32>,
}

/// What the re-walk needs from the rest of the daemon, handed in by the pipeline so that this
/// input does not reach into the state or the sinks.
pub struct Callbacks {
    /// Events lost where an open or close could have been among them, plus unseen probes
    /// (a batch of hook runs the kernel did not deliver may have taken closes with it).
    pub lost: Box<dyn Fn() -> u64 + Send>,
    /// Tells the inventory a walk begins (closes seen from now on must not be undone by it).
    pub begin: Box<dyn Fn() + Send>,
    /// Tells the inventory the walk failed.
    pub abandon: Box<dyn Fn() + Send>,
}

/// How often the loss counters are looked at: a churn-heavy host with lost closes converges
/// within a minute.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// A walk even without losses, every this many intervals (10 minutes).
const SAFETY_EVERY: u32 = 20;

/// One walk of every namespace's TCP table on the blocking pool, decoded; `None` once the
/// programs are detached. Also the on-demand walk of `activity`.
pub async fn walk(
    attached: &Arc<Mutex<Option<Attached>>>,
    hz: u32,
) -> Option<Result<Walked, String>> {
    let att = attached.clone();
    let walked = tokio::task::spawn_blocking(move || {
        let mut guard = att.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_mut()
            .map(|a| crate::kernel::attach::inventory(&mut a.ebpf))
    })
    .await;
    let (buf, namespaces) = match walked {
        Ok(None) => return None,
        Ok(Some(Ok(r))) => r,
        Ok(Some(Err(e))) => return Some(Err(e)),
        Err(e) => return Some(Err(e.to_string())),
    };
    let events = decode::records(&buf)
        .filter_map(|r| decode::decode(r, hz).ok())
        .collect();
    let namespaces = namespaces.into_iter().collect();
    Some(Ok(Walked { events, namespaces }))
}

/// Runs until the programs are detached (`attached` emptied). `lost_before_walk`: what
/// `Callbacks::lost` counted before the start-up inventory began.
pub async fn run(
    attached: Arc<Mutex<Option<Attached>>>,
    callbacks: Callbacks,
    hz: u32,
    tx: mpsc::Sender<Input>,
    lost_before_walk: u64,
) {
    // Start-up's inventory is a walk: what was lost before it began (`lost_before_walk`)
    // needs no other. Counting from zero, a first re-walk 30 s after start-up cost seconds of
    // CPU at a million sockets for losses that walk had already covered.
    let (mut lost_at_walk, mut idle) = (lost_before_walk, 0);
    loop {
        tokio::time::sleep(INTERVAL).await;
        let now = (callbacks.lost)();
        idle += 1;
        if now == lost_at_walk && idle < SAFETY_EVERY {
            heap::release_freed();
            continue;
        }
        (lost_at_walk, idle) = (now, 0);
        (callbacks.begin)();
        match walk(&attached, hz).await {
            None => return,
            Some(Ok(walked)) => {
                if tx.send(Input::Resync(walked)).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => {
                warn!("inventory re-walk failed: {e}");
                (callbacks.abandon)();
            }
        }
    }
}
