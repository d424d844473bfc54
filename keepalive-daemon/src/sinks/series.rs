//! Bounded label sets for the workload metric families. Each family admits at most `cap`
//! distinct label sets; a new one beyond that is counted in
//! `keepalive_series_overflow_total{family}` and folds into the `other` series (every
//! workload label `other`). A label set that has had no socket and no event for `ttl` is
//! forgotten, and its series removed from the output, which makes room for new ones.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use crate::{service::metric_labels::MetricLabel, state::labels::SocketLabels};

/// The value every workload label of the fold series takes.
pub const OTHER: &str = "other";

/// One label set's values, in the order of the chosen labels.
pub type Key = Vec<String>;

/// The values of the chosen labels for one socket. Unknown is the empty string, which
/// Prometheus treats as the label being absent.
pub fn key(labels: &[MetricLabel], l: &SocketLabels) -> Key {
    labels
        .iter()
        .map(|label| {
            let s = |v: &Option<std::sync::Arc<str>>| v.as_deref().unwrap_or("").to_string();
            match label {
                MetricLabel::Unit => s(&l.unit),
                MetricLabel::Container => s(&l.container),
                MetricLabel::Pod => s(&l.pod),
                MetricLabel::K8sNamespace => s(&l.k8s_namespace),
                MetricLabel::Role => l.role.map_or("", |r| r.as_str()).to_string(),
                MetricLabel::Port => l.port.map_or_else(String::new, |p| p.to_string()),
                MetricLabel::PeerGroup => s(&l.peer_group),
                MetricLabel::Process => s(&l.process),
            }
        })
        .collect()
}

pub fn other(n: usize) -> Key {
    vec![OTHER.to_string(); n]
}

/// The label sets one family has admitted, and the ones it folded.
#[derive(Debug)]
pub struct Book {
    cap: usize,
    admitted: HashMap<Key, Instant>,
    /// Folded label sets already counted, so each is counted once while it lasts; bounded
    /// (20 × cap, at least 10 000: beyond that a fold is counted every time it recurs).
    folded: HashMap<Key, Instant>,
}

impl Book {
    pub fn new(cap: usize) -> Book {
        Book {
            cap,
            admitted: HashMap::new(),
            folded: HashMap::new(),
        }
    }

    /// The key to count under: `key` itself when admitted (or room is left), else the fold.
    /// The second value is true when this call folded a label set not counted before.
    pub fn admit(&mut self, key: Key, now: Instant) -> (Key, bool) {
        if let Some(t) = self.admitted.get_mut(&key) {
            *t = now;
            return (key, false);
        }
        if key.iter().all(|v| v == OTHER) {
            return (key, false);
        }
        if self.admitted.len() < self.cap {
            self.admitted.insert(key.clone(), now);
            return (key, false);
        }
        let n = key.len();
        let new = match self.folded.get_mut(&key) {
            Some(t) => {
                *t = now;
                false
            }
            None => {
                if self.folded.len() < (20 * self.cap).max(10_000) {
                    self.folded.insert(key, now);
                }
                true
            }
        };
        (other(n), new)
    }

    /// Whether `key` has a series of its own.
    pub fn is_admitted(&self, key: &Key) -> bool {
        self.admitted.contains_key(key)
    }

    /// Forgets label sets not seen for `ttl` that have no live socket; returns the forgotten
    /// admitted ones (their series are to be removed).
    pub fn expire(&mut self, now: Instant, ttl: Duration, live: &HashSet<Key>) -> Vec<Key> {
        // The empty workload (nothing known) is never forgotten: its series is made at start.
        let stale = |k: &Key, t: &Instant| {
            now.duration_since(*t) >= ttl && !live.contains(k) && k.iter().any(|v| !v.is_empty())
        };
        let gone: Vec<Key> = self
            .admitted
            .iter()
            .filter(|(k, t)| stale(k, t))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.admitted.remove(k);
        }
        self.folded.retain(|k, t| !stale(k, t));
        gone
    }

    /// Marks live label sets as seen now (sockets exist for them).
    pub fn touch(&mut self, live: &HashSet<Key>, now: Instant) {
        for k in live {
            if let Some(t) = self.admitted.get_mut(k) {
                *t = now;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.admitted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.admitted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Key {
        vec![s.to_string()]
    }

    #[test]
    fn folds_beyond_the_cap_counts_each_once_and_expires() {
        let t0 = Instant::now();
        let mut b = Book::new(2);
        assert_eq!(b.admit(k("a"), t0), (k("a"), false));
        assert_eq!(b.admit(k("b"), t0), (k("b"), false));
        assert_eq!(b.admit(k("c"), t0), (other(1), true));
        assert_eq!(b.admit(k("c"), t0), (other(1), false));
        assert_eq!(b.admit(k("a"), t0), (k("a"), false));
        // "b" has a socket; "a" does not.
        let live: HashSet<Key> = [k("b")].into();
        let later = t0 + Duration::from_secs(60);
        assert!(b.expire(later, Duration::from_secs(120), &live).is_empty());
        assert_eq!(
            b.expire(later, Duration::from_secs(30), &live),
            vec![k("a")]
        );
        // Room again: "d" gets its own series.
        assert_eq!(b.admit(k("d"), later), (k("d"), false));
        assert_eq!(b.len(), 2);
    }
}
