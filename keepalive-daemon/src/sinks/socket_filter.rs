//! The filters of `/sockets`, `keepalive-daemon sockets` and `/events`, as URL query
//! parameters. Both share the workload filters (`process`, `unit`, `container`, `pod`,
//! `k8s_namespace`, `role`, `peer_group`); `/sockets` adds the socket's own (`port`, `comm`,
//! `netns`, `keepalive`, `at_risk`), `/events` the event's (`event`, `cause`).
use crate::state::{event::Cause, inventory::SocketView, labels::SocketLabels};

/// Matches a socket's attribution.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkloadFilter {
    pub process: Option<String>,
    pub unit: Option<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
    pub k8s_namespace: Option<String>,
    pub role: Option<String>,
    pub peer_group: Option<String>,
}

/// The values of an event's `event` field.
pub const EVENTS: [&str; 6] = [
    "probe",
    "probe_failed",
    "answered",
    "dead",
    "settings",
    "path_timeout",
];

pub const WORKLOAD_KEYS: &str = "process, unit, container, pod, k8s_namespace, role, peer_group";

impl WorkloadFilter {
    /// Takes `k=v` if `k` is a workload key; false when it is not one.
    fn take(&mut self, k: &str, v: &str) -> bool {
        let slot = match k {
            "process" => &mut self.process,
            "unit" => &mut self.unit,
            "container" => &mut self.container,
            "pod" => &mut self.pod,
            "k8s_namespace" => &mut self.k8s_namespace,
            "role" => &mut self.role,
            "peer_group" => &mut self.peer_group,
            _ => return false,
        };
        *slot = Some(v.to_string());
        true
    }

    fn to_query(&self, q: &mut Vec<String>) {
        let pairs = [
            ("process", &self.process),
            ("unit", &self.unit),
            ("container", &self.container),
            ("pod", &self.pod),
            ("k8s_namespace", &self.k8s_namespace),
            ("role", &self.role),
            ("peer_group", &self.peer_group),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                q.push(format!("{k}={v}"));
            }
        }
    }

    pub fn matches(&self, l: &SocketLabels) -> bool {
        let eq = |want: &Option<String>, have: &Option<std::sync::Arc<str>>| {
            want.as_deref().is_none_or(|w| have.as_deref() == Some(w))
        };
        eq(&self.process, &l.process)
            && eq(&self.unit, &l.unit)
            && eq(&self.container, &l.container)
            && eq(&self.pod, &l.pod)
            && eq(&self.k8s_namespace, &l.k8s_namespace)
            && eq(&self.peer_group, &l.peer_group)
            && self
                .role
                .as_deref()
                .is_none_or(|r| l.role.map(|x| x.as_str()) == Some(r))
    }
}

/// `/sockets?…`
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Local or remote port.
    pub port: Option<u16>,
    pub comm: Option<String>,
    pub netns: Option<u32>,
    pub keepalive: Option<bool>,
    /// Exposed or at risk (`risk` is one of the two).
    pub at_risk: Option<bool>,
    /// One risk class: exposed, at_risk, covered, listener, local, none.
    pub risk: Option<String>,
    pub workload: WorkloadFilter,
    /// `sort=risk`: highest risk first (exposed, then at risk, covered, the rest; the longest
    /// silent first within a class). Without it, by namespace and ports.
    pub by_risk: bool,
    /// `limit=N`: the first N matching sockets in that order.
    pub limit: Option<usize>,
}

const RISKS: [&str; 6] = ["exposed", "at_risk", "covered", "listener", "local", "none"];

impl Filter {
    /// Parses `port=80&comm=nginx&netns=4026531840&keepalive=on&at_risk=true&unit=…`.
    pub fn parse(query: &str) -> Result<Filter, String> {
        let mut f = Filter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = || format!("bad value {v:?} for {k}");
            match k {
                "port" => f.port = Some(v.parse().map_err(|_| bad())?),
                "comm" => f.comm = Some(v.to_string()),
                "netns" => f.netns = Some(v.parse().map_err(|_| bad())?),
                "keepalive" => f.keepalive = Some(flag(v).ok_or_else(bad)?),
                "at_risk" => f.at_risk = Some(flag(v).ok_or_else(bad)?),
                "risk" if RISKS.contains(&v) => f.risk = Some(v.to_string()),
                "risk" => return Err(format!("{} (one of {})", bad(), RISKS.join(", "))),
                "sort" if v == "risk" => f.by_risk = true,
                "sort" => return Err(format!("{} (risk is the one order)", bad())),
                "limit" => {
                    f.limit = Some(
                        v.parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| format!("{} (a count of sockets, 1 or more)", bad()))?,
                    )
                }
                _ if f.workload.take(k, v) => {}
                _ => {
                    return Err(format!(
                        "unknown filter {k:?} (port, comm, netns, keepalive, at_risk, risk, sort, limit, {WORKLOAD_KEYS})"
                    ));
                }
            }
        }
        Ok(f)
    }

    pub fn to_query(&self) -> String {
        let mut q = Vec::new();
        if let Some(p) = self.port {
            q.push(format!("port={p}"));
        }
        if let Some(c) = &self.comm {
            q.push(format!("comm={c}"));
        }
        if let Some(n) = self.netns {
            q.push(format!("netns={n}"));
        }
        if let Some(k) = self.keepalive {
            q.push(format!("keepalive={}", if k { "on" } else { "off" }));
        }
        if let Some(r) = self.at_risk {
            q.push(format!("at_risk={r}"));
        }
        if let Some(r) = &self.risk {
            q.push(format!("risk={r}"));
        }
        self.workload.to_query(&mut q);
        if self.by_risk {
            q.push("sort=risk".into());
        }
        if let Some(n) = self.limit {
            q.push(format!("limit={n}"));
        }
        q.join("&")
    }

    pub fn matches(&self, s: &SocketView) -> bool {
        self.port.is_none_or(|p| s.sport == p || s.dport == p)
            && self
                .comm
                .as_ref()
                .is_none_or(|c| s.comm.as_ref() == Some(c))
            && self.netns.is_none_or(|n| s.netns == n)
            && self.keepalive.is_none_or(|k| s.keepalive == k)
            && self.at_risk.is_none_or(|r| s.at_risk == r)
            && self.risk.as_ref().is_none_or(|r| s.risk.as_str() == r)
            && self.workload.matches(&s.labels)
    }
}

/// `/events?…`: which events a reader gets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventFilter {
    /// The `event` field: probe, probe_failed, answered, dead, settings, path_timeout.
    pub event: Option<&'static str>,
    pub cause: Option<Cause>,
    pub workload: WorkloadFilter,
}

impl EventFilter {
    /// Parses `event=dead&cause=timeout&unit=redis-server.service`.
    pub fn parse(query: &str) -> Result<EventFilter, String> {
        let mut f = EventFilter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "event" => {
                    f.event = Some(EVENTS.iter().copied().find(|e| *e == v).ok_or_else(|| {
                        format!("bad value {v:?} for event ({})", EVENTS.join(", "))
                    })?)
                }
                "cause" => {
                    f.cause = Some(
                        Cause::ALL
                            .into_iter()
                            .find(|c| c.as_str() == v)
                            .ok_or_else(|| {
                                format!("bad value {v:?} for cause (timeout, reset, unreachable)")
                            })?,
                    )
                }
                _ if f.workload.take(k, v) => {}
                _ => {
                    return Err(format!(
                        "unknown filter {k:?} (event, cause, {WORKLOAD_KEYS})"
                    ));
                }
            }
        }
        Ok(f)
    }

    pub fn is_empty(&self) -> bool {
        *self == EventFilter::default()
    }

    pub fn matches(&self, kind: &str, cause: Option<Cause>, l: &SocketLabels) -> bool {
        self.event.is_none_or(|e| e == kind)
            && self.cause.is_none_or(|c| Some(c) == cause)
            && self.workload.matches(l)
    }
}

fn flag(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "1" | "yes" => Some(true),
        "off" | "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::state::labels::Role;

    #[test]
    fn round_trips_and_rejects_unknown() {
        let f = Filter::parse(
            "port=6379&comm=redis-server&keepalive=on&at_risk=false&risk=exposed&unit=redis-server.service",
        )
        .unwrap();
        assert_eq!(f.risk.as_deref(), Some("exposed"));
        assert!(Filter::parse("risk=doomed").is_err());
        assert_eq!(f.port, Some(6379));
        assert_eq!(f.workload.unit.as_deref(), Some("redis-server.service"));
        assert_eq!(Filter::parse(&f.to_query()).unwrap(), f);
        assert!(Filter::parse("colour=red").is_err());
        assert!(Filter::parse("port=http").is_err());
        let f = Filter::parse("sort=risk&limit=10&risk=exposed").unwrap();
        assert!(f.by_risk);
        assert_eq!(f.limit, Some(10));
        assert_eq!(Filter::parse(&f.to_query()).unwrap(), f);
        for bad in ["sort=age", "limit=0", "limit=-1", "limit=ten", "sort="] {
            let e = Filter::parse(bad).unwrap_err();
            assert!(
                !e.contains('\n') && e.starts_with("bad value"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn event_filter_matches_kind_cause_and_workload() {
        let f = EventFilter::parse("event=dead&unit=redis-server.service&role=server").unwrap();
        let mut l = SocketLabels {
            unit: Some(Arc::from("redis-server.service")),
            role: Some(Role::Server),
            ..SocketLabels::default()
        };
        assert!(f.matches("dead", Some(Cause::Timeout), &l));
        assert!(!f.matches("probe", None, &l));
        l.role = Some(Role::Client);
        assert!(!f.matches("dead", Some(Cause::Timeout), &l));
        assert!(EventFilter::parse("event=gone").is_err());
        assert!(EventFilter::parse("cause=fire").is_err());
        assert!(EventFilter::parse("colour=red").is_err());
        assert!(EventFilter::parse("").unwrap().is_empty());
    }
}
