//! The config file's `[peers.<group>]` sections, checked: networks and idle budgets (a duration
//! or a provider preset). The classifier built from them is `state::peers`; this module only
//! turns text into checked values, so that a bad value fails at start with one line.
use std::{collections::BTreeMap, net::IpAddr};

use serde::Deserialize;

use crate::service::duration;

/// Configured groups at most: each is a `peer_group` label value.
pub const MAX_GROUPS: usize = 32;
/// Networks per group at most (a linear scan per classification; this keeps it cheap).
pub const MAX_CIDRS: usize = 256;
/// Group names the daemon defines itself; a section with one of them only sets its budget.
pub const BUILTIN: [&str; 3] = ["loopback", "private", "public"];

/// Idle timeouts of common middleboxes, from the providers' documentation, by preset name.
pub const PRESETS: &[(&str, u32)] = &[
    ("aws-nlb", 350),
    ("aws-nat", 350),
    ("aws-nitro", 350),
    ("gcp-vpc", 600),
    ("gcp-nat", 1200),
    ("azure-lb", 240),
    ("azure-nat", 240),
];

/// One section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PeerFile {
    #[serde(default)]
    cidrs: Vec<String>,
    idle_budget: Option<toml::Value>,
}

/// A network: IPv4 is stored as IPv4-mapped IPv6 (`::ffff:a.b.c.d`), so one comparison serves
/// both families; `prefix` counts bits of that 128-bit form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: u128,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        to_u128(ip) & mask(self.prefix) == self.addr
    }
}

/// One checked `[peers.<name>]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerGroupSpec {
    pub name: String,
    /// Empty for a built-in group's section.
    pub cidrs: Vec<Cidr>,
    /// Seconds; `None` when the section gives none (the default `--idle-budget` applies).
    pub idle_budget_s: Option<u32>,
}

/// Checks every section; the error is one line naming `peers.<group>.<key>` and the value.
pub fn parse(sections: &BTreeMap<String, PeerFile>) -> Result<Vec<PeerGroupSpec>, String> {
    if sections.len() > MAX_GROUPS {
        return Err(format!(
            "peers: {} groups, at most {MAX_GROUPS} (each is a metric label value)",
            sections.len()
        ));
    }
    let mut out = Vec::new();
    for (name, sec) in sections {
        let key = |k: &str| format!("peers.{name}.{k}");
        if name.is_empty()
            || name.len() > 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "peers.{name:?}: a group name is 1 to 32 letters, digits, '-' or '_'"
            ));
        }
        let idle_budget_s = match &sec.idle_budget {
            None => None,
            Some(toml::Value::Integer(n)) => Some(parse_budget(&n.to_string())),
            Some(toml::Value::String(s)) => Some(parse_budget(s)),
            Some(v) => Some(Err(format!("{v:?} is not a duration or preset name"))),
        }
        .transpose()
        .map_err(|e| format!("{}: {e}", key("idle-budget")))?;
        if BUILTIN.contains(&name.as_str()) {
            if !sec.cidrs.is_empty() || name == "loopback" {
                return Err(format!(
                    "peers.{name}: a built-in group takes only idle-budget (loopback takes none)"
                ));
            }
        } else if sec.cidrs.is_empty() || sec.cidrs.len() > MAX_CIDRS {
            return Err(format!(
                "{}: give 1 to {MAX_CIDRS} networks like \"10.1.0.0/16\"",
                key("cidrs")
            ));
        }
        let cidrs = sec
            .cidrs
            .iter()
            .map(|c| parse_cidr(c).map_err(|e| format!("{}: {e}", key("cidrs"))))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(PeerGroupSpec {
            name: name.clone(),
            cidrs,
            idle_budget_s,
        });
    }
    Ok(out)
}

/// A preset name or a duration, in whole seconds (at least 1).
pub fn parse_budget(text: &str) -> Result<u32, String> {
    if let Some((_, s)) = PRESETS.iter().find(|(n, _)| *n == text) {
        return Ok(*s);
    }
    let d = duration::parse_duration(text).map_err(|e| {
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        format!("{e}; or one of the presets {}", names.join(", "))
    })?;
    u32::try_from(d.as_secs())
        .ok()
        .filter(|s| *s >= 1)
        .ok_or_else(|| format!("{text:?} is not between 1 s and 136 years"))
}

/// `"10.1.0.0/16"`, `"2001:db8::/32"`, or a bare address (a /32 or /128). Host bits must be 0.
pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let (addr, len) = text.split_once('/').unwrap_or((text, ""));
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?} is not a network like \"10.1.0.0/16\" or \"fd00::/8\""))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = if len.is_empty() {
        max
    } else {
        len.parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{text:?}: prefix length must be 0 to {max}"))?
    };
    let prefix = if ip.is_ipv4() { 96 + len } else { len };
    let a = to_u128(ip);
    if a & !mask(prefix) != 0 {
        return Err(format!(
            "{text:?} has host bits set (did you mean a /{len} network?)"
        ));
    }
    Ok(Cidr { addr: a, prefix })
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, text: &str) -> Result<Vec<PeerGroupSpec>, String> {
        let mut m = BTreeMap::new();
        m.insert(name.to_string(), toml::from_str::<PeerFile>(text).unwrap());
        parse(&m)
    }

    #[test]
    fn sections_parse() {
        let g = one(
            "nat",
            "cidrs = [\"10.9.0.0/16\", \"2001:db8::/32\", \"192.0.2.7\"]\nidle-budget = \"azure-nat\"",
        )
        .unwrap();
        assert_eq!(g[0].idle_budget_s, Some(240));
        assert_eq!(g[0].cidrs.len(), 3);
        assert!(g[0].cidrs[0].contains("10.9.200.1".parse().unwrap()));
        assert!(!g[0].cidrs[0].contains("10.8.0.1".parse().unwrap()));
        assert!(g[0].cidrs[1].contains("2001:db8:5::1".parse().unwrap()));
        assert!(g[0].cidrs[2].contains("192.0.2.7".parse().unwrap()));
        assert_eq!(
            one("public", "idle-budget = 90").unwrap()[0].idle_budget_s,
            Some(90)
        );
        assert_eq!(parse_budget("gcp-nat"), Ok(1200));
        assert_eq!(parse_budget("5m"), Ok(300));
    }

    #[test]
    fn bad_values_are_one_line_naming_the_key() {
        for (name, text, want) in [
            (
                "x",
                "cidrs = [\"10.0.0.1/8\"]",
                "peers.x.cidrs: \"10.0.0.1/8\" has host bits",
            ),
            (
                "x",
                "cidrs = [\"10.0.0.0/33\"]",
                "prefix length must be 0 to 32",
            ),
            (
                "x",
                "cidrs = [\"ten\"]",
                "peers.x.cidrs: \"ten\" is not a network",
            ),
            ("x", "cidrs = []", "peers.x.cidrs: give 1 to"),
            (
                "x",
                "cidrs = [\"10.0.0.0/8\"]\nidle-budget = \"aws-elb\"",
                "peers.x.idle-budget:",
            ),
            (
                "x",
                "cidrs = [\"10.0.0.0/8\"]\nidle-budget = \"0s\"",
                "peers.x.idle-budget:",
            ),
            ("x y", "cidrs = [\"10.0.0.0/8\"]", "a group name is"),
            ("loopback", "idle-budget = 5", "built-in group"),
            ("private", "cidrs = [\"10.0.0.0/8\"]", "built-in group"),
        ] {
            let e = one(name, text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
