//! Peer groups: which part of the network a socket's peer is in, and the idle budget of the
//! path to it (the shortest idle timeout of the NATs, firewalls and load balancers on that
//! path). A reusable classifier with a small API:
//!
//! - [`Peers::new`] builds the table from the default budget (`--idle-budget`) and the config's
//!   checked `[peers.<group>]` sections (`service::peer_config`);
//! - [`Peers::classify`] maps an `IpAddr` to its [`Group`] (name and budget);
//! - [`Peers::groups`] lists every group, so a `peer_group` label has a known, bounded set of
//!   values (at most `peer_config::MAX_GROUPS` configured plus the three built-in ones);
//! - [`subnet`] gives the peer's /24 or /64, for finer learning within a group.
//!
//! Configured groups win over the built-in ones; among configured groups the longest prefix
//! wins (ties: the group whose name sorts first). Built-in groups: `loopback` (127.0.0.0/8,
//! ::1; no budget: no middlebox on the path), `private` (RFC 1918, CGNAT 100.64.0.0/10,
//! link-local, ULA fc00::/7, fe80::/10) and `public` (everything else). A `[peers.private]` or
//! `[peers.public]` section without `cidrs` only changes that built-in group's budget.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use crate::service::peer_config::{BUILTIN, Cidr, PeerGroupSpec};

pub const LOOPBACK: &str = BUILTIN[0];
pub const PRIVATE: &str = BUILTIN[1];
pub const PUBLIC: &str = BUILTIN[2];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Shared: every socket's labels carry it, and an `Arc` clone is a count, not a copy.
    pub name: Arc<str>,
    /// Seconds a flow may stay silent on this path; `None` for loopback (no middlebox).
    pub budget_s: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Peers {
    /// Configured groups first, then `loopback`, `private`, `public`.
    groups: Vec<Group>,
    /// Every configured network with its group's index, longest prefix first.
    nets: Vec<(Cidr, usize)>,
    builtin: usize,
}

impl Peers {
    pub fn new(default_budget_s: u32, specs: &[PeerGroupSpec]) -> Peers {
        let mut groups = Vec::new();
        let mut nets = Vec::new();
        let mut builtin_budget = [None, Some(default_budget_s), Some(default_budget_s)];
        for spec in specs {
            if let Some(i) = BUILTIN.iter().position(|b| *b == spec.name) {
                if i > 0 {
                    builtin_budget[i] = spec.idle_budget_s.or(builtin_budget[i]);
                }
                continue;
            }
            nets.extend(spec.cidrs.iter().map(|c| (*c, groups.len())));
            groups.push(Group {
                name: spec.name.as_str().into(),
                budget_s: Some(spec.idle_budget_s.unwrap_or(default_budget_s)),
            });
        }
        let builtin = groups.len();
        for (name, budget_s) in BUILTIN.iter().zip(builtin_budget) {
            groups.push(Group {
                name: (*name).into(),
                budget_s,
            });
        }
        // Longest prefix first, so the first match is the most specific; stable for ties.
        nets.sort_by_key(|(c, _)| std::cmp::Reverse(c.prefix));
        Peers {
            groups,
            nets,
            builtin,
        }
    }

    /// The group of a peer address.
    pub fn classify(&self, ip: IpAddr) -> &Group {
        if let Some((_, g)) = self.nets.iter().find(|(c, _)| c.contains(ip)) {
            return &self.groups[*g];
        }
        let i = match builtin_class(ip) {
            Builtin::Loopback => 0,
            Builtin::Private => 1,
            Builtin::Public => 2,
        };
        &self.groups[self.builtin + i]
    }

    /// Every group, configured ones first: the bounded set of `peer_group` values.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The budget of a group by name.
    pub fn budget(&self, name: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|g| &*g.name == name)
            .and_then(|g| g.budget_s)
    }
}

enum Builtin {
    Loopback,
    Private,
    Public,
}

fn builtin_class(ip: IpAddr) -> Builtin {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Builtin::Loopback,
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let cgnat = o[0] == 100 && (o[1] & 0xc0) == 64;
            if v4.is_private() || v4.is_link_local() || cgnat {
                Builtin::Private
            } else {
                Builtin::Public
            }
        }
        IpAddr::V6(v6) if v6.is_loopback() => Builtin::Loopback,
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            if (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80 {
                Builtin::Private
            } else {
                Builtin::Public
            }
        }
    }
}

/// The peer's /24 (IPv4) or /64 (IPv6) network, for finer path learning within a group.
pub fn subnet(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & 0xffff_ff00)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => subnet(IpAddr::V4(v4)),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::service::peer_config;

    fn peers(text: &str) -> Peers {
        let m: BTreeMap<String, peer_config::PeerFile> = toml::from_str(text).unwrap();
        Peers::new(350, &peer_config::parse(&m).unwrap())
    }

    fn name(p: &Peers, ip: &str) -> String {
        p.classify(ip.parse().unwrap()).name.to_string()
    }

    #[test]
    fn builtin_groups_cover_both_families() {
        let p = peers("");
        for (ip, want) in [
            ("127.0.0.1", LOOPBACK),
            ("::1", LOOPBACK),
            ("::ffff:127.0.0.1", LOOPBACK),
            ("10.2.3.4", PRIVATE),
            ("172.31.0.1", PRIVATE),
            ("192.168.1.1", PRIVATE),
            ("100.64.0.1", PRIVATE),
            ("169.254.1.1", PRIVATE),
            ("fd12::1", PRIVATE),
            ("fe80::1", PRIVATE),
            ("8.8.8.8", PUBLIC),
            ("100.128.0.1", PUBLIC),
            ("2001:db8::1", PUBLIC),
            ("::ffff:8.8.8.8", PUBLIC),
        ] {
            assert_eq!(name(&p, ip), want, "{ip}");
        }
        assert_eq!(p.budget(LOOPBACK), None);
        assert_eq!(p.budget(PRIVATE), Some(350));
        assert_eq!(p.groups().len(), 3);
    }

    #[test]
    fn configured_groups_win_longest_prefix_first() {
        let p = peers(
            "[vpc]\ncidrs = [\"10.0.0.0/8\"]\nidle-budget = \"gcp-vpc\"\n\
             [nat]\ncidrs = [\"10.9.0.0/16\", \"2001:db8::/32\"]\nidle-budget = \"4m\"\n\
             [plain]\ncidrs = [\"192.0.2.0/24\"]\n\
             [public]\nidle-budget = \"azure-lb\"\n",
        );
        assert_eq!(name(&p, "10.1.1.1"), "vpc");
        assert_eq!(name(&p, "10.9.1.1"), "nat");
        assert_eq!(name(&p, "::ffff:10.9.1.1"), "nat");
        assert_eq!(name(&p, "2001:db8:1::1"), "nat");
        assert_eq!(name(&p, "192.0.2.9"), "plain");
        assert_eq!(name(&p, "11.0.0.1"), PUBLIC);
        assert_eq!(p.budget("vpc"), Some(600));
        assert_eq!(p.budget("nat"), Some(240));
        assert_eq!(p.budget("plain"), Some(350));
        assert_eq!(p.budget(PUBLIC), Some(240));
        assert_eq!(p.groups().len(), 6);
    }

    #[test]
    fn subnets() {
        assert_eq!(
            subnet("10.1.2.3".parse().unwrap()),
            "10.1.2.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            subnet("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            subnet("2001:db8:1:2:3::4".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }
}
