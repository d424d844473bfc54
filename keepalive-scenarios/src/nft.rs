//! nftables rules in the router namespace that break the client→server path in chosen ways.
//! Every rule carries a counter and a comment so a scenario can prove its rule was really hit:
//! a rule that never matched would otherwise pass as "the kernel did nothing".

use crate::cmd;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;

pub struct Nft {
    pub ip_bin: String,
    pub nft_bin: String,
    pub ns: String,
}

impl Nft {
    fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut argv = vec!["netns", "exec", self.ns.as_str(), self.nft_bin.as_str()];
        argv.extend_from_slice(args);
        cmd::run(&self.ip_bin, &argv, stdin)
    }

    /// Installs one forward-chain table holding `rules` (one rule per line).
    pub fn apply(&self, rules: &[String]) -> Result<()> {
        let body: String = rules.iter().map(|r| format!("        {r}\n")).collect();
        let ruleset = format!(
            "table inet kat {{\n    chain katfwd {{\n        type filter hook forward priority 0; policy accept;\n{body}    }}\n}}\n"
        );
        self.nft(&["-f", "-"], Some(&ruleset))
            .context("installing nftables rules")
            .map(drop)
    }

    pub fn flush(&self) -> Result<()> {
        self.nft(&["flush", "ruleset"], None).map(drop)
    }

    /// Packet counts per rule comment.
    pub fn counters(&self) -> Result<HashMap<String, u64>> {
        let text = self.nft(&["list", "ruleset"], None)?;
        Ok(parse_counters(&text))
    }
}

fn parse_counters(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let packets = line
            .split_once("counter packets ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok());
        let comment = line
            .split_once("comment \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(c, _)| c);
        if let (Some(n), Some(c)) = (packets, comment) {
            out.insert(c.to_owned(), n);
        }
    }
    out
}

/// Match expression for packets from `src` to `dst` (one direction of one TCP flow).
fn dir(src: SocketAddr, dst: SocketAddr) -> String {
    let proto = if src.is_ipv4() { "ip" } else { "ip6" };
    format!(
        "{proto} saddr {} {proto} daddr {} tcp sport {} tcp dport {}",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
}

/// Peer powered off: the router silently drops the flow in both directions.
pub fn drop_flow(client: SocketAddr, server: SocketAddr) -> Vec<String> {
    vec![
        format!("{} counter drop comment \"c2s\"", dir(client, server)),
        format!("{} counter drop comment \"s2c\"", dir(server, client)),
    ]
}

/// Peer rebooted: whatever the client sends is answered with a RST, as a fresh stack would.
pub fn reset_flow(client: SocketAddr, server: SocketAddr) -> Vec<String> {
    vec![format!(
        "{} counter reject with tcp reset comment \"c2s\"",
        dir(client, server)
    )]
}

/// Peer up but unreachable: the router answers with ICMP host unreachable (ICMPv6 address
/// unreachable for IPv6; `icmpx` picks the right one in an inet table).
pub fn unreachable_flow(client: SocketAddr, server: SocketAddr) -> Vec<String> {
    vec![format!(
        "{} counter reject with icmpx type host-unreachable comment \"c2s\"",
        dir(client, server)
    )]
}

/// Seed 004's middlebox: a stateful firewall that resets packets of TCP flows it has no state
/// for (its conntrack entry timed out). A bare ACK with no entry is "new" under the default
/// nf_conntrack_tcp_loose=1; one conntrack refuses to track at all is "invalid".
pub fn idle_firewall() -> Vec<String> {
    vec![
        "meta l4proto tcp ct state invalid counter reject with tcp reset comment \"invalid\"".to_owned(),
        "meta l4proto tcp ct state new tcp flags & (syn | ack) == ack counter reject with tcp reset comment \"new-ack\""
            .to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_nft_listing() {
        let text = "table inet kat {\n\tchain katfwd {\n\t\tip saddr 192.0.2.2 counter packets 3 bytes 156 drop comment \"c2s\"\n\t\tct state invalid counter packets 0 bytes 0 reject comment \"invalid\"\n\t}\n}\n";
        let c = parse_counters(text);
        assert_eq!(c.get("c2s"), Some(&3));
        assert_eq!(c.get("invalid"), Some(&0));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn flow_match_uses_family_keyword() {
        let c: SocketAddr = "[2001:db8:c::2]:40000".parse().unwrap();
        let s: SocketAddr = "[2001:db8:5::2]:5000".parse().unwrap();
        assert_eq!(
            dir(c, s),
            "ip6 saddr 2001:db8:c::2 ip6 daddr 2001:db8:5::2 tcp sport 40000 tcp dport 5000"
        );
    }
}
