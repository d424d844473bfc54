//! Section 1b, kernel cost of the fentry and kprobe rungs, measured inside the Debian 6.1 guest
//! that `cargo xtask bench` boots (the lockdown host refuses both rungs, see section 1).
//!
//! Guest side: the hidden `kcost-vm` subcommand, started by keepalive-vminit once per hook mode
//! (`kat.bench=1`). It does what section 1 does on the host, on the rung's own hooks: the daemon
//! forced to `--hook-mode M`, an empty twin of each of its programs on the same function (loaded
//! before and after the daemon's, because programs on one hook run in attach order and the first
//! pays for cold caches), statistics from kernel.bpf_stats_enabled, and a load that makes every
//! hook fire. It prints one `kcost-vm key=value…` line per program, which xtask collects from
//! the serial console; `section` (host side) turns those lines into the report's section 1b.
//!
//! The guest has no bpftool, so run_time_ns / run_cnt come from BPF_OBJ_GET_INFO_BY_FD, through
//! aya's `loaded_programs`.
//!
//! Here the guest's measurement; `hooks` names the programs compared, `programs` loads the twins
//! and reads the statistics, `section` is the host's write-up.
use std::{collections::HashMap, path::PathBuf};

use anyhow::{Result, bail};

use super::stats::{self, per_run};
use crate::{
    daemon::Daemon,
    holder::{self, HoldOpts},
    noise::{NoiseOpts, NoiseProc},
    sys,
};

mod hooks;
mod programs;
mod section;

use hooks::PAIRS;
use programs::{kernel_name, load_twins, prog_stats, window};
pub use section::section;

#[derive(clap::Args, Debug)]
pub struct VmOpts {
    /// The daemon binary (in the guest: /bin/keepalive-daemon).
    #[arg(long)]
    pub daemon: PathBuf,
    /// Rung to force: fentry or kprobe.
    #[arg(long)]
    pub hook_mode: String,
    #[arg(long, default_value_t = 3)]
    pub windows: usize,
    /// Seconds per window.
    #[arg(long, default_value_t = 6.0)]
    pub secs: f64,
    /// Keepalive storm size: TCG runs the guest some ten times slower than the host, so a few
    /// hundred connections (each end probing once a second) are plenty.
    #[arg(long, default_value_t = 300)]
    pub connections: usize,
}

pub fn run(o: VmOpts) -> Result<()> {
    if !PAIRS.iter().any(|p| p.0 == o.hook_mode) {
        bail!("--hook-mode {}: fentry or kprobe", o.hook_mode);
    }
    sys::raise_nofile();
    let mode = o.hook_mode.as_str();
    let _stats = sys::BpfStats::enable()?;
    let first = load_twins(mode)?;
    let log = std::env::temp_dir().join(format!("kcost-vm-daemon-{mode}.log"));
    let daemon = Daemon::start(&o.daemon, &["--hook-mode", mode], &log)?;
    let second = load_twins(mode)?;

    // The daemon's programs by the names the kernel kept (fdinfo says which ids it holds).
    let mut names: HashMap<String, Vec<u32>> = HashMap::new();
    for (id, (name, _)) in prog_stats(&sys::bpf_ids(daemon.pid(), "prog_id")) {
        names.entry(name).or_default().push(id);
    }
    for (name, id) in first.1.iter().chain(&second.1) {
        names.entry(name.to_string()).or_default().push(*id);
    }
    // Each copy alone too: on kretprobes especially, attach order changes what a program pays.
    let copy = |c: &[(&str, u32)], twin: &str| {
        c.iter()
            .filter(|(n, _)| *n == twin)
            .map(|(_, i)| *i)
            .collect::<Vec<u32>>()
    };
    let ids: Vec<u32> = names.values().flatten().copied().collect();

    // Load: the keepalive storm (idle = intvl = 1 in its namespace, both ends probing every
    // second: tcp_keepalive_timer and tcp_write_wakeup), a churn closing with RSTs (the peer's
    // tcp_reset calls tcp_done_with_error), and the host bench's noise, scaled down for TCG.
    let ns = sys::Netns::create(
        &format!("kab-vm-{}", std::process::id()),
        &sys::STORM_KEEPALIVE,
    )?;
    let storm = HoldOpts {
        netns: Some(ns.path()),
        keepalive: true,
        ..Default::default()
    };
    let holders = holder::spawn_many(&storm, o.connections)?;
    let churner = holder::Holder::spawn(&super::rst_churn(&storm, 20, 20))?;
    let noise = NoiseProc::spawn(&NoiseOpts {
        netns: Some(ns.path()),
        timer_threads: 2,
        setsockopts: 500,
    })?;
    sys::sleep_s(2.0);

    let windows: Vec<stats::Window> = (0..o.windows).map(|_| window(&ids, o.secs)).collect();
    drop((noise, churner, holders));

    for &(_, hook, _, _, ours, twin) in PAIRS.iter().filter(|p| p.0 == mode) {
        // The daemon holds one copy of each program: its runs a second are the rate of that one.
        let oi = names.get(kernel_name(ours)).cloned().unwrap_or_default();
        let ei = names.get(twin).cloned().unwrap_or_default();
        let per = |ids: &[u32]| per_run(&windows, ids);
        let ratio = stats::ratio(&windows, &oi, &ei);
        let rate = stats::rate(&windows, &oi);
        let runs: u64 = windows.iter().map(|w| w.sum(&oi).runs).sum();
        let empty_runs: u64 = windows.iter().map(|w| w.sum(&ei).runs).sum();
        // One line, no spaces inside values: xtask reads it off the serial console.
        println!(
            "kcost-vm mode={mode} hook={hook} prog={ours} empty={twin} ours_ns={:.1} empty_ns={:.1} ratio={ratio:.3} runs={runs} empty_runs={empty_runs} runs_per_s={rate:.1} empty_before_ns={:.1} empty_after_ns={:.1} windows={} secs={}",
            per(&oi),
            per(&ei),
            per(&copy(&first.1, twin)),
            per(&copy(&second.1, twin)),
            windows.len(),
            o.secs
        );
    }
    println!("kcost-vm-daemon {}", daemon.command);
    drop((second, first, daemon, ns));
    sys::remove_self_copy();
    Ok(())
}
