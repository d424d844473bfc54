//! Labels of sockets closed in the last seconds. A socket's last events can reach the event
//! loop after its close (a death reported from the timer, then the close, both in one drain),
//! and must still name who the socket belonged to.
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use crate::state::labels::SocketLabels;

/// How long a closed socket's labels are kept, and how many at most.
const KEEP: Duration = Duration::from_secs(30);
const MAX: usize = 4096;

#[derive(Default)]
pub struct Recent {
    labels: HashMap<u64, SocketLabels>,
    order: VecDeque<(Instant, u64)>,
}

impl Recent {
    pub fn keep(&mut self, sk: u64, labels: SocketLabels) {
        let now = Instant::now();
        while let Some(&(t, old)) = self.order.front() {
            if self.order.len() < MAX && now.duration_since(t) < KEEP {
                break;
            }
            self.order.pop_front();
            self.labels.remove(&old);
        }
        self.order.push_back((now, sk));
        self.labels.insert(sk, labels);
    }

    pub fn get(&self, sk: u64) -> Option<SocketLabels> {
        self.labels.get(&sk).cloned()
    }
}
