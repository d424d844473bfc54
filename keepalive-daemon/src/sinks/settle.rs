//! What a scrape leaves for later: the activity walk and the re-tally of the inventory's
//! classes (see `state::inventory::tally`), run after a scrape instead of in it, so that
//! `/metrics` answers from the tally at once, however many sockets there are. The next scrape
//! sees the settled figures.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::sinks::http::Web;

/// Sockets re-tallied per hold of the inventory lock: a few ms, so events keep flowing while
/// a million sockets are settled.
pub const CHUNK: usize = 16_384;
/// Settling again waits this many times its last cost (2 % of one CPU at most: at a million
/// sockets a settling costs 4 s of CPU, its walk most of it, and at 20 times it was the
/// largest part of a quiet daemon's CPU)…
const SPACING: u32 = 50;
/// …and at least this long: scrapes closer together share one settling.
const MIN_SPACING: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Settle {
    running: AtomicBool,
    next: Mutex<Option<Instant>>,
}

impl Settle {
    /// Starts a settling in the background unless one runs or the last one was too recent.
    pub fn after_scrape(web: &Arc<Web>) {
        let due = web
            .settle
            .next
            .lock()
            .map_or(true, |n| n.is_none_or(|t| Instant::now() >= t));
        if !due || web.settle.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let web = web.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            web.fresh_activity().await;
            let ids = web.lock_inventory().socket_ids();
            let mut moved = 0;
            for chunk in ids.chunks(CHUNK) {
                moved += web.lock_inventory().retally(chunk);
                tokio::task::yield_now().await;
            }
            let took = started.elapsed();
            log::debug!(
                "settled {} sockets' classes in {took:?}: {moved} moved",
                ids.len()
            );
            // The socket list (8 bytes a socket) and the walk's chunks are gone: their pages go
            // back too, or RSS keeps the high-water mark until the next idle trim.
            if ids.len() >= CHUNK {
                drop(ids);
                let _ = tokio::task::spawn_blocking(crate::service::heap::release_freed).await;
            }
            if let Ok(mut next) = web.settle.next.lock() {
                *next = Some(Instant::now() + (took * SPACING).max(MIN_SPACING));
            }
            web.settle.running.store(false, Ordering::Release);
        });
    }
}
