//! Kernel counters of a namespace, read with `nstat` run inside it (`ip netns exec`), because
//! /proc/net/* shows the counters of the reading process's namespace.

use crate::cmd;
use anyhow::{Context, Result};
use std::collections::HashMap;

#[derive(Clone, Debug, Default)]
pub struct Counters(pub HashMap<String, u64>);

impl Counters {
    pub fn read(ip_bin: &str, nstat_bin: &str, ns: &str) -> Result<Counters> {
        // -a absolute values, -s leave nstat's history file alone, -z include zero counters
        // (so a counter that stays 0 is known to exist rather than silently missing).
        let out = cmd::run(ip_bin, &["netns", "exec", ns, nstat_bin, "-asz"], None)?;
        let c = parse(&out);
        c.0.get("TcpExtTCPKeepAlive")
            .context("nstat output lacks TcpExtTCPKeepAlive")?;
        Ok(c)
    }

    /// `after - self` for one counter; a counter missing on either side is an error, not 0.
    pub fn delta(&self, after: &Counters, name: &str) -> Result<u64> {
        let a = self
            .0
            .get(name)
            .with_context(|| format!("counter {name} missing"))?;
        let b = after
            .0
            .get(name)
            .with_context(|| format!("counter {name} missing"))?;
        Ok(b.saturating_sub(*a))
    }
}

fn parse(text: &str) -> Counters {
    let mut map = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut it = line.split_whitespace();
        if let (Some(name), Some(value)) = (it.next(), it.next())
            && let Ok(v) = value.parse::<u64>()
        {
            map.insert(name.to_owned(), v);
        }
    }
    Counters(map)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_nstat_output() {
        let c = super::parse(
            "#kernel\nIpInReceives                    12                 0.0\nTcpExtTCPKeepAlive              3                  0.0\n",
        );
        assert_eq!(c.0.get("TcpExtTCPKeepAlive"), Some(&3));
        assert_eq!(c.0.get("IpInReceives"), Some(&12));
    }
}
