//! The inventory group: programs nobody on this project wrote (python3, socat, curl,
//! redis-server) set keepalive options in test namespaces, and the daemon's `/sockets`, its
//! `sockets` subcommand, its `settings` events and its inventory metrics must report exactly
//! what they set.

mod attribution;
mod cgroups;
mod clients;
mod idle;
mod lifecycle;
mod obs;
mod owner_fork;
mod path;
mod proc;
mod redis;
mod reuse;
mod risk;
mod settings_events;
mod table;
mod view;

use crate::cmd;
use crate::daemon::Daemon;
use crate::event::Event;
use crate::report::Line;
use crate::scenarios::Env;
use crate::topology::{Family, Topology};
use anyhow::{Context, Result};
use obs::{Found, Obs};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use view::{Key, Want};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SettingsPython,
    SettingsSocat,
    SettingsCurl,
    SettingsRedis,
    Preexisting,
    Sysctl,
    Risk,
    Attribution,
    OwnerFork,
    PathTimeout2,
    PathTimeout5,
}

pub const ALL: [Kind; 11] = [
    Kind::SettingsPython,
    Kind::SettingsSocat,
    Kind::SettingsCurl,
    Kind::SettingsRedis,
    Kind::Preexisting,
    Kind::Sysctl,
    Kind::Risk,
    Kind::Attribution,
    Kind::OwnerFork,
    Kind::PathTimeout2,
    Kind::PathTimeout5,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::SettingsPython => "settings-python",
            Kind::SettingsSocat => "settings-socat",
            Kind::SettingsCurl => "settings-curl",
            Kind::SettingsRedis => "settings-redis",
            Kind::Preexisting => "inventory-preexisting",
            Kind::Sysctl => "inventory-sysctl",
            Kind::Risk => "inventory-risk",
            Kind::Attribution => "attribution",
            Kind::OwnerFork => "owner-postgres",
            Kind::PathTimeout2 => "path-timeout-2s",
            Kind::PathTimeout5 => "path-timeout-5s",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::SettingsPython => {
                "python3 sets keepalive 13/6/4 + user timeout 20 s after connect: exact /sockets, settings events"
            }
            Kind::SettingsSocat => {
                "socat keepalive,keepidle=11,keepintvl=4,keepcnt=5: exact /sockets and `sockets` table"
            }
            Kind::SettingsCurl => {
                "curl --keepalive-time 17 to a server across the router: idle 17, intvl 17"
            }
            Kind::SettingsRedis => {
                "redis-server --tcp-keepalive 7 sets 7/2/3 on accepted sockets: exact /sockets, events, table"
            }
            Kind::Preexisting => {
                "sockets opened before a second daemon starts are inventoried with exact settings"
            }
            Kind::Sysctl => {
                "tcp_keepalive_time=600 in a namespace reaches sockets using the default within 1 s"
            }
            Kind::OwnerFork => {
                "PostgreSQL's postmaster accepts, forks a backend, closes its copy: /sockets names the backend"
            }
            Kind::Attribution => {
                "redis-server in a systemd unit, socat in a docker scope, a python pod: unit, container, pod, role, process in /sockets, events, deaths and /metrics"
            }
            Kind::Risk => {
                "second daemon with --idle-budget 300s: at_risk flags, filters, `sockets --at-risk`, metrics"
            }
            Kind::PathTimeout2 | Kind::PathTimeout5 => {
                "router forgets flows after 2 s / 5 s: learned bracket holds and narrows, no-keepalive flow exposed before its write is reset, --advise"
            }
        }
    }

    /// The program the scenario drives; the scenario is skipped where it is not installed.
    fn tool(self) -> &'static str {
        match self {
            Kind::SettingsPython => "python3",
            Kind::SettingsCurl => "curl",
            Kind::SettingsRedis | Kind::Attribution => "redis-server",
            Kind::OwnerFork => "psql",
            Kind::SettingsSocat
            | Kind::Preexisting
            | Kind::Sysctl
            | Kind::Risk
            | Kind::PathTimeout2
            | Kind::PathTimeout5 => "socat",
        }
    }
}

pub struct Ctx<'a> {
    pub topo: &'a Topology,
    pub env: &'a Env,
    pub daemon_bin: &'a Path,
    pub tool: PathBuf,
    /// The daemon shared by the whole suite.
    pub main: &'a mut Daemon,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

impl Ctx<'_> {
    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(msg());
        }
    }

    /// Waits until `keys` are no longer listed (see [`Obs::gone`]). When they stay, the notes
    /// also get what the kernel itself still has in both namespaces: a daemon that missed a
    /// close and a socket that never closed fail alike, and only `ss` tells them apart.
    pub fn gone(&mut self, label: &str, obs: &Obs, keys: &[Key], since: Instant) -> Result<()> {
        let found = obs.gone(keys, since)?;
        if !found.0.is_empty() {
            for ns in [&self.topo.client, &self.topo.server] {
                let args = ["netns", "exec", ns.as_str(), "ss", "-tanoH"];
                let ss =
                    cmd::run(&self.env.ip_bin, &args, None).unwrap_or_else(|e| format!("{e:#}"));
                let ss = ss.trim().replace('\n', " | ");
                self.notes
                    .push(format!("{label}: kernel sockets in {ns}: {ss}"));
            }
        }
        self.record(label, found);
        Ok(())
    }

    /// Records `(failures, notes)` from a check, each prefixed with the socket's label.
    pub fn record(&mut self, label: &str, found: (Vec<String>, Vec<String>)) {
        self.failures
            .extend(found.0.into_iter().map(|f| format!("{label}: {f}")));
        self.notes
            .extend(found.1.into_iter().map(|n| format!("{label}: {n}")));
    }

    pub fn main_obs(&self) -> Obs {
        Obs {
            addr: self.main.addr,
            budget_s: budget(&self.env.daemon_args),
            bin: self.daemon_bin.to_owned(),
        }
    }

    pub fn ino(&self, ns: &str) -> Result<u64> {
        self.topo.inode(ns)
    }

    /// A listener on the server address, port chosen by the kernel.
    pub fn listen(&self) -> Result<TcpListener> {
        crate::sock::listen(&self.topo.server, self.topo.server_addr())
    }

    /// A second daemon (the user's daemon arguments plus `extra`), stopped when dropped.
    pub fn start_daemon(&self, extra: &[&str], tag: &str) -> Result<(Daemon, Obs)> {
        let mut args = self.env.daemon_args.clone();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let tag = format!("{tag}-{}", self.topo.family.name());
        let d = Daemon::start(self.daemon_bin, &self.env.hook_mode, &args, &tag)?;
        let obs = Obs {
            addr: d.addr,
            budget_s: budget(&args),
            bin: self.daemon_bin.to_owned(),
        };
        Ok((d, obs))
    }
}

/// The daemon's --idle-budget among `args` in seconds (the last one wins), else its default.
fn budget(args: &[String]) -> u32 {
    let mut b = 350;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = match a.strip_prefix("--idle-budget") {
            Some("") => it.next().map(String::as_str),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        };
        if let Some(v) = v {
            let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
            let mult = match unit {
                "m" => 60,
                "h" => 3600,
                _ => 1,
            };
            b = n.parse::<u32>().map_or(b, |n| n * mult);
        }
    }
    b
}

/// The `settings` events the daemon printed since event number `from` for one socket, once
/// the last of them carries `want` (the stdout reader may trail `/sockets` by a moment).
/// With `count`, exactly that many are required (one per setsockopt that changed the config).
pub fn settings_events(
    d: &Daemon,
    from: usize,
    key: Key,
    want: &Want,
    count: Option<usize>,
) -> Found {
    let deadline = Instant::now() + Duration::from_secs(2);
    let events = loop {
        let evs: Vec<Event> = d
            .received(from..d.received_len())
            .into_iter()
            .filter_map(|r| r.event.ok())
            .filter(|e| e.event == "settings" && key.is_event(e))
            .collect();
        let done = evs
            .last()
            .is_some_and(|e| e.keepalive.as_ref() == Some(&want.cfg()));
        if done || Instant::now() > deadline || (count == Some(0) && evs.is_empty()) {
            break evs;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let refs: Vec<&Event> = events.iter().collect();
    let mut fails = settings_events::check_settings(&refs, want, count.is_some_and(|n| n > 0));
    if let Some(n) = count.filter(|n| *n != events.len()) {
        fails.push(format!("{} settings events, expected {n}", events.len()));
    }
    let unnamed = events.iter().filter(|e| e.pid.is_none()).count();
    let note = format!(
        "{} settings events ({unnamed} without pid/comm)",
        events.len()
    );
    (fails, vec![note])
}

/// Writes a keepalive sysctl of namespace `ns` the way `sysctl -w` does (a write to
/// /proc/sys/net/ipv4/… from inside the namespace), without needing the sysctl binary.
pub fn set_ns_sysctl(ns: &str, name: &str, value: u32) -> Result<()> {
    crate::topology::write_sysctl(ns, &format!("net/ipv4/{name}"), &value.to_string())
}

/// The runner's own pid and comm: the server side of most scenarios is the runner itself.
pub fn runner() -> (u32, String) {
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    (std::process::id(), comm.trim_end().to_owned())
}

pub fn run(kind: Kind, family: Family, seq: usize, env: &Env, daemon: Option<&mut Daemon>) -> Line {
    let mut line = Line::new(kind.name(), family.name(), &env.mode);
    let (Some(main), Some(bin)) = (daemon, env.daemon_bin.as_deref()) else {
        line.skipped =
            Some("checks the daemon's inventory: nothing to run with --no-daemon".into());
        return line;
    };
    let Some(tool) = proc::find(kind.tool()) else {
        line.skipped = Some(format!("{} not installed", kind.tool()));
        return line;
    };
    if let Err(e) = run_inner(kind, family, seq, env, main, bin, tool, &mut line) {
        line.failures.push(format!("{e:#}"));
    }
    line
}

#[allow(clippy::too_many_arguments)]
fn run_inner(
    kind: Kind,
    family: Family,
    seq: usize,
    env: &Env,
    main: &mut Daemon,
    daemon_bin: &Path,
    tool: PathBuf,
    line: &mut Line,
) -> Result<()> {
    let topo = Topology::create(&env.ip_bin, &format!("{}-{seq}", env.prefix), family)?;
    let mut ctx = Ctx {
        topo: &topo,
        env,
        daemon_bin,
        tool,
        main,
        failures: Vec::new(),
        notes: Vec::new(),
    };
    let result = match kind {
        Kind::SettingsPython => clients::python(&mut ctx),
        Kind::SettingsSocat => clients::socat(&mut ctx),
        Kind::SettingsCurl => clients::curl(&mut ctx),
        Kind::SettingsRedis => redis::run(&mut ctx),
        Kind::Preexisting => lifecycle::preexisting(&mut ctx),
        Kind::Sysctl => lifecycle::sysctl(&mut ctx),
        Kind::Risk => risk::run(&mut ctx),
        Kind::Attribution => attribution::run(&mut ctx),
        Kind::OwnerFork => owner_fork::run(&mut ctx),
        Kind::PathTimeout2 => path::run(&mut ctx, 2),
        Kind::PathTimeout5 => path::run(&mut ctx, 5),
    };
    if let Some(status) = ctx.main.exited() {
        ctx.failures.push(format!(
            "shared daemon exited ({status}): {}",
            ctx.main.stderr_tail(10)
        ));
    }
    // Failures found before an error stay in the report: they often explain the error.
    line.failures.append(&mut ctx.failures);
    line.notes.append(&mut ctx.notes);
    result.context(kind.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_follows_the_daemon_arguments() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(budget(&[]), 350);
        assert_eq!(budget(&args(&["--idle-budget", "300s"])), 300);
        assert_eq!(budget(&args(&["--idle-budget=5m", "--json"])), 300);
        assert_eq!(
            budget(&args(&["--idle-budget", "1h", "--idle-budget", "90"])),
            90
        );
    }
}
