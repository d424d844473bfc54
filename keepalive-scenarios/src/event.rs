//! The daemon's JSON events and /metrics counters, as the contract defines them.

use crate::http::Sample;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct KeepaliveCfg {
    /// SO_KEEPALIVE as the daemon saw it.
    pub enabled: Option<bool>,
    pub idle_s: Option<u64>,
    pub intvl_s: Option<u64>,
    pub cnt: Option<u64>,
    pub user_timeout_ms: Option<u64>,
}

/// Unknown fields are ignored (serde's default), so the daemon may add more.
#[derive(Clone, Debug, Deserialize)]
pub struct Event {
    pub ts: String,
    pub event: String,
    pub family: String,
    pub saddr: String,
    pub sport: u16,
    pub daddr: String,
    pub dport: u16,
    pub netns: u64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub probes: Option<u32>,
    pub keepalive: Option<KeepaliveCfg>,
    /// `settings` only: the configuration before the change.
    pub previous: Option<KeepaliveCfg>,
    pub cause: Option<String>,
    pub errno: Option<String>,
    /// `probe_failed` only.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub hook: Option<String>,
}

impl Event {
    /// Whether the event is about the TCP flow `local` → `peer` (client side of the connection).
    pub fn is_flow(&self, local: SocketAddr, peer: SocketAddr) -> bool {
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        ip(&self.saddr) == Some(local.ip())
            && self.sport == local.port()
            && ip(&self.daddr) == Some(peer.ip())
            && self.dport == peer.port()
    }

    pub fn time(&self) -> Option<SystemTime> {
        parse_rfc3339(&self.ts)
    }

    /// `saddr:sport->daddr:dport`, IPv6 in brackets, for messages.
    pub fn endpoints(&self) -> String {
        let ep = |a: &str, p: u16| match a.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, p).to_string(),
            Err(_) => format!("{a}:{p}"),
        };
        format!(
            "{}->{}",
            ep(&self.saddr, self.sport),
            ep(&self.daddr, self.dport)
        )
    }

    /// Compact form for failure messages.
    pub fn brief(&self) -> String {
        let mut s = format!(
            "{}#{}",
            self.event,
            self.probes.map_or("?".into(), |p| p.to_string())
        );
        if let Some(c) = &self.cause {
            s.push_str(&format!("/{c}"));
        }
        if let Some(e) = &self.errno {
            s.push_str(&format!("/{e}"));
        }
        s
    }
}

/// RFC 3339 timestamps as the daemon writes them: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
pub fn parse_rfc3339(ts: &str) -> Option<SystemTime> {
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &ts[19..];
    let mut nanos: u64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        let text = &frac[..digits];
        for (i, c) in text.bytes().take(9).enumerate() {
            nanos += u64::from(c - b'0') * 10u64.pow(8 - i as u32);
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?) + Duration::from_nanos(nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The counters of /metrics the suite compares with the JSON stream.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metrics {
    pub probes: f64,
    pub answered: f64,
    pub dead_timeout: f64,
    pub dead_reset: f64,
    pub dead_unreachable: f64,
    pub lost: f64,
    /// The part of `lost` that is hook runs the kernel skipped (`stage="nested"`).
    pub lost_nested: f64,
    /// Probes the kernel counted that reached no hook (the daemon's own audit).
    pub unseen: f64,
    /// `keepalive_timeout_closes_unseen_total`.
    pub closes_unseen: f64,
    /// Probes the kernel counted but could not send, all reasons.
    pub failed: f64,
}

pub const CAUSES: [&str; 3] = ["timeout", "reset", "unreachable"];

impl Metrics {
    /// A counter that is absent altogether is an error (the daemon must always export it). Each
    /// value is the sum over all label sets: the daemon may split a counter by labels of its own
    /// (e.g. events lost per pipeline stage), and a labelled family with no child yet is
    /// legitimately absent from the text, hence the dead counters default to 0.
    pub fn from_samples(samples: &[Sample]) -> Result<Metrics, String> {
        let sum = |name: &str| {
            let mut it = samples.iter().filter(|s| s.name == name).peekable();
            it.peek()
                .is_some()
                .then(|| it.map(|s| s.value).sum::<f64>())
        };
        let plain = |name: &str| sum(name).ok_or_else(|| format!("{name} missing"));
        let dead = |cause: &str| {
            samples
                .iter()
                .filter(|s| s.name == "keepalive_dead_connections_total")
                .filter(|s| s.labels.iter().any(|(k, v)| k == "cause" && v == cause))
                .map(|s| s.value)
                .sum::<f64>()
        };
        Ok(Metrics {
            probes: plain("keepalive_probes_total")?,
            answered: plain("keepalive_probes_answered_total")?,
            dead_timeout: dead("timeout"),
            dead_reset: dead("reset"),
            dead_unreachable: dead("unreachable"),
            lost: plain("keepalive_events_lost_total")?,
            lost_nested: samples
                .iter()
                .filter(|s| s.name == "keepalive_events_lost_total")
                .filter(|s| s.labels.iter().any(|(k, v)| k == "stage" && v == "nested"))
                .map(|s| s.value)
                .sum(),
            unseen: plain("keepalive_probes_unseen_total")?,
            closes_unseen: plain("keepalive_timeout_closes_unseen_total")?,
            failed: plain("keepalive_probes_failed_total")?,
        })
    }

    pub fn dead(&self, cause: &str) -> f64 {
        match cause {
            "timeout" => self.dead_timeout,
            "reset" => self.dead_reset,
            _ => self.dead_unreachable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_nanos_and_offsets() {
        let t = parse_rfc3339("2026-11-21T23:59:01.123456789Z").unwrap();
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(d.as_secs(), 1_795_305_541);
        assert_eq!(d.subsec_nanos(), 123_456_789);
        let same = parse_rfc3339("2026-11-22T01:59:01.123456789+02:00").unwrap();
        assert_eq!(t, same);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert!(parse_rfc3339("2026-11-21 garbage").is_none());
    }

    #[test]
    fn event_matches_ipv6_flow_textually_different() {
        let line = r#"{"ts":"2026-11-21T23:59:01Z","event":"probe","family":"ipv6","saddr":"2001:db8:c:0::2","sport":40000,"daddr":"2001:db8:5::2","dport":5000,"netns":1,"pid":null,"comm":null,"probes":1,"extra":true}"#;
        let e: Event = serde_json::from_str(line).unwrap();
        assert!(e.is_flow(
            "[2001:db8:c::2]:40000".parse().unwrap(),
            "[2001:db8:5::2]:5000".parse().unwrap()
        ));
        assert!(!e.is_flow(
            "[2001:db8:c::2]:40001".parse().unwrap(),
            "[2001:db8:5::2]:5000".parse().unwrap()
        ));
        assert_eq!(e.pid, None);
    }
}
