//! Per-window arithmetic both kernel-cost sections share: a program's runs summed over its
//! copies, and the medians of per-window figures the tables print. Figures are taken per window
//! and then the median, never pooled: a program and its empty twin saw the same events in the
//! same window, so their ratio is only fair within one.
use std::collections::HashMap;

use crate::{bpf::Delta, report::median};

/// One measurement window: each program's runs and nanoseconds in it, by program id, and how
/// long it lasted.
pub struct Window {
    pub d: HashMap<u32, Delta>,
    pub secs: f64,
}

/// The host's windows carry more than the runs; the functions below take either.
impl AsRef<Window> for Window {
    fn as_ref(&self) -> &Window {
        self
    }
}

impl Window {
    /// A program's runs in this window; for the comparison programs, loaded twice (before and
    /// after the daemon's, since the programs on one hook run in attach order and the first pays
    /// for cold caches), both copies together.
    pub fn sum(&self, ids: &[u32]) -> Delta {
        ids.iter()
            .filter_map(|id| self.d.get(id))
            .fold(Delta::default(), |a, d| Delta {
                runs: a.runs + d.runs,
                ns: a.ns + d.ns,
            })
    }
}

/// Nanoseconds per run, all copies together.
pub fn per_run(ws: &[impl AsRef<Window>], ids: &[u32]) -> f64 {
    median(
        &ws.iter()
            .map(|w| w.as_ref().sum(ids).per_run())
            .collect::<Vec<_>>(),
    )
}

/// Runs a second of one copy.
pub fn rate(ws: &[impl AsRef<Window>], ids: &[u32]) -> f64 {
    median(
        &ws.iter()
            .map(AsRef::as_ref)
            .map(|w| w.sum(ids).runs as f64 / ids.len().max(1) as f64 / w.secs)
            .collect::<Vec<_>>(),
    )
}

/// Ratio of ns/run per window (both programs saw the same events), then the median.
pub fn ratio(ws: &[impl AsRef<Window>], a: &[u32], b: &[u32]) -> f64 {
    median(
        &ws.iter()
            .map(AsRef::as_ref)
            .map(|w| w.sum(a).per_run() / w.sum(b).per_run())
            .collect::<Vec<_>>(),
    )
}
