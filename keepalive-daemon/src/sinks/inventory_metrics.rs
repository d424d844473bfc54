//! Metrics drawn from the inventory at scrape time: they describe the sockets that exist now,
//! read from the inventory's tally of sockets per class (kept as sockets come, change and go)
//! rather than from the table, so a scrape costs the same at 1 M sockets as at 1 k.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
};

use crate::{
    sinks::{
        metrics::TIME_BUCKETS,
        series::{self, Key},
        workload_metrics::WorkloadMetrics,
    },
    state::{
        inventory::{Inventory, Risk},
        peers::LOOPBACK,
    },
};

/// Sockets of one workload label set: keepalive on, off, and exposed or at risk.
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

/// The inventory's families. `keepalive_sockets` and `keepalive_sockets_at_risk` are grouped
/// by the chosen workload labels (each label set admitted through the `keepalive_sockets`
/// series book, so bounded like the counters); the label sets that have sockets now are also
/// what keeps the workload counters' series from expiring.
pub fn render(inv: &Inventory, w: &WorkloadMetrics) -> String {
    let names: Vec<&str> = w.labels().iter().map(|l| l.name()).collect();
    let mut groups: BTreeMap<Key, Counts> = BTreeMap::new();
    let mut by_risk: HashMap<(&str, Risk), u64> = HashMap::new();
    let mut idle: BTreeMap<u32, u64> = BTreeMap::new();
    let mut ttd: BTreeMap<u64, u64> = BTreeMap::new();
    // From the tally (`inventory::tally`): one pass over the classes alive, not the sockets.
    for (class, n) in inv.tally().classes() {
        let key = series::key(w.labels(), &class.labels);
        let c = groups.entry(key).or_default();
        if class.on {
            c.on += n;
            *idle.entry(class.idle_s).or_default() += n;
            if let Some(t) = class.time_to_detect_s {
                *ttd.entry(t).or_default() += n;
            }
        } else {
            c.off += n;
        }
        c.at_risk += if class.risk.uncovered() { n } else { 0 };
        let group = match class.risk {
            Risk::Listener | Risk::Local | Risk::None => "none",
            _ => class.labels.peer_group.as_deref().unwrap_or("none"),
        };
        *by_risk.entry((group, class.risk)).or_default() += n;
    }
    let live: HashSet<Key> = groups.keys().cloned().collect();
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
        "# HELP keepalive_sockets_at_risk Established sockets with a non-local peer that are exposed or at risk (keepalive off or idle above their peer group's budget), by workload."
    );
    let _ = writeln!(s, "# TYPE keepalive_sockets_at_risk gauge");
    for (key, c) in &folded {
        let l = label_text(&names, key, None);
        let _ = writeln!(s, "keepalive_sockets_at_risk{l} {}", c.at_risk);
    }
    // Every class of every group is written, zeros included, so that alerts and panels see a
    // series from the start; the groups are the config's (at most 32) and the built-in ones.
    let _ = writeln!(
        s,
        "# HELP keepalive_sockets_by_risk Sockets by risk class and peer group: established sockets with a non-local peer are exposed, at_risk or covered; listeners and local peers are counted apart (peer_group=\"none\")."
    );
    let _ = writeln!(s, "# TYPE keepalive_sockets_by_risk gauge");
    for g in inv.peers.groups().iter().filter(|g| &*g.name != LOOPBACK) {
        for r in Risk::CLASSES {
            let n = by_risk.get(&(&*g.name, r)).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "keepalive_sockets_by_risk{{risk=\"{}\",peer_group=\"{}\"}} {n}",
                r.as_str(),
                g.name
            );
        }
    }
    for r in [Risk::Listener, Risk::Local] {
        let n = by_risk.get(&("none", r)).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "keepalive_sockets_by_risk{{risk=\"{}\",peer_group=\"none\"}} {n}",
            r.as_str()
        );
    }
    let _ = writeln!(
        s,
        "# HELP keepalive_idle_budget_seconds The idle budget of each peer group (--idle-budget, or its [peers.<group>] idle-budget)."
    );
    let _ = writeln!(s, "# TYPE keepalive_idle_budget_seconds gauge");
    for g in inv.peers.groups() {
        if let Some(b) = g.budget_s {
            let _ = writeln!(
                s,
                "keepalive_idle_budget_seconds{{peer_group=\"{}\"}} {b}",
                g.name
            );
        }
    }
    let _ = writeln!(
        s,
        "# HELP keepalive_path_idle_timeout_seconds Learned idle timeout of the path to a peer group: the longest silence a first keepalive probe survived (lower) and the shortest one a reset answered (upper)."
    );
    let _ = writeln!(s, "# TYPE keepalive_path_idle_timeout_seconds gauge");
    // Every group but loopback, both bounds, NaN until learned: the series exist from the
    // start (at most 2 × 34), and a comparison with NaN never fires an alert.
    for g in inv.peers.groups().iter().filter(|g| &*g.name != LOOPBACK) {
        let b = inv.paths.group(&g.name);
        for (bound, ms) in [
            ("lower", b.and_then(|b| b.lower_ms)),
            ("upper", b.and_then(|b| b.upper_ms)),
        ] {
            let v = ms.map_or(f64::NAN, |ms| f64::from(ms) / 1000.0);
            let _ = writeln!(
                s,
                "keepalive_path_idle_timeout_seconds{{peer_group=\"{}\",bound=\"{bound}\"}} {v}",
                g.name
            );
        }
    }
    histogram(
        &mut s,
        "keepalive_socket_idle_seconds",
        "Effective keepalive idle of sockets with keepalive on.",
        idle.iter().map(|(v, n)| (f64::from(*v), *n)),
    );
    histogram(
        &mut s,
        "keepalive_socket_time_to_detect_seconds",
        "Predicted time for keepalive to declare a silent peer dead, sockets with keepalive on.",
        ttd.iter().map(|(v, n)| (*v as f64, *n)),
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

/// `values`: (value, how many sockets have it), in ascending order of value.
fn histogram(s: &mut String, name: &str, help: &str, values: impl Iterator<Item = (f64, u64)>) {
    let values: Vec<(f64, u64)> = values.collect();
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} histogram");
    let count: u64 = values.iter().map(|(_, n)| n).sum();
    for le in TIME_BUCKETS {
        let n: u64 = values
            .iter()
            .filter(|(v, _)| *v <= *le)
            .map(|(_, n)| n)
            .sum();
        let _ = writeln!(s, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let sum: f64 = values.iter().map(|(v, n)| v * *n as f64).sum();
    let _ = writeln!(s, "{name}_sum {sum}");
    let _ = writeln!(s, "{name}_count {count}");
}
