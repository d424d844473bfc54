//! The filters of `/sockets` and `keepalive-daemon sockets`, as URL query parameters.
use crate::state::inventory::SocketView;

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
    pub peer_group: Option<String>,
}

const RISKS: [&str; 6] = ["exposed", "at_risk", "covered", "listener", "local", "none"];

impl Filter {
    /// Parses `port=80&comm=nginx&netns=4026531840&keepalive=on&at_risk=true`.
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
                "peer_group" => f.peer_group = Some(v.to_string()),
                _ => {
                    return Err(format!(
                        "unknown filter {k:?} (port, comm, netns, keepalive, at_risk, risk, peer_group)"
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
        if let Some(g) = &self.peer_group {
            q.push(format!("peer_group={g}"));
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
            && self
                .peer_group
                .as_ref()
                .is_none_or(|g| s.peer_group.as_ref() == Some(g))
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
    use super::*;

    #[test]
    fn round_trips_and_rejects_unknown() {
        let f = Filter::parse(
            "port=6379&comm=redis-server&keepalive=on&at_risk=false&risk=exposed&peer_group=nat",
        )
        .unwrap();
        assert_eq!(f.risk.as_deref(), Some("exposed"));
        assert!(Filter::parse("risk=doomed").is_err());
        assert_eq!(f.port, Some(6379));
        assert_eq!(Filter::parse(&f.to_query()).unwrap(), f);
        assert!(Filter::parse("colour=red").is_err());
        assert!(Filter::parse("port=http").is_err());
    }
}
