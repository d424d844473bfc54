//! Metrics drawn from the inventory at scrape time: they describe the sockets that exist now,
//! so they are computed from the table rather than accumulated.
use std::fmt::Write as _;

use crate::{
    sinks::metrics::TIME_BUCKETS,
    state::inventory::{self, Inventory},
};

/// Namespaces exported with their own series; more would make `netns` an unbounded label.
pub const MAX_NS_SERIES: usize = 256;

pub fn render(inv: &Inventory) -> String {
    let mut on = 0u64;
    let mut off = 0u64;
    let mut at_risk = 0u64;
    let mut idle = Vec::new();
    let mut ttd = Vec::new();
    for e in inv.entries() {
        let eff = inv.effective(e);
        if eff.on {
            on += 1;
            idle.push(f64::from(eff.idle_s));
            if let Some(t) = inventory::time_to_detect(&eff) {
                ttd.push(t as f64);
            }
        } else {
            off += 1;
        }
        at_risk += u64::from(inv.at_risk(&eff));
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# HELP keepalive_sockets TCP sockets (established or listening) by SO_KEEPALIVE."
    );
    let _ = writeln!(s, "# TYPE keepalive_sockets gauge");
    let _ = writeln!(s, "keepalive_sockets{{keepalive=\"on\"}} {on}");
    let _ = writeln!(s, "keepalive_sockets{{keepalive=\"off\"}} {off}");
    let _ = writeln!(
        s,
        "# HELP keepalive_sockets_at_risk Sockets with keepalive off or idle above --idle-budget."
    );
    let _ = writeln!(s, "# TYPE keepalive_sockets_at_risk gauge");
    let _ = writeln!(s, "keepalive_sockets_at_risk {at_risk}");
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
