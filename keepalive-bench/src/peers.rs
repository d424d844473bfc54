//! Section 7, peers on the same sockets in the same run: `ss -tieo` polled every second, a bpftrace
//! script counting keepalive probes, and the daemon, all watching one namespace's sockets.
use std::{
    fs,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    Ctx, bpf,
    holder::{self, HoldOpts},
    report::{median, num},
    sys,
};

/// The script: a keepalive timer expiry is `timer_expire_entry` with the callback's address; a
/// probe went out if `icsk_probes_out` rose by the matching exit. Classic tracepoints only
/// (bpftrace 0.17 here; no kprobes on this kernel). Per-CPU state in maps keyed by `cpu`:
/// timer callbacks do not nest on a CPU.
fn script(ka_fn: u64, timer_off: u32, probes_off: u32) -> String {
    format!(
        "tracepoint:timer:timer_expire_entry\n/(uint64)args->function == {ka_fn:#x}/\n{{\n  \
         @sk[cpu] = (uint64)args->timer - {timer_off};\n  @before[cpu] = *(uint8 *)(@sk[cpu] + {probes_off});\n}}\n\
         tracepoint:timer:timer_expire_exit\n/@sk[cpu] != 0/\n{{\n  \
         if (*(uint8 *)(@sk[cpu] + {probes_off}) > @before[cpu]) {{ @probes = count(); }}\n  @sk[cpu] = 0;\n}}\n\
         END {{ clear(@sk); clear(@before); }}\n"
    )
}

/// One `ss -tieo` inside the namespace; its CPU time (user + system, from wait4's rusage).
fn ss_once(ns: &std::path::Path) -> Result<f64> {
    // Opened before the fork: between fork and exec only setns runs (async-signal-safe).
    let f = fs::File::open(ns).with_context(|| ns.display().to_string())?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let mut cmd = Command::new("ss");
    cmd.arg("-tieo").stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: setns on a descriptor that stays open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("ss")?;
    drop(f);
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: reaping our own child; `child` is not waited on by std afterwards.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
}

struct Row {
    label: String,
    ss_poll_ms: f64,
    ss_cpu: f64,
    daemon_cpu: f64,
    daemon_bpf: f64,
    bt_cpu: f64,
    bt_bpf: f64,
    bt_ns_per_run: f64,
    bt_probes: u64,
    daemon_probes: f64,
    /// CPU seconds the daemon used from its start to the window's (inventory walk, owners).
    startup_cpu_s: f64,
}

/// The window starts this long after the daemon: its last owner lookups for sockets that had
/// none run 8 s after they appeared (inventory/mod.rs `unowned`); what it spends before is a
/// one-time start-up cost, reported in its own column.
const SETTLE: Duration = Duration::from_secs(12);

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let conns = ctx.scale(5_000);
    let secs = if ctx.quick { 5.0 } else { 15.0 };
    let bt_path = crate::daemon::scratch_dir().join("keepalive-probes.bt");
    fs::write(
        &bt_path,
        script(
            ctx.ka_fn,
            ctx.offsets.keepalive_timer,
            ctx.offsets.icsk_probes_out,
        ),
    )?;
    let mut rows = Vec::new();
    let mut cmds = Vec::new();
    for (label, ns) in [
        ("quiet: Linux defaults, no probes", ctx.quiet_ns.path()),
        ("storm: idle = intvl = 1 s", ctx.storm_ns.path()),
    ] {
        let holders = holder::spawn_many(
            &HoldOpts {
                netns: Some(ns.clone()),
                keepalive: true,
                rate: 10_000,
                ..Default::default()
            },
            conns,
        )?;
        let d = ctx.start_daemon(&[], "peers")?;
        let started = Instant::now();
        let _stats = sys::BpfStats::enable()?;
        let out = crate::daemon::scratch_dir().join("bpftrace.out");
        let mut bt = sys::die_with_parent(&mut Command::new("bpftrace"))
            .arg(&bt_path)
            .stdout(fs::File::create(&out)?)
            .stderr(Stdio::null())
            .spawn()
            .context("bpftrace")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("Attaching")
        {
            if Instant::now() > deadline {
                bail!("bpftrace did not attach");
            }
            sys::sleep_s(0.2);
        }
        // Probes both saw, counted over bpftrace's whole life (its count starts at attach).
        let probes0 = d.metrics()?.sum("keepalive_probes_total", "");
        std::thread::sleep(
            SETTLE
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(3)),
        );
        let bt_ids = sys::bpf_ids(bt.id(), "prog_id");
        let ours = sys::bpf_ids(d.pid(), "prog_id");
        let (s0, dc0, bc0, t0) = (
            bpf::snapshot()?,
            d.cpu_ns(),
            sys::cpu_ns(bt.id())?,
            Instant::now(),
        );
        let mut polls = Vec::new();
        while t0.elapsed().as_secs_f64() < secs {
            let tick = Instant::now();
            polls.push(ss_once(&ns)?);
            if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        let (s1, dc1, bc1, dt) = (
            bpf::snapshot()?,
            d.cpu_ns(),
            sys::cpu_ns(bt.id())?,
            t0.elapsed().as_secs_f64(),
        );
        let sum = |ids: &[u32]| {
            ids.iter()
                .map(|&i| bpf::delta(&s0, &s1, i))
                .fold((0u64, 0u64), |(n, t), d| (n + d.runs, t + d.ns))
        };
        let (bt_runs, bt_ns) = sum(&bt_ids);
        let (_, our_ns) = sum(&ours);
        let probes1 = d.metrics()?.sum("keepalive_probes_total", "");
        // SAFETY: signalling our own child; SIGINT makes bpftrace print its maps and exit.
        unsafe { libc::kill(bt.id() as i32, libc::SIGINT) };
        let _ = bt.wait();
        let printed = fs::read_to_string(&out).unwrap_or_default();
        let bt_probes = printed
            .lines()
            .find_map(|l| l.strip_prefix("@probes: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if cmds.is_empty() {
            cmds.push(d.command.clone());
            cmds.push(format!("{}   # x{}", holders[0].command, holders.len()));
            cmds.push(format!(
                "bpftrace {}   # the script is printed below",
                bt_path.display()
            ));
            cmds.push("nsenter --net=/run/netns/<ns> ss -tieo > /dev/null   # once a second; CPU from wait4() rusage".into());
            cmds.push(format!("{}   # BPF time of the daemon's and bpftrace's programs (ids from /proc/<pid>/fdinfo)", bpf::PROG_SHOW));
        }
        rows.push(Row {
            label: label.into(),
            ss_poll_ms: median(&polls) * 1e3,
            ss_cpu: polls.iter().sum::<f64>() / dt,
            daemon_cpu: (dc1 - dc0) as f64 / 1e9 / dt,
            daemon_bpf: our_ns as f64 / 1e9 / dt,
            bt_cpu: (bc1 - bc0) as f64 / 1e9 / dt,
            bt_bpf: bt_ns as f64 / 1e9 / dt,
            bt_ns_per_run: if bt_runs > 0 {
                bt_ns as f64 / bt_runs as f64
            } else {
                f64::NAN
            },
            bt_probes,
            daemon_probes: probes1 - probes0,
            startup_cpu_s: dc0 as f64 / 1e9,
        });
        drop(d);
        drop(holders);
    }

    let pct = |x: f64| format!("{} %", num(x * 100.0));
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.label.clone(),
                format!("{} ms/poll, {}", num(r.ss_poll_ms), pct(r.ss_cpu)),
                format!("{} + {} BPF", pct(r.daemon_cpu), pct(r.daemon_bpf)),
                format!(
                    "{} + {} BPF ({} ns/run)",
                    pct(r.bt_cpu),
                    pct(r.bt_bpf),
                    num(r.bt_ns_per_run)
                ),
                format!("{} / {}", num(r.daemon_probes), r.bt_probes),
                format!("{}×", num((r.daemon_cpu + r.daemon_bpf) / r.ss_cpu)),
                format!("{} s", num(r.startup_cpu_s)),
            ]
        })
        .collect();
    let r = &mut ctx.report;
    r.h2("7. Peers: `ss -tieo` polling and bpftrace on the same sockets");
    r.p(&format!(
        "{} sockets ({conns} loopback connections, SO_KEEPALIVE on both ends) watched at once by the daemon, by a \
         bpftrace script counting keepalive probes, and by `ss -tieo` run once a second in their namespace, for \
         {secs:.0} s, starting {} s after the daemon (its start-up — a walk of every socket, then owner lookups \
         for sockets without one up to 8 s after they appear — is a one-time cost, in the last column as CPU \
         seconds from start to window). CPU as a share of one CPU: userspace (user + system time of the process) + the kernel time of \
         its BPF programs. ss reads every socket each poll (inet_diag), whatever happens to them; the daemon and \
         bpftrace pay per timer expiry and per event.",
        conns * 2,
        SETTLE.as_secs()
    ));
    r.table(
        &[
            "sockets",
            "ss -tieo every 1 s",
            "daemon",
            "bpftrace",
            "probes seen (daemon / bpftrace)",
            "daemon ÷ ss",
            "daemon start-up CPU",
        ],
        &table,
    );
    r.p(&format!("The bpftrace script (offsets from this kernel's BTF, callback address from /proc/kallsyms):\n\n```\n{}```", fs::read_to_string(&bt_path)?));
    if let [quiet, storm, ..] = &rows[..] {
        r.p(&format!(
            "**Reading it.** ss pays per socket per poll ({} ms a poll here), whatever the sockets do; the \
             daemon pays per event and a fixed background. Quiet, the daemon's {} is that background — the \
             namespace sysctl poll twice a second (a thread entering each namespace that has sockets; the paths \
             into them are kept between polls and looked for in /proc only when one goes stale, and every 10 s), \
             the ICMP watcher's scan of every /proc/<pid>/ns/net once a second, owner lookups — none of \
             which grows with sockets: a target stated per 10 k sockets is met with more sockets and missed with \
             fewer. In the storm every socket yields two events a second and the daemon's cost is per event \
             ({} of its CPU, userspace and BPF); ss would still see only one snapshot a second and none of the \
             probes, answers or their causes. bpftrace's script only counts (no event leaves the kernel), which is \
             why its BPF time per run is below the daemon's. *Proposed fix for the rest of the quiet background* \
             (`keepalive-daemon/src/kernel/netns.rs`, `ingest/icmp.rs`): discover namespaces with a BPF iterator, or from the \
             events' `netns` field and /run/netns (inotify), instead of scanning all of /proc every second.",
            num(quiet.ss_poll_ms),
            pct(quiet.daemon_cpu + quiet.daemon_bpf),
            pct(storm.daemon_cpu + storm.daemon_bpf)
        ));
    }
    r.commands(&cmds);
    for row in &rows {
        let ratio = (row.daemon_cpu + row.daemon_bpf) / row.ss_cpu;
        r.verdict(
            "7 peers",
            &format!(
                "daemon CPU ≤ 1/10 of ss polling, {} sockets, {}",
                conns * 2,
                row.label.split(':').next().unwrap_or("")
            ),
            format!("{}× ss", num(ratio)),
            ratio <= 0.1,
        );
    }
    Ok(())
}
