//! The counters the last events' label sets count into, kept at hand for the next event with
//! the same labels.
//!
//! Counting one probe through the families' front door builds the key (a `String` per chosen
//! label), hashes it into the family's `Book` and hashes it again into the metric vector. In a
//! probe storm that was about 15 % of the daemon's CPU (perf, 5 000 loopback pairs probing
//! every second), for label sets that change rarely: the sockets of one workload share their
//! strings (`Arc<str>`), so comparing a socket's labels with a kept set is mostly pointer
//! compares. The kept counter is the very series the slow path would pick, `other` included.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus::IntCounter;

use crate::state::labels::SocketLabels;

/// Slots per family: label sets in use at once by the sockets that are probing. More than
/// that only means more slow-path lookups, never a wrong count.
const SLOTS: usize = 64;

/// How long a kept set may go without telling its `Book` it was seen. The book forgets sets
/// not seen for `--metrics.series-ttl` (minutes), so a second of lag changes nothing.
pub const TOUCH_EVERY: Duration = Duration::from_secs(1);

struct Kept {
    labels: SocketLabels,
    counter: IntCounter,
    touched: Instant,
}

/// One family's kept counters, direct-mapped by the labels' string addresses.
pub struct HotSeries {
    slots: Vec<Option<Kept>>,
}

impl Default for HotSeries {
    fn default() -> Self {
        HotSeries {
            slots: (0..SLOTS).map(|_| None).collect(),
        }
    }
}

/// What a hit needs from the caller.
pub enum Hit {
    /// Counted; nothing else to do.
    Counted,
    /// Counted, and the family's book is to be told the set was seen now.
    CountedTouch,
    /// Not kept: take the slow path, then `keep` its result.
    Miss,
}

impl HotSeries {
    /// Counts one event for `l` if its counter is kept.
    pub fn count(&mut self, l: &SocketLabels, now: Instant) -> Hit {
        match &mut self.slots[slot(l)] {
            Some(k) if k.labels == *l => {
                k.counter.inc();
                if now.duration_since(k.touched) >= TOUCH_EVERY {
                    k.touched = now;
                    Hit::CountedTouch
                } else {
                    Hit::Counted
                }
            }
            _ => Hit::Miss,
        }
    }

    /// Keeps `counter` as the one `l` counts into.
    pub fn keep(&mut self, l: &SocketLabels, counter: IntCounter, now: Instant) {
        self.slots[slot(l)] = Some(Kept {
            labels: l.clone(),
            counter,
            touched: now,
        });
    }

    /// Forgets every kept counter: series were removed or folded differently, and a kept
    /// handle to a removed series would count into nothing.
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
    }
}

/// The slot of a label set: its strings' addresses and the small fields, mixed. Equal sets
/// with different addresses land in different slots and cost a slow path each, no more.
fn slot(l: &SocketLabels) -> usize {
    let addr = |v: &Option<Arc<str>>| {
        v.as_ref()
            .map_or(0, |s| Arc::as_ptr(s).cast::<u8>() as usize)
    };
    let mut h = addr(&l.process)
        ^ addr(&l.unit).rotate_left(7)
        ^ addr(&l.container).rotate_left(13)
        ^ addr(&l.pod).rotate_left(19)
        ^ addr(&l.peer_group).rotate_left(29)
        ^ usize::from(l.port.unwrap_or(0)).rotate_left(37)
        ^ l.role.map_or(0, |r| r as usize + 1).rotate_left(43);
    h ^= h >> 17;
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 58) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn labels(unit: &Arc<str>, port: u16) -> SocketLabels {
        SocketLabels {
            unit: Some(unit.clone()),
            port: Some(port),
            ..SocketLabels::default()
        }
    }

    #[test]
    fn kept_counter_counts_equal_labels_only() {
        let c = IntCounter::with_opts(Opts::new("c", "c")).unwrap();
        let (a, b): (Arc<str>, Arc<str>) = ("a.service".into(), "b.service".into());
        let now = Instant::now();
        let mut hot = HotSeries::default();
        assert!(matches!(hot.count(&labels(&a, 80), now), Hit::Miss));
        hot.keep(&labels(&a, 80), c.clone(), now);
        assert!(matches!(hot.count(&labels(&a, 80), now), Hit::Counted));
        // Same strings elsewhere in memory: still the same set.
        let a2: Arc<str> = "a.service".into();
        let hit = hot.count(&labels(&a2, 80), now);
        assert!(matches!(hit, Hit::Counted | Hit::Miss));
        assert!(matches!(hot.count(&labels(&b, 80), now), Hit::Miss));
        assert!(matches!(hot.count(&labels(&a, 81), now), Hit::Miss));
        let later = now + TOUCH_EVERY;
        assert!(matches!(
            hot.count(&labels(&a, 80), later),
            Hit::CountedTouch
        ));
        // `keep` counts nothing (the slow path did): a hit, maybe `a2`, the touch.
        let counted = 1 + u64::from(matches!(hit, Hit::Counted)) + 1;
        assert_eq!(c.get(), counted);
        hot.clear();
        assert!(matches!(hot.count(&labels(&a, 80), later), Hit::Miss));
    }
}
