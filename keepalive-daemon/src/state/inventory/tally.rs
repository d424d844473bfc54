//! The inventory's metric families, kept as they change: every socket belongs to one class
//! (what the families count it under: its labels, keepalive on or off, risk, effective idle
//! and time to detect) and the tally counts sockets per class. A scrape then reads a few
//! hundred classes instead of recomputing a million sockets (6.3 s at 1 M on main).
//!
//! Inserts, changes and removals move a socket between classes as they happen. What only the
//! passage of time or a neighbour changes (a silent socket crossing its idle budget, a listener
//! appearing that makes accepted sockets servers, a workload learned late) is settled by
//! `retally`, which the web server runs in chunks after scrapes, off the scrape path.
use hashbrown::HashMap;

use super::{Entry, Inventory, Risk, time_to_detect};
use crate::state::labels::SocketLabels;

/// What the inventory families count one socket under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Class {
    pub labels: SocketLabels,
    pub on: bool,
    pub risk: Risk,
    /// Effective idle, 0 when keepalive is off (not counted then).
    pub idle_s: u32,
    pub time_to_detect_s: Option<u64>,
}

/// The class id of an entry not counted anywhere (only while it is being built).
pub(super) const UNCOUNTED: u32 = u32::MAX;

/// Sockets per class. Ids are reused once a class has no socket left, so the table stays as
/// large as the classes alive at once.
#[derive(Debug, Default)]
pub struct Tally {
    ids: HashMap<Class, u32>,
    classes: Vec<(Option<Class>, u64)>,
    free: Vec<u32>,
    /// Sockets moved to another class since start (what `retally` reports).
    moves: usize,
}

impl Tally {
    fn add(&mut self, class: Class) -> u32 {
        if let Some(&id) = self.ids.get(&class) {
            self.classes[id as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.classes[id as usize] = (Some(class.clone()), 1);
                id
            }
            None => {
                self.classes.push((Some(class.clone()), 1));
                (self.classes.len() - 1) as u32
            }
        };
        self.ids.insert(class, id);
        id
    }

    fn sub(&mut self, id: u32) {
        let Some(slot) = self.classes.get_mut(id as usize) else {
            return;
        };
        slot.1 -= 1;
        if slot.1 == 0
            && let Some(class) = slot.0.take()
        {
            self.ids.remove(&class);
            self.free.push(id);
        }
    }

    /// Every class with sockets, and how many.
    pub fn classes(&self) -> impl Iterator<Item = (&Class, u64)> {
        self.classes
            .iter()
            .filter_map(|(c, n)| Some((c.as_ref()?, *n)))
    }

    /// Whether `id` counts `class` now: compared in place, without hashing the labels (most
    /// events leave a socket in its class).
    fn holds(&self, id: u32, class: &Class) -> bool {
        self.classes
            .get(id as usize)
            .and_then(|(c, _)| c.as_ref())
            .is_some_and(|c| c == class)
    }
}

impl Inventory {
    /// The class `e` counts under now.
    pub fn class_of(&self, e: &Entry) -> Class {
        let eff = self.effective(e);
        Class {
            labels: self.labels(e),
            on: eff.on,
            risk: self.risk(e, &eff),
            idle_s: if eff.on { eff.idle_s } else { 0 },
            time_to_detect_s: time_to_detect(&eff),
        }
    }

    pub(super) fn uncount(&mut self, e: &Entry) {
        if e.class != UNCOUNTED {
            self.tally.sub(e.class);
        }
    }

    /// Moves the socket to the class it counts under now, if that changed.
    pub(super) fn reclass(&mut self, sk: u64) {
        let Some(e) = self.sockets.get(sk) else {
            return;
        };
        let class = self.class_of(e);
        if self.tally.holds(e.class, &class) {
            return;
        }
        let old = e.class;
        self.tally.moves += 1;
        if old != UNCOUNTED {
            self.tally.sub(old);
        }
        let id = self.tally.add(class);
        if let Some(e) = self.sockets.get_mut(sk) {
            e.class = id;
        }
    }

    /// Settles the classes of `sks` (see the module's note); returns how many moved.
    pub fn retally(&mut self, sks: &[u64]) -> usize {
        let before = self.tally.moves;
        for sk in sks {
            self.reclass(*sk);
        }
        self.tally.moves - before
    }

    /// Every socket, for a re-tally in chunks.
    pub fn socket_ids(&self) -> Vec<u64> {
        self.sockets.keys().collect()
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }
}

#[cfg(test)]
#[path = "tally_tests.rs"]
mod tests;
