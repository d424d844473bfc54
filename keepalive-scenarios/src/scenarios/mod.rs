//! The scenario harness: one fresh topology per scenario × family, the kernel-side checks that
//! every scenario shares, and the hand-off to the daemon-side verification.

mod alive;
mod crashed;
mod firewall;
mod local_drop;
mod no_keepalive;
mod rebooted;
mod rto;
mod storm;
mod unreachable;

use crate::daemon::Daemon;
pub use crate::flow::{Expect, Flow};
use crate::nft::Nft;
use crate::nstat::Counters;
use crate::report::Line;
use crate::sock::{self, Keepalive, Outcome, Stamp};
use crate::topology::{Family, Topology};
use crate::verify;
use anyhow::{Context, Result};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Alive,
    Crashed,
    Rebooted,
    Unreachable,
    FirewallIdleReset,
    ControlNoKeepalive,
    ControlRto,
    LocalDrop,
    Storm,
}

pub const ALL: [Kind; 9] = [
    Kind::Alive,
    Kind::Crashed,
    Kind::Rebooted,
    Kind::Unreachable,
    Kind::FirewallIdleReset,
    Kind::ControlNoKeepalive,
    Kind::ControlRto,
    Kind::LocalDrop,
    Kind::Storm,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Alive => "alive",
            Kind::Crashed => "crashed",
            Kind::Rebooted => "rebooted",
            Kind::Unreachable => "unreachable",
            Kind::FirewallIdleReset => "firewall-idle-reset",
            Kind::ControlNoKeepalive => "control-no-keepalive",
            Kind::ControlRto => "control-rto",
            Kind::LocalDrop => "local-drop",
            Kind::Storm => "storm",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::Alive => "peer alive: probes answered, no death",
            Kind::Crashed => "router drops the flow: 3 probes, ETIMEDOUT",
            Kind::Rebooted => "router resets the flow: 1 probe, ECONNRESET",
            Kind::Unreachable => {
                "router answers ICMP host unreachable: 3 probes, ETIMEDOUT, cause unreachable"
            }
            Kind::FirewallIdleReset => {
                "stateful middlebox forgets idle flows (2 s): idle 3 s reset, idle 1 s survives"
            }
            Kind::ControlNoKeepalive => "no SO_KEEPALIVE behind a dropping router: no event",
            Kind::ControlRto => "data in flight dies by retransmission timeout: no keepalive event",
            Kind::Storm => {
                "500 loopback pairs probing every second: probe + probe_failed events == TcpExtTCPKeepAlive, none unseen"
            }
            Kind::LocalDrop => {
                "client egress drops everything (pfifo limit 0) for 2.7 s: probe_failed every 0.5 s, then the run goes on"
            }
        }
    }

    fn body(self, ctx: &mut Ctx) -> Result<Body> {
        match self {
            Kind::Alive => alive::run(ctx),
            Kind::Crashed => crashed::run(ctx),
            Kind::Rebooted => rebooted::run(ctx),
            Kind::Unreachable => unreachable::run(ctx),
            Kind::FirewallIdleReset => firewall::run(ctx),
            Kind::ControlNoKeepalive => no_keepalive::run(ctx),
            Kind::ControlRto => rto::run(ctx),
            Kind::LocalDrop => local_drop::run(ctx),
            Kind::Storm => storm::run(ctx),
        }
    }
}

/// Settings shared by all scenarios of a run.
pub struct Env {
    pub ip_bin: String,
    pub nft_bin: String,
    pub nstat_bin: String,
    pub mode: String,
    /// `kat<pid>`: namespace names are unique per run.
    pub prefix: String,
    /// The daemon under test, for scenarios that start one of their own or run its `sockets`
    /// subcommand; None with --no-daemon.
    pub daemon_bin: Option<std::path::PathBuf>,
    pub daemon_args: Vec<String>,
    pub hook_mode: String,
}

/// An open client/server connection; the harness closes it once the scenario is over.
pub struct Conn {
    pub client: TcpStream,
    pub server: TcpStream,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub ka: Option<Keepalive>,
    pub last_recv: Stamp,
}

impl Conn {
    pub fn flow(&self, label: &'static str, expect: Expect) -> Flow {
        Flow {
            label,
            local: self.local,
            peer: self.peer,
            ka: self.ka,
            last_recv: self.last_recv,
            expect,
        }
    }
}

/// A scenario's result: its flows with expectations, and the exact client-namespace counter
/// deltas the kernel must show.
pub struct Body {
    pub flows: Vec<Flow>,
    pub conns: Vec<Conn>,
    pub nstat: Vec<(&'static str, u64)>,
    pub app_detect: Option<f64>,
    /// Check the identity over every event of the client namespace, not per flow (the storm:
    /// too many connections to list as flows).
    pub whole_namespace: bool,
}

pub struct Ctx<'a> {
    pub topo: &'a Topology,
    pub nft: Nft,
    listener: TcpListener,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

impl Ctx<'_> {
    /// Connects client → server, does one round trip and returns the idle connection.
    pub fn open(&mut self, ka: Option<Keepalive>) -> Result<Conn> {
        let dst = self.listener.local_addr()?;
        let t = Stamp::now();
        let mut client = sock::connect(&self.topo.client, dst, ka)?;
        // A retransmitted SYN (≥ 1 s) would inflate the RTT estimate and shift RTO timings.
        let took = t.secs_until(Stamp::now());
        self.check(took < 0.5, || {
            format!("handshake took {took:.2}s: SYN was retransmitted")
        });
        let mut server = sock::accept(&self.listener, Duration::from_secs(5))?;
        let last_recv = sock::exchange(&mut client, &mut server)?;
        let local = client.local_addr()?;
        let want = self.topo.client_addr();
        self.check(local.ip() == want, || {
            format!("client bound to {local}, expected {want}")
        });
        Ok(Conn {
            local,
            peer: client.peer_addr()?,
            client,
            server,
            ka,
            last_recv,
        })
    }

    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(msg());
        }
    }

    /// Installs a path-breaking rule and checks it went in before the first probe could leave,
    /// otherwise the scenario would silently test something else.
    pub fn break_path(&mut self, rules: &[String], conn: &Conn) -> Result<()> {
        self.nft.apply(rules)?;
        let late = conn.last_recv.secs_until(Stamp::now());
        let idle = conn.ka.map_or(1.0, |k| f64::from(k.idle));
        self.check(late < idle - 0.2, || {
            format!("rule installed {late:.2}s after last packet: too late")
        });
        Ok(())
    }

    /// Checks the application saw `errno` (or, with `None`, nothing) and, for an error, that it
    /// arrived within `window` seconds of `since`. Returns the measured seconds.
    pub fn expect_app(
        &mut self,
        label: &str,
        got: Outcome,
        want: Option<i32>,
        since: Stamp,
        window: (f64, f64),
    ) -> Option<f64> {
        match (got, want) {
            (Outcome::Quiet, None) => None,
            (Outcome::Error { errno, at }, Some(w)) => {
                let secs = since.secs_until(at);
                self.notes.push(format!(
                    "{label}: app {} after {secs:.3}s",
                    sock::errno_name(errno)
                ));
                self.check(errno == w, || {
                    format!(
                        "{label}: app saw {} not {}",
                        sock::errno_name(errno),
                        sock::errno_name(w)
                    )
                });
                self.check(secs >= window.0 && secs <= window.1, || {
                    format!(
                        "{label}: app error after {secs:.2}s, expected {:.2}..{:.2}s",
                        window.0, window.1
                    )
                });
                Some(secs)
            }
            (got, want) => {
                let want = want.map_or("no error".to_owned(), sock::errno_name);
                self.failures.push(format!(
                    "{label}: app saw {}, expected {want}",
                    got.describe(since)
                ));
                None
            }
        }
    }

    /// Packet count of an nft rule (by comment), recorded as a note and returned.
    pub fn rule_hits(&mut self, comment: &str) -> Result<u64> {
        let hits = self
            .nft
            .counters()?
            .get(comment)
            .copied()
            .with_context(|| format!("nft rule {comment} missing"))?;
        self.notes.push(format!("nft {comment}={hits}"));
        Ok(hits)
    }
}

/// Runs one scenario for one family. Every error becomes a failure line; the topology is
/// deleted on every path (Drop), before the next scenario starts.
pub fn run(kind: Kind, family: Family, seq: usize, env: &Env, daemon: Option<&mut Daemon>) -> Line {
    let mut line = Line::new(kind.name(), family.name(), &env.mode);
    if let Err(e) = run_inner(kind, family, seq, env, daemon, &mut line) {
        line.failures.push(format!("{e:#}"));
    }
    line
}

fn run_inner(
    kind: Kind,
    family: Family,
    seq: usize,
    env: &Env,
    daemon: Option<&mut Daemon>,
    line: &mut Line,
) -> Result<()> {
    let topo = Topology::create(&env.ip_bin, &format!("{}-{seq}", env.prefix), family)?;
    let listener = sock::listen(&topo.server, topo.server_addr())?;
    let nft = Nft {
        ip_bin: env.ip_bin.clone(),
        nft_bin: env.nft_bin.clone(),
        ns: topo.router.clone(),
    };
    let mut ctx = Ctx {
        topo: &topo,
        nft,
        listener,
        failures: Vec::new(),
        notes: Vec::new(),
    };
    // Failures found before an error stay in the report: they often explain the error.
    let result = measure(kind, env, &mut ctx, daemon, line);
    line.failures.append(&mut ctx.failures);
    line.notes.append(&mut ctx.notes);
    result
}

fn measure(
    kind: Kind,
    env: &Env,
    ctx: &mut Ctx,
    daemon: Option<&mut Daemon>,
    line: &mut Line,
) -> Result<()> {
    let topo = ctx.topo;
    let start = match &daemon {
        Some(d) => Some(d.snapshot()?),
        None => None,
    };
    let before = Counters::read(&env.ip_bin, &env.nstat_bin, &topo.client)?;
    let body = kind.body(ctx)?;

    // End every flow before reading counters, so nothing can still add a probe afterwards:
    // open the path again, close the client normally, abort the server side.
    ctx.nft.flush()?;
    for c in body.conns {
        drop(c.client);
        sock::abort(c.server);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = Counters::read(&env.ip_bin, &env.nstat_bin, &topo.client)?;

    let ka_delta = before.delta(&after, "TcpExtTCPKeepAlive")?;
    line.nstat_keepalive = Some(ka_delta);
    line.detect = body.app_detect;
    let mut deltas = Vec::new();
    for (name, want) in &body.nstat {
        let got = before.delta(&after, name)?;
        deltas.push(format!("{name}+{got}"));
        ctx.check(got == *want, || {
            format!("nstat {name} delta {got}, expected {want}")
        });
    }
    ctx.notes.push(format!("nstat {}", deltas.join(" ")));

    if let (Some(d), Some(start)) = (daemon, start) {
        let inodes = [
            topo.inode(&topo.client)?,
            topo.inode(&topo.router)?,
            topo.inode(&topo.server)?,
        ];
        let outcome = verify::daemon(
            d,
            start,
            &body.flows,
            inodes,
            ka_delta,
            body.whole_namespace,
            // The kprobe rung's runs can be skipped by the kernel (docs/unseen-probes.md).
            body.whole_namespace && env.hook_mode == "kprobe",
        )?;
        line.probes = Some(outcome.probes);
        line.detect = outcome.detect;
        ctx.failures.extend(outcome.failures);
        ctx.notes.extend(outcome.notes);
    }
    Ok(())
}
