//! Re-walks every namespace's TCP table every `INTERVAL` and hands the result to the event loop,
//! which reconciles the inventory with it (`inventory::resync`).
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use log::warn;
use tokio::sync::mpsc;

use crate::{
    attach::Attached,
    decode,
    inventory::{Inventory, resync::Walked},
    pipeline::Input,
};

/// Often enough that a churn-heavy host with lost closes converges within a minute; a walk of
/// 100 k sockets costs tens of milliseconds of kernel time.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// Re-walks every `INTERVAL` until the programs are detached (`attached` emptied).
pub async fn run(attached: Arc<Mutex<Option<Attached>>>, inventory: Arc<Mutex<Inventory>>, hz: u32, tx: mpsc::Sender<Input>) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        inventory.lock().unwrap_or_else(|e| e.into_inner()).begin_walk();
        let att = attached.clone();
        let walked = tokio::task::spawn_blocking(move || {
            let mut guard = att.lock().unwrap_or_else(|e| e.into_inner());
            guard.as_mut().map(|a| crate::attach::inventory(&mut a.ebpf))
        })
        .await;
        let result = match walked {
            Ok(None) => return,
            Ok(Some(r)) => r,
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok((buf, namespaces)) => {
                let events = decode::records(&buf).filter_map(|r| decode::decode(r, hz).ok()).collect();
                let namespaces = namespaces.into_iter().collect();
                if tx.send(Input::Resync(Walked { events, namespaces })).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!("inventory re-walk failed: {e}");
                inventory.lock().unwrap_or_else(|e| e.into_inner()).abandon_walk();
            }
        }
    }
}

