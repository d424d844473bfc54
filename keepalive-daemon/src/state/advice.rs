//! `/advice` and `keepalive-daemon sockets --advise`: exposed and at-risk sockets grouped by
//! workload (the owning process's name; unit and container once the attribution labels land)
//! and peer group, with the keepalive idle that would cover them and how to set it.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::state::{
    inventory::{Inventory, Risk},
    paths::Bracket,
    peers,
};

/// Peer subnets listed per item at most; the count says how many there were.
const MAX_SUBNETS_SHOWN: usize = 8;

#[derive(Debug, Serialize)]
pub struct Advice {
    pub items: Vec<Item>,
    /// What the daemon learned of each peer group's path (`state::paths`).
    pub paths: Vec<PathView>,
}

#[derive(Debug, Serialize)]
pub struct Item {
    pub workload: String,
    pub peer_group: String,
    pub connections: u32,
    pub exposed: u32,
    pub at_risk: u32,
    pub keepalive_off: u32,
    /// The longest keepalive idle among those with keepalive on.
    pub max_keepalive_idle_s: Option<u32>,
    pub max_idle_now_s: f64,
    /// The peers' /24 or /64 networks (at most 8) and how many there were.
    pub subnets: Vec<String>,
    pub subnet_count: usize,
    pub budget_s: u32,
    pub learned_lower_s: Option<f64>,
    pub learned_upper_s: Option<f64>,
    /// A keepalive idle that covers these connections.
    pub recommend_idle_s: u32,
    pub advice: String,
}

#[derive(Debug, Serialize)]
pub struct PathView {
    pub peer_group: String,
    /// `None` for the group as a whole, else the /24 or /64 the bracket is for.
    pub subnet: Option<String>,
    pub lower_s: Option<f64>,
    pub upper_s: Option<f64>,
    pub answered: u32,
    pub reset: u32,
    pub budget_s: Option<u32>,
}

#[derive(Default)]
struct Acc {
    connections: u32,
    exposed: u32,
    at_risk: u32,
    keepalive_off: u32,
    max_ka_idle: Option<u32>,
    max_idle_ms: u32,
    subnets: BTreeSet<String>,
    budget_s: u32,
}

pub fn advise(inv: &Inventory) -> Advice {
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for e in inv.entries() {
        let eff = inv.effective(e);
        let risk = inv.risk(e, &eff);
        if !risk.uncovered() {
            continue;
        }
        let group = inv.peer_group(e);
        let workload = inv.owner(e).map_or_else(|| "unknown".into(), |o| o.comm);
        let a = acc.entry((workload, group.name.to_string())).or_default();
        a.connections += 1;
        a.exposed += u32::from(risk == Risk::Exposed);
        a.at_risk += u32::from(risk == Risk::AtRisk);
        if eff.on {
            a.max_ka_idle = a.max_ka_idle.max(Some(eff.idle_s));
        } else {
            a.keepalive_off += 1;
        }
        let idle = inv.activity_now(e).path_idle_ms().unwrap_or(0);
        a.max_idle_ms = a.max_idle_ms.max(idle);
        a.subnets
            .insert(peers::subnet(e.daddr()).to_string() + subnet_suffix(e.daddr()));
        a.budget_s = group.budget_s.unwrap_or(0);
    }
    let items = acc
        .into_iter()
        .map(|((workload, group), a)| {
            let learned = inv.paths.group_bracket(&group);
            item(workload, group, a, learned)
        })
        .collect();
    Advice {
        items,
        paths: paths(inv),
    }
}

fn subnet_suffix(ip: std::net::IpAddr) -> &'static str {
    if ip.is_ipv4() { "/24" } else { "/64" }
}

fn item(workload: String, group: String, a: Acc, learned: Option<Bracket>) -> Item {
    let secs = |ms: u32| f64::from(ms) / 1000.0;
    let lower = learned.and_then(|b| b.lower_ms);
    let upper = learned.and_then(|b| b.upper_ms);
    let recommend = recommend(a.budget_s, lower, upper);
    let mut why = format!(
        "{workload}: {} connection{} to {} (peer group {group}, budget {} s) idle up to {:.0} s",
        a.connections,
        if a.connections == 1 { "" } else { "s" },
        a.subnets
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
            + if a.subnets.len() > 3 { ", …" } else { "" },
        a.budget_s,
        secs(a.max_idle_ms),
    );
    if a.keepalive_off > 0 {
        why += &format!(", keepalive off on {}", a.keepalive_off);
    }
    if let Some(k) = a.max_ka_idle {
        why += &format!(", keepalive idle up to {k} s");
    }
    match (lower, upper) {
        (Some(l), Some(u)) => {
            why += &format!("; path resets after {:.0}–{:.0} s", secs(l), secs(u))
        }
        (None, Some(u)) => why += &format!("; path reset a flow after {:.0} s", secs(u)),
        (Some(l), None) => why += &format!("; path kept flows silent for {:.0} s", secs(l)),
        (None, None) => {}
    }
    why += &format!("; {}", how_to_set(&workload, recommend));
    Item {
        workload,
        peer_group: group,
        connections: a.connections,
        exposed: a.exposed,
        at_risk: a.at_risk,
        keepalive_off: a.keepalive_off,
        max_keepalive_idle_s: a.max_ka_idle,
        max_idle_now_s: secs(a.max_idle_ms),
        subnet_count: a.subnets.len(),
        subnets: a.subnets.into_iter().take(MAX_SUBNETS_SHOWN).collect(),
        budget_s: a.budget_s,
        learned_lower_s: lower.map(secs),
        learned_upper_s: upper.map(secs),
        recommend_idle_s: recommend,
        advice: why,
    }
}

/// A keepalive idle with a margin (4/5) below what is known to be safe: the budget, or less
/// when the path was seen to reset sooner; when a bracket was learned, its lower end is the
/// silence flows are proven to survive.
pub fn recommend(budget_s: u32, lower_ms: Option<u32>, upper_ms: Option<u32>) -> u32 {
    let mut limit = budget_s;
    if let Some(u) = upper_ms {
        limit = limit.min(u / 1000);
        if let Some(l) = lower_ms.filter(|l| *l < u) {
            limit = limit.min(l / 1000);
        }
    }
    (limit * 4 / 5).max(1)
}

/// How the workload's own configuration sets a keepalive idle, for programs whose knob is
/// well known; otherwise the socket options and the namespace sysctl.
fn how_to_set(comm: &str, idle: u32) -> String {
    match comm {
        "redis-server" => format!("set tcp-keepalive {idle} (redis.conf)"),
        "socat" => format!("add keepalive,keepidle={idle} to the socat address"),
        "curl" => format!("run curl with --keepalive-time {idle}"),
        "postgres" | "postmaster" => format!("set tcp_keepalives_idle = {idle}"),
        "ssh" => format!("set ServerAliveInterval {idle}"),
        "sshd" => format!("set ClientAliveInterval {idle}"),
        _ => format!(
            "turn on SO_KEEPALIVE with TCP_KEEPIDLE ≤ {idle} s, or set \
             net.ipv4.tcp_keepalive_time ≤ {idle} in its network namespace (for sockets with \
             keepalive on and no idle of their own)"
        ),
    }
}

fn paths(inv: &Inventory) -> Vec<PathView> {
    let secs = |ms: Option<u32>| ms.map(|m| f64::from(m) / 1000.0);
    let view = |g: &str, subnet: Option<String>, b: &Bracket| PathView {
        peer_group: g.to_string(),
        subnet,
        lower_s: secs(b.lower_ms),
        upper_s: secs(b.upper_ms),
        answered: b.answered,
        reset: b.reset,
        budget_s: inv.peers.budget(g),
    };
    let mut out: Vec<PathView> = inv.paths.groups().map(|(g, b)| view(g, None, b)).collect();
    out.extend(
        inv.paths
            .subnets()
            .map(|(g, s, b)| view(g, Some(s.to_string() + subnet_suffix(s)), b)),
    );
    out.sort_by(|a, b| (&a.peer_group, &a.subnet).cmp(&(&b.peer_group, &b.subnet)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommendation_stays_below_what_is_known() {
        assert_eq!(recommend(350, None, None), 280);
        // The path reset after 300 s and survived 290 s: 4/5 of the proven 290.
        assert_eq!(recommend(350, Some(290_000), Some(300_000)), 232);
        assert_eq!(recommend(350, None, Some(100_000)), 80);
        // A conntrack timeout of 2 s: at least 1.
        assert_eq!(recommend(2, Some(1_000), Some(3_000)), 1);
        assert!(how_to_set("redis-server", 240).contains("tcp-keepalive 240"));
    }
}
