//! Metrics drawn from the inventory at scrape time: they describe the sockets that exist now,
//! so they are computed from the table rather than accumulated.
use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
};

use crate::{
    sinks::{
        metrics::TIME_BUCKETS,
        series::{self, Key},
        workload_metrics::WorkloadMetrics,
    },
    state::inventory::{self, Inventory},
};

/// Sockets of one workload label set: keepalive on, off, at risk.
#[derive(Default)]
struct Counts {
    on: u64,
    off: u64,
    at_risk: u64,
}

/// `{a="x",b="y"}` from names and values, with `first` (name, value) in front when given.
fn label_text(names: &[&str], key: &Key, first: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = first
        .map(|(n, v)| format!("{n}=\"{v}\""))
        .into_iter()
        .collect();
    for (n, v) in names.iter().zip(key) {
        parts.push(format!("{n}=\"{}\"", escape(v)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Namespaces exported with their own series; more would make `netns` an unbounded label.
pub const MAX_NS_SERIES: usize = 256;

/// The inventory's families, grouped by the chosen workload labels (each label set admitted
/// through the `keepalive_sockets` series book, so bounded like the counters). Also tells the
/// workload families which label sets have sockets now, so theirs are kept.
pub fn render(inv: &Inventory, w: &WorkloadMetrics) -> String {
    let names: Vec<&str> = w.labels().iter().map(|l| l.name()).collect();
    let mut groups: BTreeMap<Key, Counts> = BTreeMap::new();
    let mut live: HashSet<Key> = HashSet::new();
    let mut idle = Vec::new();
    let mut ttd = Vec::new();
    for e in inv.entries() {
        let eff = inv.effective(e);
        let key = series::key(w.labels(), &inv.labels(e));
        if !live.contains(&key) {
            live.insert(key.clone());
        }
        let c = groups.entry(key).or_default();
        if eff.on {
            c.on += 1;
            idle.push(f64::from(eff.idle_s));
            if let Some(t) = inventory::time_to_detect(&eff) {
                ttd.push(t as f64);
            }
        } else {
            c.off += 1;
        }
        c.at_risk += u64::from(inv.at_risk(&eff));
    }
    w.expire(&live);
    let mut folded: BTreeMap<Key, Counts> = BTreeMap::new();
    for (key, c) in groups {
        let f = folded.entry(w.admit_sockets(key)).or_default();
        f.on += c.on;
        f.off += c.off;
        f.at_risk += c.at_risk;
    }
    if folded.is_empty() {
        folded.insert(vec![String::new(); names.len()], Counts::default());
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# HELP keepalive_sockets TCP sockets (established or listening) by SO_KEEPALIVE and workload."
    );
    let _ = writeln!(s, "# TYPE keepalive_sockets gauge");
    for (key, c) in &folded {
        let on = label_text(&names, key, Some(("keepalive", "on")));
        let off = label_text(&names, key, Some(("keepalive", "off")));
        let _ = writeln!(s, "keepalive_sockets{on} {}", c.on);
        let _ = writeln!(s, "keepalive_sockets{off} {}", c.off);
    }
    let _ = writeln!(
        s,
        "# HELP keepalive_sockets_at_risk Sockets with keepalive off or idle above --idle-budget, by workload."
    );
    let _ = writeln!(s, "# TYPE keepalive_sockets_at_risk gauge");
    for (key, c) in &folded {
        let l = label_text(&names, key, None);
        let _ = writeln!(s, "keepalive_sockets_at_risk{l} {}", c.at_risk);
    }
    let _ = writeln!(
        s,
        "# HELP keepalive_idle_budget_seconds The --idle-budget sockets are held against."
    );
    let _ = writeln!(s, "# TYPE keepalive_idle_budget_seconds gauge");
    let _ = writeln!(
        s,
        "keepalive_idle_budget_seconds {}",
        inv.idle_budget.as_secs()
    );
    histogram(
        &mut s,
        "keepalive_socket_idle_seconds",
        "Effective keepalive idle of sockets with keepalive on.",
        &idle,
    );
    histogram(
        &mut s,
        "keepalive_socket_time_to_detect_seconds",
        "Predicted time for keepalive to declare a silent peer dead, sockets with keepalive on.",
        &ttd,
    );

    let mut namespaces: Vec<_> = inv.defaults().iter().collect();
    namespaces.sort_unstable_by_key(|(ns, _)| **ns);
    let _ = writeln!(
        s,
        "# HELP keepalive_namespace_default Keepalive sysctl defaults per network namespace (first {MAX_NS_SERIES} namespaces by inode)."
    );
    let _ = writeln!(s, "# TYPE keepalive_namespace_default gauge");
    for (ns, d) in namespaces.iter().take(MAX_NS_SERIES) {
        let _ = writeln!(
            s,
            "keepalive_namespace_default{{netns=\"{ns}\",param=\"idle_seconds\"}} {}",
            d.idle_s
        );
        let _ = writeln!(
            s,
            "keepalive_namespace_default{{netns=\"{ns}\",param=\"intvl_seconds\"}} {}",
            d.intvl_s
        );
        let _ = writeln!(
            s,
            "keepalive_namespace_default{{netns=\"{ns}\",param=\"probes\"}} {}",
            d.cnt
        );
    }
    s
}

fn histogram(s: &mut String, name: &str, help: &str, values: &[f64]) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} histogram");
    for le in TIME_BUCKETS {
        let n = values.iter().filter(|v| **v <= *le).count();
        let _ = writeln!(s, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {}", values.len());
    let _ = writeln!(s, "{name}_sum {}", values.iter().sum::<f64>());
    let _ = writeln!(s, "{name}_count {}", values.len());
}
