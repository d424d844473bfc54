//! The client — router — server topology: three named network namespaces joined by two veth
//! pairs, dual stack, with forwarding only in the router so every test packet crosses the
//! router's nftables forward hook.

use crate::{cleanup, cmd};
use anyhow::{Context, Result, anyhow};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

// Documentation prefixes (RFC 5737 / RFC 3849): they exist only inside our own namespaces, and
// can never be confused with a real network should a packet ever escape.
const CLIENT_V4: &str = "192.0.2.2";
const ROUTER_C_V4: &str = "192.0.2.1";
const ROUTER_S_V4: &str = "198.51.100.1";
const SERVER_V4: &str = "198.51.100.2";
const CLIENT_V6: &str = "2001:db8:c::2";
const ROUTER_C_V6: &str = "2001:db8:c::1";
const ROUTER_S_V6: &str = "2001:db8:5::1";
const SERVER_V6: &str = "2001:db8:5::2";
// Locally administered MACs; each veth pair is its own L2 segment, so reuse across runs is fine.
const MAC_C0: &str = "02:6b:61:74:01:02";
const MAC_RC: &str = "02:6b:61:74:01:01";
const MAC_RS: &str = "02:6b:61:74:02:01";
const MAC_S0: &str = "02:6b:61:74:02:02";

pub struct Topology {
    pub client: String,
    pub router: String,
    pub server: String,
    pub family: Family,
    ip_bin: String,
    created: Vec<String>,
}

impl Topology {
    /// `prefix` must be unique per run and scenario (e.g. `kat1234-3`); it names the namespaces.
    pub fn create(ip_bin: &str, prefix: &str, family: Family) -> Result<Topology> {
        let mut topo = Topology {
            client: format!("{prefix}-c"),
            router: format!("{prefix}-r"),
            server: format!("{prefix}-s"),
            family,
            ip_bin: ip_bin.to_owned(),
            created: Vec::new(),
        };
        // Any error below returns `topo` by drop, which deletes what was already created.
        for name in [
            topo.client.clone(),
            topo.router.clone(),
            topo.server.clone(),
        ] {
            cleanup::register_netns(&name);
            if let Err(e) = cmd::run(ip_bin, &["netns", "add", &name], None) {
                cleanup::unregister_netns(&name);
                return Err(e);
            }
            topo.created.push(name);
        }
        topo.wire()?;
        Ok(topo)
    }

    fn ip(&self, ns: &str, args: &str) -> Result<()> {
        let mut argv = vec!["-n", ns];
        argv.extend(args.split_whitespace());
        cmd::run(&self.ip_bin, &argv, None).map(drop)
    }

    fn wire(&self) -> Result<()> {
        let (c, r, s) = (&self.client, &self.router, &self.server);
        // A new namespace starts with forwarding off, whatever the host has.
        write_sysctl(r, "net/ipv4/ip_forward", "1")?;
        write_sysctl(r, "net/ipv6/conf/all/forwarding", "1")?;
        // Create both ends directly inside the namespaces: short fixed names cannot clash with
        // interfaces of the host or of a concurrent run. Fixed MACs allow static neighbours.
        let veth = |here: &str, dev: &str, mac: &str, peer_ns: &str, peer: &str, peer_mac: &str| {
            self.ip(here, &format!("link add {dev} address {mac} type veth peer name {peer} address {peer_mac} netns {peer_ns}"))
        };
        veth(r, "rc", MAC_RC, c, "c0", MAC_C0)?;
        veth(r, "rs", MAC_RS, s, "s0", MAC_S0)?;
        for (ns, dev) in [(c, "c0"), (r, "rc"), (r, "rs"), (s, "s0")] {
            self.ip(ns, &format!("link set {dev} up"))?;
        }
        for ns in [c, r, s] {
            self.ip(ns, "link set lo up")?;
        }
        let addrs = [
            (c, "c0", CLIENT_V4, CLIENT_V6),
            (r, "rc", ROUTER_C_V4, ROUTER_C_V6),
            (r, "rs", ROUTER_S_V4, ROUTER_S_V6),
            (s, "s0", SERVER_V4, SERVER_V6),
        ];
        for (ns, dev, v4, v6) in addrs {
            self.ip(ns, &format!("addr add {v4}/24 dev {dev}"))?;
            // nodad: an IPv6 address is unusable ("tentative") for ~1 s otherwise.
            self.ip(ns, &format!("-6 addr add {v6}/64 dev {dev} nodad"))?;
        }
        // Permanent neighbours: no ARP/ND traffic at all. Resolution right after link-up lost
        // the first packet of a flow (a SYN) in ~1 of 2 IPv6 runs, which costs a 1 s SYN
        // retransmission and an inflated RTT estimate that skews RTO timings.
        let neigh = [
            (c, "c0", ROUTER_C_V4, ROUTER_C_V6, MAC_RC),
            (r, "rc", CLIENT_V4, CLIENT_V6, MAC_C0),
            (r, "rs", SERVER_V4, SERVER_V6, MAC_S0),
            (s, "s0", ROUTER_S_V4, ROUTER_S_V6, MAC_RS),
        ];
        for (ns, dev, v4, v6, mac) in neigh {
            for addr in [v4, v6] {
                self.ip(
                    ns,
                    &format!("neigh replace {addr} lladdr {mac} dev {dev} nud permanent"),
                )?;
            }
        }
        self.ip(c, &format!("route add default via {ROUTER_C_V4}"))?;
        self.ip(s, &format!("route add default via {ROUTER_S_V4}"))?;
        self.ip(c, &format!("-6 route add default via {ROUTER_C_V6}"))?;
        self.ip(s, &format!("-6 route add default via {ROUTER_S_V6}"))?;
        for (ns, dev) in [(c, "c0"), (r, "rc"), (r, "rs"), (s, "s0")] {
            self.wait_link_ready(ns, dev)?;
        }
        Ok(())
    }

    /// A second server address, `198.51.100.<host>` or `2001:db8:5::<host>` (this family's),
    /// reachable through the router: for checks that must not mix with flows to the usual
    /// address in other test runs on the same machine (a daemon sees every namespace).
    pub fn add_server_addr(&self, host: u8) -> Result<IpAddr> {
        let addr: IpAddr = match self.family {
            Family::Ipv4 => format!("198.51.100.{host}"),
            _ => format!("2001:db8:5::{host:x}"),
        }
        .parse()?;
        let (len, v6) = if addr.is_ipv4() {
            (24, "")
        } else {
            (64, "-6 ")
        };
        let nodad = if addr.is_ipv4() { "" } else { " nodad" };
        self.ip(
            &self.server,
            &format!("{v6}addr add {addr}/{len} dev s0{nodad}"),
        )?;
        self.ip(
            &self.router,
            &format!("neigh replace {addr} lladdr {MAC_S0} dev rs nud permanent"),
        )?;
        Ok(addr)
    }

    /// Waits until the kernel's link watcher has activated the device. Until then it keeps the
    /// "noop" qdisc, which silently drops: a SYN sent too early is lost, the handshake needs a
    /// 1 s retransmission, and the inflated RTT estimate then skews every RTO-based timing.
    /// The link watcher may take up to a second after `link set up`.
    fn wait_link_ready(&self, ns: &str, dev: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let out = cmd::run(
                &self.ip_bin,
                &["-n", ns, "-o", "link", "show", "dev", dev],
                None,
            )?;
            if out.contains("state UP") && !out.contains("qdisc noop") {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("{dev} in {ns} not ready after 5 s: {}", out.trim());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn client_addr(&self) -> IpAddr {
        let a = if self.family == Family::Ipv4 {
            CLIENT_V4
        } else {
            CLIENT_V6
        };
        a.parse().expect("constant address")
    }

    pub fn server_addr(&self) -> IpAddr {
        let a = if self.family == Family::Ipv4 {
            SERVER_V4
        } else {
            SERVER_V6
        };
        a.parse().expect("constant address")
    }

    /// The namespace inode the kernel (and so the daemon) identifies the client namespace by.
    pub fn inode(&self, ns: &str) -> Result<u64> {
        let meta = std::fs::metadata(format!("/run/netns/{ns}"))
            .with_context(|| format!("stat netns {ns}"))?;
        Ok(meta.ino())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in self.created.drain(..) {
            cleanup::delete_netns(&self.ip_bin, &name);
            cleanup::unregister_netns(&name);
        }
    }
}

/// Runs `f` on a fresh thread that has joined namespace `ns`. Sockets created there stay in that
/// namespace for their whole life, so the returned fds can be used from any thread; the calling
/// thread itself never changes namespace (the daemon's HTTP endpoint lives in the root one).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
                // SAFETY: setns on a valid namespace fd; it only affects this (throw-away) thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns {path}"));
                }
                f()
            })
            .join()
            .map_err(|_| anyhow!("thread inside netns {ns} panicked"))?
    })
}

/// Writes a per-namespace sysctl. /proc/sys/net resolves against the calling thread's namespace,
/// so this works from an `in_netns` thread without a `sysctl` binary (absent in a minimal VM).
pub fn write_sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    in_netns(ns, || {
        std::fs::write(&path, value).with_context(|| format!("write {value} to {path} in {ns}"))?;
        let back = std::fs::read_to_string(&path)?;
        anyhow::ensure!(
            back.trim() == value,
            "{path} in {ns} reads back {back:?}, wanted {value}"
        );
        Ok(())
    })
}
