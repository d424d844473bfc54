//! The image run on this host's kernel the way deploy/kubernetes/daemonset.yaml runs it: the
//! same capabilities (all others dropped), host PID namespace, own network namespace,
//! read-only root, no_new_privs, the runtime's default seccomp profile, the DaemonSet's host
//! mounts (those present here) and the ConfigMap's config.toml. Then /healthz, `promtool check
//! metrics`, every hook attached, the host's network namespace watched from inside the
//! container's own, the daemon's capabilities after the drop; and after `podman stop`, none of
//! the programs and links it held is left in the kernel.
//!
//! Podman gets its own storage under target/podman (vfs: a copy of a 4 MB layer, and no
//! overlay mount that a nested or unusual file system could refuse) and the cgroupfs manager
//! and file event log, which need no systemd. A host that cannot start containers at all is
//! reported as skipped with podman's own error; anything after the container starts is a
//! failure of ours.
use std::{
    collections::BTreeSet,
    fs,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{Built, PORT, Written, pod_flags::DaemonSetRun};
use crate::{
    exec::{display, is_root, output},
    setup,
};

const TOOLS: &[(&str, &str)] = &[
    ("podman", "podman"),
    ("runc", "runc"),
    ("nsenter", "util-linux"),
    ("curl", "curl"),
    ("promtool", "prometheus"),
    ("bpftool", "bpftool"),
];
/// Podman's exit code for its own failures (as opposed to 126/127: the image's command).
const PODMAN_OWN_ERROR: i32 = 125;
/// The hooks the daemon exports a mode for; each must be on exactly one.
const HOOKS: &[&str] = &[
    "keepalive_timer",
    "probe_sent",
    "death",
    "state_change",
    "reset",
];

pub enum Outcome {
    /// What was checked, in one line.
    Passed(String),
    /// Why the host cannot run the container (podman's measured error).
    Skipped(String),
}

pub fn check(b: &Built, w: &Written) -> Result<Outcome> {
    if !is_root() {
        return Ok(Outcome::Skipped(
            "needs root: BPF programs and the host PID namespace".into(),
        ));
    }
    setup::install_missing("image", TOOLS)?;
    let spec = DaemonSetRun::from_manifests()?;
    let podman = Podman::new()?;
    let id = podman.pull(b, w)?;
    // The image's own version output, under the DaemonSet's restrictions: a host that cannot
    // start this container stops here, with the runtime's words.
    let probe = podman
        .cmd()
        .args(["run", "--rm"])
        .args(spec.flags(&podman.dir)?)
        .arg(&id)
        .arg("--version")
        .output()?;
    let err = String::from_utf8_lossy(&probe.stderr).trim().to_owned();
    if probe.status.code() == Some(PODMAN_OWN_ERROR) {
        return Ok(Outcome::Skipped(
            err.lines().last().unwrap_or("podman failed").to_owned(),
        ));
    }
    let version = String::from_utf8_lossy(&probe.stdout);
    ensure!(
        probe.status.success() && version.trim() == format!("keepalive-daemon {}", b.version),
        "the image's `--version` printed {:?} ({}): {err}",
        version.trim(),
        probe.status
    );

    let name = format!("ka-xtask-{}", std::process::id());
    let mut run = podman.cmd();
    run.args(["run", "-d", "--name", &name])
        .args(spec.flags(&podman.dir)?)
        .arg(&id)
        .args(&spec.args);
    eprintln!("+ {}", display(&run));
    let started = run.output()?;
    ensure!(
        started.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&started.stderr).trim()
    );
    let container = Running {
        podman: &podman,
        name: name.clone(),
    };
    let result = container.checks(b);
    let logs = podman
        .cmd()
        .args(["logs", &name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
    let stopped = container.stop_and_check_detached(result.as_ref().ok().map(|r| &r.held));
    // vfs keeps a full copy per image: do not let every build's accumulate under target/.
    let _ = podman.cmd().args(["rmi", "--force", &id]).output();
    match (result, stopped) {
        (Ok(r), Ok(())) => Ok(Outcome::Passed(r.summary)),
        (Err(e), _) | (Ok(_), Err(e)) => {
            let tail: Vec<String> = logs
                .unwrap_or_default()
                .lines()
                .rev()
                .take(15)
                .map(str::to_owned)
                .collect();
            let tail: Vec<String> = tail.into_iter().rev().collect();
            bail!("{e:#}\ncontainer log (last lines):\n{}", tail.join("\n"))
        }
    }
}

/// Podman's runtime state. Its UNIX sockets' paths must stay short, hence not under target/.
const RUNROOT: &str = "/run/ka-xtask-podman";

/// Podman with this task's own storage and the settings a host without systemd needs.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new() -> Result<Self> {
        let dir = std::env::current_dir()?.join("target/podman");
        // A fresh store each run: podman records the store's path in its database and refuses
        // the store once the checkout is reached by another path (moved, or a symlinked
        // target/), and a copy of one 4 MB layer is all a fresh store costs.
        for stale in [dir.join("storage"), PathBuf::from(RUNROOT)] {
            if stale.exists() {
                fs::remove_dir_all(&stale)?;
            }
        }
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("storage"))
            .args(["--runroot", RUNROOT])
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file", "--runtime", "runc"]);
        c
    }

    /// Copies the image from the layout into podman's storage; returns its id, checked to be
    /// the config digest we wrote (podman runs exactly our image).
    fn pull(&self, b: &Built, w: &Written) -> Result<String> {
        let id = output(self.cmd().args(["pull", "--quiet", &b.reference(w)]))?
            .trim()
            .to_owned();
        ensure!(
            format!("sha256:{id}") == w.config.digest,
            "podman pulled image {id}, expected the config digest {}",
            w.config.digest
        );
        Ok(id)
    }
}

struct Running<'a> {
    podman: &'a Podman,
    name: String,
}

struct Checked {
    summary: String,
    /// Program and link ids the daemon held while running.
    held: (BTreeSet<u64>, BTreeSet<u64>),
}

impl Running<'_> {
    fn pid(&self) -> Result<u32> {
        let pid =
            output(
                self.podman
                    .cmd()
                    .args(["inspect", "--format", "{{.State.Pid}}", &self.name]),
            )?;
        pid.trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .with_context(|| format!("container not running (pid {:?})", pid.trim()))
    }

    /// GET `path` from inside the container's network namespace, as a pod's peer would.
    fn get(&self, pid: u32, path: &str) -> Result<String> {
        output(
            Command::new("nsenter")
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .args(["curl", "-sSf", "--max-time", "10"])
                .arg(format!("http://127.0.0.1:{PORT}{path}")),
        )
    }

    fn checks(&self, b: &Built) -> Result<Checked> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid = loop {
            let pid = self.pid()?;
            if self.get(pid, "/healthz").is_ok_and(|h| h.trim() == "ok") {
                break pid;
            }
            ensure!(
                Instant::now() < deadline,
                "/healthz did not answer ok within 30 s"
            );
            thread::sleep(Duration::from_millis(300));
        };
        let metrics = self.get(pid, "/metrics")?;
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(
            promtool.stdin.as_mut().context("promtool stdin")?,
            metrics.as_bytes(),
        )?;
        let lint = promtool.wait_with_output()?;
        ensure!(
            lint.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&lint.stdout).trim(),
            String::from_utf8_lossy(&lint.stderr).trim()
        );
        let mut modes = Vec::new();
        for hook in HOOKS {
            let on: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with(&format!("keepalive_hook_mode{{hook=\"{hook}\","))
                        && l.ends_with(" 1")
                })
                .collect();
            ensure!(
                on.len() == 1,
                "hook {hook}: {} modes at 1 in keepalive_hook_mode: {on:?}",
                on.len()
            );
            modes.push(format!(
                "{hook}={}",
                on[0]
                    .split("mode=\"")
                    .nth(1)
                    .and_then(|m| m.split('"').next())
                    .unwrap_or("?")
            ));
        }
        let build = format!("keepalive_build_info{{version=\"{}\"}} 1", b.version);
        ensure!(
            metrics.lines().any(|l| l == build),
            "no `{build}` in /metrics"
        );
        // Our own namespace is the host's here: the daemon in the container's namespace must
        // watch it through /proc (why the DaemonSet needs no hostNetwork).
        let host_ns = fs::read_link("/proc/self/ns/net")?
            .to_string_lossy()
            .trim_start_matches("net:[")
            .trim_end_matches(']')
            .to_owned();
        let own_ns = fs::read_link(format!("/proc/{pid}/ns/net"))?
            .to_string_lossy()
            .into_owned();
        ensure!(
            !own_ns.contains(&host_ns),
            "the container shares the host's network namespace"
        );
        ensure!(
            metrics.contains(&format!("keepalive_namespace_default{{netns=\"{host_ns}\"")),
            "the host's network namespace {host_ns} is not among keepalive_namespace_default's"
        );
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(str::trim)
            .unwrap_or("?")
            .to_owned();
        // CAP_DAC_READ_SEARCH, CAP_NET_RAW, CAP_SYS_PTRACE, CAP_SYS_ADMIN: kept after attaching.
        ensure!(
            eff == "0000000000282004",
            "the daemon's CapEff is {eff}, expected the four kept (0000000000282004)"
        );
        let held = held_ids(pid)?;
        ensure!(
            !held.0.is_empty(),
            "the daemon holds no BPF program: nothing to check the detach against"
        );
        Ok(Checked {
            summary: format!(
                "healthz ok, promtool clean, hooks {}, host netns {host_ns} watched from {own_ns}, CapEff {eff}, {} programs and {} links held",
                modes.join(" "),
                held.0.len(),
                held.1.len()
            ),
            held,
        })
    }

    /// `podman stop` (SIGTERM); the daemon must exit 0 and leave none of its ids in the kernel.
    fn stop_and_check_detached(self, held: Option<&(BTreeSet<u64>, BTreeSet<u64>)>) -> Result<()> {
        let stop = output(self.podman.cmd().args(["stop", "--time", "10", &self.name]));
        let code = output(self.podman.cmd().args([
            "inspect",
            "--format",
            "{{.State.ExitCode}}",
            &self.name,
        ]));
        let _ = self
            .podman
            .cmd()
            .args(["rm", "--force", &self.name])
            .output();
        stop?;
        ensure!(code?.trim() == "0", "the daemon did not exit 0 on SIGTERM");
        let Some((progs, links)) = held else {
            return Ok(());
        };
        // Programs are freed after an RCU grace period: allow a moment.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left_progs: Vec<u64> = bpftool_ids("prog")?.intersection(progs).copied().collect();
            let left_links: Vec<u64> = bpftool_ids("link")?.intersection(links).copied().collect();
            if left_progs.is_empty() && left_links.is_empty() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "after the container stopped, programs {left_progs:?} and links {left_links:?} it held are still in the kernel"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Program and link ids the process holds descriptors of (its /proc/<pid>/fdinfo).
fn held_ids(pid: u32) -> Result<(BTreeSet<u64>, BTreeSet<u64>)> {
    let (mut progs, mut links) = (BTreeSet::new(), BTreeSet::new());
    for e in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = fs::read_to_string(e?.path()) else {
            continue;
        };
        for l in text.lines() {
            if let Some(id) = l
                .strip_prefix("prog_id:")
                .and_then(|v| v.trim().parse().ok())
            {
                progs.insert(id);
            }
            if let Some(id) = l
                .strip_prefix("link_id:")
                .and_then(|v| v.trim().parse().ok())
            {
                links.insert(id);
            }
        }
    }
    Ok((progs, links))
}

/// Ids of every loaded program or link (`bpftool -j prog|link show`).
fn bpftool_ids(what: &str) -> Result<BTreeSet<u64>> {
    let out = output(Command::new("bpftool").args(["-j", what, "show"]))?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&out)
        .with_context(|| format!("bpftool {what} show printed no JSON"))?;
    Ok(list.iter().filter_map(|p| p["id"].as_u64()).collect())
}
