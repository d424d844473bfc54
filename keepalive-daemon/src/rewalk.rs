//! Re-walks every namespace's TCP table when events may have been lost and hands the result to
//! the event loop, which reconciles the inventory with it (`inventory::resync`). With nothing
//! lost the inventory is exact (every open and close was seen), so the walk, which stalls the
//! event loop for tens of milliseconds at 100 k sockets, only runs then and as a slow safety net.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use log::warn;
use tokio::sync::mpsc;

use crate::{attach::Attached, decode, http::Web, inventory::resync::Walked, pipeline::Input};

/// How often the loss counters are looked at: a churn-heavy host with lost closes converges
/// within a minute.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// A walk even without losses, every this many intervals (10 minutes).
const SAFETY_EVERY: u32 = 20;

/// Events lost where an open or close could have been among them. Unseen probes count too: a
/// batch of hook runs the kernel never delivered (see `unseen`) may have taken closes with it.
fn lost(web: &Web) -> u64 {
    web.kernel_lost
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .refresh(&web.metrics);
    let events: u64 = ["kernel", "nested", "decode"]
        .iter()
        .map(|s| web.metrics.lost.with_label_values(&[s]).get())
        .sum();
    events + web.metrics.probes_unseen.get()
}

/// Runs until the programs are detached (`attached` emptied).
pub async fn run(
    attached: Arc<Mutex<Option<Attached>>>,
    web: Arc<Web>,
    hz: u32,
    tx: mpsc::Sender<Input>,
) {
    let inventory = web.inventory.clone();
    let (mut lost_at_walk, mut idle) = (0, 0);
    loop {
        tokio::time::sleep(INTERVAL).await;
        let now = lost(&web);
        idle += 1;
        if now == lost_at_walk && idle < SAFETY_EVERY {
            crate::pipeline::release_freed_heap();
            continue;
        }
        (lost_at_walk, idle) = (now, 0);
        inventory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .begin_walk();
        let att = attached.clone();
        let walked = tokio::task::spawn_blocking(move || {
            let mut guard = att.lock().unwrap_or_else(|e| e.into_inner());
            guard
                .as_mut()
                .map(|a| crate::attach::inventory(&mut a.ebpf))
        })
        .await;
        let result = match walked {
            Ok(None) => return,
            Ok(Some(r)) => r,
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok((buf, namespaces)) => {
                let events = decode::records(&buf)
                    .filter_map(|r| decode::decode(r, hz).ok())
                    .collect();
                let namespaces = namespaces.into_iter().collect();
                if tx
                    .send(Input::Resync(Walked { events, namespaces }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                warn!("inventory re-walk failed: {e}");
                inventory
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .abandon_walk();
            }
        }
    }
}
