//! Why a partition loses events: every half second of it, how much CPU the daemon got, how
//! much the kernel spent in softirq (the probes crossing the veths and nftables) and how much
//! was idle, next to how many events the `/events` reader received then and how late (kernel
//! time to read time). A daemon near one full core while records wait is the drain rate; a
//! daemon well under it while the CPUs are busy in softirq is starvation.
use std::{
    fs,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::events::Log;
use crate::sys;

/// One sample: realtime ns, daemon CPU ns, and /proc/stat (softirq, idle, total) jiffies.
type Sample = (i128, u64, (u64, u64, u64));

pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Sample>>>,
}

const EVERY: Duration = Duration::from_millis(500);

fn cpu_split() -> (u64, u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    (at(6), at(3) + at(4), v.iter().take(8).sum())
}

impl Sampler {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                out.push((
                    sys::realtime_ns(),
                    sys::cpu_ns(pid).unwrap_or(0),
                    cpu_split(),
                ));
                std::thread::sleep(EVERY);
            }
            out
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    /// One line per interval that saw events or CPU use, for the report's notes.
    pub fn finish(mut self, log: &Log) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let mut lines = Vec::new();
        for w in samples.windows(2) {
            let ((t0, d0, c0), (t1, d1, c1)) = (w[0], w[1]);
            let secs = (t1 - t0) as f64 / 1e9;
            let read: Vec<&_> = log
                .events
                .iter()
                .filter(|e| e.read >= t0 && e.read < t1)
                .collect();
            let lag = read.iter().map(|e| e.read - e.ts).max().unwrap_or(0);
            let total = (c1.2 - c0.2).max(1) as f64;
            lines.push(format!(
                "+{:.1} s: daemon {:.0} % of a core, softirq {:.0} %, idle {:.0} % (of 2 CPUs); {:.0} events/s read, {} dead, lag ≤ {:.2} s",
                (t1 - samples[0].0) as f64 / 1e9,
                (d1 - d0) as f64 / 1e9 / secs * 100.0,
                (c1.0 - c0.0) as f64 / total * 100.0,
                (c1.1 - c0.1) as f64 / total * 100.0,
                read.len() as f64 / secs,
                read.iter().filter(|e| e.kind == "dead").count(),
                lag as f64 / 1e9
            ));
        }
        lines
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
