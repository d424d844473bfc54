//! The periodic re-walk. Opens and closes reach the inventory as ring-buffer events; when the
//! ring overflows (counted in `keepalive_events_lost_total{stage="kernel"}`) a closed socket
//! would stay listed forever and a new one would be missing until its next event. Every
//! `INTERVAL` the iterator walks every namespace again and the kernel's own list wins.
//! The walk itself runs in `crate::ingest::rewalk`, which sends its `Walked`; this is what the inventory does with its result.
use hashbrown::HashSet;

use super::Inventory;
use crate::{ingest::rewalk::Walked, state::owners::Owner};

pub struct Walk {
    /// `Inventory::epoch` ms.
    started_ms: u64,
    /// Sockets whose close arrived while the walk ran: the walk may still list them, and adding
    /// them back would be a phantom.
    pub(super) gone: HashSet<u64>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Corrections {
    pub added: usize,
    pub removed: usize,
}

impl Inventory {
    pub fn begin_walk(&mut self) {
        self.walk = Some(Walk {
            started_ms: self.now_ms(),
            gone: HashSet::new(),
        });
    }

    pub fn abandon_walk(&mut self) {
        self.walk = None;
    }

    /// Makes the inventory agree with a finished walk: entries the walk did not list in a
    /// namespace it walked, and that nothing refreshed since it began, were closed; sockets
    /// it listed that the inventory lacks were opened.
    pub fn reconcile(
        &mut self,
        walked: &Walked,
        owner: impl Fn(u64) -> Option<Owner>,
    ) -> Corrections {
        let Some(walk) = self.walk.take() else {
            return Corrections::default();
        };
        let alive: HashSet<u64> = walked.events.iter().map(|e| e.sk).collect();
        let stale: Vec<u64> = self
            .sockets
            .iter()
            .filter(|e| {
                walked.namespaces.contains(&e.netns)
                    && !alive.contains(&e.sk)
                    && u64::from(e.seen_ms) < walk.started_ms
            })
            .map(|e| e.sk)
            .collect();
        for sk in &stale {
            self.remove(*sk);
        }
        // Owners kept for sockets configured before connect: one the kernel no longer lists
        // was closed without ever connecting (no state change reports that). At worst a socket
        // configured during the walk loses its kept owner and is named by a /proc scan instead.
        self.pending.retain(|sk, _| alive.contains(sk));
        let mut added = 0;
        for ev in &walked.events {
            if !self.sockets.contains_key(ev.sk) && !walk.gone.contains(&ev.sk) {
                self.apply(ev, owner(ev.ino));
                added += 1;
            }
        }
        Corrections {
            added,
            removed: stale.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        ingest::decode::{KernelEvent, Kind},
        state::inventory::tests::ev,
    };

    fn walked(events: Vec<KernelEvent>, namespaces: &[u32]) -> Walked {
        Walked {
            events,
            namespaces: namespaces.iter().copied().collect(),
        }
    }

    fn listed(inv: &Inventory) -> Vec<u64> {
        let mut v: Vec<u64> = inv.sockets.keys().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn the_walk_removes_lost_closes_and_adds_lost_opens() {
        let mut inv = Inventory::new(Duration::from_secs(350));
        for sk in [1, 2, 3] {
            inv.apply(&ev(Kind::Open, sk, 7), None);
        }
        inv.apply(&ev(Kind::Open, 9, 8), None);
        // Entries refreshed in the walk's first millisecond are kept (the walk may predate them).
        std::thread::sleep(Duration::from_millis(2));
        inv.begin_walk();
        // The kernel still has 1 and 3 and a 4 whose open was lost; 2's close was lost.
        let w = walked(
            vec![
                ev(Kind::Walked, 1, 7),
                ev(Kind::Walked, 3, 7),
                ev(Kind::Walked, 4, 7),
            ],
            &[7],
        );
        assert_eq!(
            inv.reconcile(&w, |_| None),
            Corrections {
                added: 1,
                removed: 1
            }
        );
        // Namespace 8 was not walked (could not be entered): its socket stays.
        assert_eq!(listed(&inv), vec![1, 3, 4, 9]);
        assert_eq!(inv.members.get(&7), Some(&3));
        // A second result without a walk begun is ignored.
        assert_eq!(
            inv.reconcile(&walked(vec![], &[7, 8]), |_| None),
            Corrections::default()
        );
        assert_eq!(listed(&inv), vec![1, 3, 4, 9]);
    }

    #[test]
    fn events_during_the_walk_win_over_it() {
        let mut inv = Inventory::new(Duration::from_secs(350));
        inv.apply(&ev(Kind::Open, 1, 7), None);
        inv.begin_walk();
        // While the kernel walked: 1 closed (the walk saw it), 5 opened (the walk missed it).
        inv.apply(&ev(Kind::Gone, 1, 7), None);
        std::thread::sleep(Duration::from_millis(2));
        inv.apply(&ev(Kind::Open, 5, 7), None);
        let w = walked(vec![ev(Kind::Walked, 1, 7)], &[7]);
        assert_eq!(
            inv.reconcile(&w, |_| None),
            Corrections {
                added: 0,
                removed: 0
            }
        );
        assert_eq!(listed(&inv), vec![5]);
    }

    #[test]
    fn a_namespace_emptied_by_lost_closes_forgets_its_defaults() {
        let mut inv = Inventory::new(Duration::from_secs(350));
        inv.apply(&ev(Kind::Open, 1, 7), None);
        std::thread::sleep(Duration::from_millis(2));
        inv.begin_walk();
        assert_eq!(
            inv.reconcile(&walked(vec![], &[7]), |_| None),
            Corrections {
                added: 0,
                removed: 1
            }
        );
        assert!(inv.defaults().is_empty());
        assert!(inv.namespaces().is_empty());
    }
}
