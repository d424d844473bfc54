//! The namespaces the scale bench builds: two (or more) for the quiet million, one whose
//! sockets probe every second (the storm and the walk's latency probe), and the partition's
//! client, router and server joined by veth pairs, with an nftables table in the router that
//! drops forwarding on demand. Everything is removed on drop, and the global sysctl it raises
//! is restored (also by the next run, should this one be killed).
use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::sys::{self, Netns};

/// Per-namespace sysctls of the quiet namespaces: a wide local port range (a holder's 9 000
/// connections go to one address, and the namespace holds 250 000 at 1 M sockets) and, in the
/// second namespace, a different keepalive default so that both defaults are inventoried.
const PORTS: (&str, &str) = ("net.ipv4.ip_local_port_range", "10240 65000");

pub struct Topology {
    pub quiet: Vec<Netns>,
    pub storm: Netns,
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
}

/// The server's address in `server`, reached from `client` through `router`.
pub const SERVER_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 211, 2, 1);

impl Topology {
    pub fn build(tag: u32, quiet_namespaces: usize) -> Result<Self> {
        let mut quiet = Vec::new();
        for i in 0..quiet_namespaces.max(2) {
            let time = if i % 2 == 0 { "7200" } else { "5400" };
            quiet.push(Netns::create(
                &format!("kab-scale{i}-{tag}"),
                &[PORTS, ("net.ipv4.tcp_keepalive_time", time)],
            )?);
        }
        let storm = Netns::create(&format!("kab-scalestorm-{tag}"), &sys::STORM_KEEPALIVE)?;
        let client = Netns::create(&format!("kab-scalec-{tag}"), &[PORTS])?;
        let server = Netns::create(&format!("kab-scales-{tag}"), &[PORTS])?;
        let router = Netns::create(
            &format!("kab-scaler-{tag}"),
            &[("net.ipv4.ip_forward", "1")],
        )?;
        let t = Topology {
            quiet,
            storm,
            client,
            router,
            server,
        };
        t.wire()
            .context("partition topology (veth, routes, nftables)")?;
        Ok(t)
    }

    fn wire(&self) -> Result<()> {
        let (c, r, s) = (&self.client.name, &self.router.name, &self.server.name);
        let ip = |args: &[&str]| sys::run(Command::new("ip").args(args));
        ip(&[
            "link", "add", "kabc0", "netns", c, "type", "veth", "peer", "kabr0", "netns", r,
        ])?;
        ip(&[
            "link", "add", "kabs0", "netns", s, "type", "veth", "peer", "kabr1", "netns", r,
        ])?;
        for (ns, dev, addr) in [
            (c, "kabc0", "10.211.1.1/24"),
            (r, "kabr0", "10.211.1.254/24"),
            (r, "kabr1", "10.211.2.254/24"),
            (s, "kabs0", "10.211.2.1/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", c, "route", "add", "default", "via", "10.211.1.254"])?;
        ip(&["-n", s, "route", "add", "default", "via", "10.211.2.254"])?;
        self.nft("add table inet kab")?;
        self.nft("add chain inet kab cut { type filter hook forward priority 0; policy accept; }")
    }

    fn nft(&self, rule: &str) -> Result<()> {
        sys::run(
            Command::new("ip")
                .args(["netns", "exec", &self.router.name, "nft"])
                .args(rule.split_whitespace()),
        )
    }

    /// The router drops everything it would forward: both ends keep their sockets, and every
    /// segment between them (probes included) vanishes.
    pub fn partition(&self) -> Result<()> {
        self.nft("add rule inet kab cut counter drop")
    }

    /// Packets the partition rule dropped.
    pub fn dropped(&self) -> u64 {
        sys::output(Command::new("ip").args([
            "netns",
            "exec",
            &self.router.name,
            "nft",
            "list",
            "chain",
            "inet",
            "kab",
            "cut",
        ]))
        .ok()
        .and_then(|t| {
            t.split_once("counter packets ")
                .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
    }
}

/// TCP sockets of one namespace still in a state keepalive probes (ESTABLISHED, CLOSE_WAIT,
/// FIN_WAIT2): after a partition, the ones the kernel has not (yet) killed.
pub fn alive(ns: &Netns) -> Result<u64> {
    let text = sys::output(Command::new("ip").args([
        "netns",
        "exec",
        &ns.name,
        "ss",
        "-Htn",
        "state",
        "established",
        "state",
        "close-wait",
        "state",
        "fin-wait-2",
    ]))?;
    Ok(text.lines().count() as u64)
}

/// `TcpExtTCPKeepAlive` (keepalive probes the kernel sent) of one namespace.
pub fn keepalive_mib(ns: &Netns) -> Result<u64> {
    tcp_ext(ns, "TCPKeepAlive")
}

/// `TcpExtTCPAbortOnTimeout` of one namespace: connections the kernel ended on a timeout
/// (`tcp_write_err`: keepalive giving up, and retransmission or zero-window probes giving up).
/// In the partition it is the kernel's own count of the deaths, whether or not the daemon's
/// programs were called for them.
pub fn timeout_aborts(ns: &Netns) -> Result<u64> {
    tcp_ext(ns, "TCPAbortOnTimeout")
}

/// One `TcpExt` counter of a namespace's /proc/net/netstat.
fn tcp_ext(ns: &Netns, name: &str) -> Result<u64> {
    let text = sys::output(Command::new("ip").args([
        "netns",
        "exec",
        &ns.name,
        "cat",
        "/proc/net/netstat",
    ]))?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let names = names.split_whitespace();
        if let Some((_, v)) = names
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
        {
            return v.parse().with_context(|| name.to_string());
        }
    }
    anyhow::bail!("no TcpExt {name} in {}", ns.name)
}

/// Packets the kernel dropped at `net.core.netdev_max_backlog` (second column of every CPU's
/// /proc/net/softnet_stat line, hexadecimal).
pub fn backlog_drops() -> u64 {
    fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

const BACKLOG: &str = "/proc/sys/net/core/netdev_max_backlog";

/// Where the value to restore is kept while the sysctl is raised: a run killed before it
/// restores leaves it for the next run (`restore_stale`).
fn restore_file() -> PathBuf {
    crate::daemon::scratch_dir().join("netdev_max_backlog.restore")
}

/// `net.core.netdev_max_backlog` (global: the host's) raised for the guard's life.
pub struct Backlog {
    pub previous: u64,
    pub raised: u64,
}

impl Backlog {
    pub fn raise(to: u64) -> Result<Self> {
        restore_stale();
        let previous: u64 = fs::read_to_string(BACKLOG)?.trim().parse()?;
        let raised = to.max(previous);
        fs::write(restore_file(), previous.to_string())?;
        fs::write(BACKLOG, raised.to_string()).context("sysctl net.core.netdev_max_backlog")?;
        Ok(Backlog { previous, raised })
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        let _ = fs::write(BACKLOG, self.previous.to_string());
        let _ = fs::remove_file(restore_file());
    }
}

/// Puts back a value an interrupted run left raised.
pub fn restore_stale() {
    if let Ok(v) = fs::read_to_string(restore_file()) {
        let _ = fs::write(BACKLOG, v.trim());
        let _ = fs::remove_file(restore_file());
    }
}
