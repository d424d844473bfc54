//! Section 1, kernel cost per program: the daemon's programs next to empty ones on the same hooks, same
//! windows, from `bpftool -j prog show` run_time_ns / run_cnt with kernel.bpf_stats_enabled=1.
//!
//! Four conditions, each a few windows: *idle* (the machine's own background), *noise* (calls
//! our filters reject: other timers, other socket options), *storm* (keepalive probing plus a
//! connection churn, so every program emits events) and *storm + noise*. The first two give the
//! common path, which the 1.5× target is about; the storm gives the cost per event; the last two
//! together separate the entry program's cost on keepalive timers from that on other timers.
//!
//! Here the measurement; `hooks` names the programs compared, `report` writes the windows up as
//! the section's tables, `why` explains the misses with figures from the same run.
use std::collections::HashMap;

use anyhow::{Context as _, Result};

use super::stats;
use crate::{
    Ctx,
    bpf::{self, Delta, Empty},
    holder::{self, HoldOpts},
    noise::{NoiseOpts, NoiseProc},
    sys,
};

mod hooks;
mod report;
mod why;

/// One measurement window, with what the reference programs counted in it: keepalive timer
/// expirations and keepalive setsockopt calls anywhere on the host.
struct Window {
    runs: stats::Window,
    ka_timers: u64,
    ka_setsockopts: u64,
}

impl AsRef<stats::Window> for Window {
    fn as_ref(&self) -> &stats::Window {
        &self.runs
    }
}

fn window(empty: &Empty, ids: &[u32], secs: f64) -> Result<Window> {
    let (b, k0, s0) = (
        bpf::snapshot()?,
        empty.keepalive_timers(),
        empty.keepalive_setsockopts(),
    );
    let t = std::time::Instant::now();
    sys::sleep_s(secs);
    let (a, k1, s1) = (
        bpf::snapshot()?,
        empty.keepalive_timers(),
        empty.keepalive_setsockopts(),
    );
    let secs = t.elapsed().as_secs_f64();
    Ok(Window {
        runs: stats::Window {
            d: ids.iter().map(|&id| (id, bpf::delta(&b, &a, id))).collect(),
            secs,
        },
        ka_timers: k1 - k0,
        ka_setsockopts: s1 - s0,
    })
}

fn windows(empty: &Empty, ids: &[u32], n: usize, secs: f64) -> Result<Vec<Window>> {
    (0..n).map(|_| window(empty, ids, secs)).collect()
}

/// Windows in which no keepalive timer expired and no keepalive option was set anywhere on the
/// host: the daemon watches every namespace, so other work's keepalive activity would put event
/// costs into a common-path figure. Up to three tries per window wanted; (windows, discarded).
fn clean_windows(empty: &Empty, ids: &[u32], n: usize, secs: f64) -> Result<(Vec<Window>, usize)> {
    let (mut clean, mut dirty) = (Vec::new(), Vec::new());
    for _ in 0..3 * n {
        let w = window(empty, ids, secs)?;
        if w.ka_timers == 0 && w.ka_setsockopts == 0 {
            clean.push(w)
        } else {
            dirty.push(w)
        }
        if clean.len() == n {
            break;
        }
    }
    let discarded = dirty.len();
    if clean.is_empty() {
        // Nothing clean: report the contaminated windows rather than nothing (the text says so).
        return Ok((dirty, discarded));
    }
    Ok((clean, discarded))
}

/// What one run measured, for `report` and `why` to write up.
struct Measured {
    /// Program ids by name: the daemon's, and both copies of each comparison program.
    names: HashMap<String, Vec<u32>>,
    /// The machine's own background, and how many windows were discarded for keepalive work.
    idle: Vec<Window>,
    idle_dirty: usize,
    /// Calls the filters reject (the noise generator), and the windows discarded.
    noisy: Vec<Window>,
    noisy_dirty: usize,
    /// The keepalive storm and the RST churn: most runs emit an event.
    busy: Vec<Window>,
    /// The daemon's startup walk (`ka_iter_tcp`, once per socket) and the empty iterator's.
    iter_ours: Delta,
    iter_empty: Delta,
    reps: usize,
    secs: f64,
    storm_conns: usize,
    /// The commands the section lists.
    cmds: Vec<String>,
}

impl Measured {
    fn id(&self, name: &str) -> Option<Vec<u32>> {
        self.names.get(name).cloned()
    }
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let m = measure(ctx)?;
    report::write(&mut ctx.report, &m);
    Ok(())
}

fn measure(ctx: &Ctx) -> Result<Measured> {
    let _stats = sys::BpfStats::enable()?;
    let first = Empty::load(ctx.ka_fn, ctx.offsets.timer_function)?;
    // Statistics on before the daemon starts, so its one startup walk (iter/tcp) is counted.
    let daemon = ctx.start_daemon(&[], "kcost")?;
    let mut second = Empty::load(ctx.ka_fn, ctx.offsets.timer_function)?;
    let snap = bpf::snapshot()?;
    let mut names: HashMap<String, Vec<u32>> = HashMap::new();
    for (n, i) in bpf::programs_of(daemon.pid(), &snap).into_iter().chain(
        first
            .ids
            .iter()
            .chain(&second.ids)
            .map(|(n, i)| (n.to_string(), *i)),
    ) {
        names.entry(n).or_default().push(i);
    }
    let ids: Vec<u32> = names.values().flatten().copied().collect();
    names.get("filter_tmr_entry").context("filter program")?;

    // The startup walk: the daemon's iterator ran once per socket; run the empty one now.
    let before = bpf::snapshot()?;
    second.walk()?;
    let after = bpf::snapshot()?;
    let iter_ours = names
        .get("ka_iter_tcp")
        .and_then(|i| snap.get(&i[0]))
        .map(|p| Delta {
            runs: p.run_cnt,
            ns: p.run_time_ns,
        })
        .unwrap_or_default();
    let iter_empty = second
        .ids
        .iter()
        .find(|(n, _)| *n == "empty_iter_tcp")
        .map(|(_, i)| bpf::delta(&before, &after, *i))
        .unwrap_or_default();
    // The first copy counts keepalive expirations for the windows; the second stays attached.
    let empty = first;

    let (reps, secs) = (ctx.reps(), ctx.window() * 0.75);
    let noise_opts = NoiseOpts {
        netns: Some(ctx.quiet_ns.path()),
        timer_threads: 24,
        setsockopts: 10_000,
    };
    let (idle, idle_dirty) = clean_windows(&empty, &ids, reps, secs)?;
    let noise = NoiseProc::spawn(&noise_opts)?;
    sys::sleep_s(1.0);
    let (noisy, noisy_dirty) = clean_windows(&empty, &ids, reps, secs)?;
    let noise_cmd = noise.command.clone();
    drop(noise);

    let storm_conns = ctx.scale(5_000);
    let storm = HoldOpts {
        netns: Some(ctx.storm_ns.path()),
        keepalive: true,
        rate: 10_000,
        ..Default::default()
    };
    let holders = holder::spawn_many(&storm, storm_conns)?;
    // Connections opened and closed with a RST: set_state, setsockopt, accept and reset hooks.
    let churner = holder::Holder::spawn(&super::rst_churn(&storm, 100, 500))?;
    sys::sleep_s(3.0);
    let busy = windows(&empty, &ids, reps, secs)?;
    let cmds = vec![
        "sysctl kernel.bpf_stats_enabled=1".to_string(),
        daemon.command.clone(),
        format!(
            "{}   # before and after each {secs:.0} s window; per program Δrun_time_ns / Δrun_cnt",
            bpf::PROG_SHOW
        ),
        format!("{}   # noise", noise_cmd),
        format!(
            "{}   # storm, x{}, netns {} (tcp_keepalive_time = intvl = 1)",
            holders[0].command,
            holders.len(),
            ctx.storm_ns.name
        ),
        format!("{}   # churn", churner.command),
    ];
    drop((churner, holders));
    // The second copies detach first, then the first, then the daemon stops.
    drop(second);
    Ok(Measured {
        names,
        idle,
        idle_dirty,
        noisy,
        noisy_dirty,
        busy,
        iter_ours,
        iter_empty,
        reps,
        secs,
        storm_conns,
        cmds,
    })
}
