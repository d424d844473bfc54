//! Section 8, a million sockets (issue 17): the kernel's memory for them first, then what the
//! daemon costs and answers at that size — RSS per socket, start-up inventory, a re-walk while
//! events flow, `/metrics` (with `promtool check metrics`), `/sockets` streamed next to `ss -tieo`
//! and the `sockets` command — then a timer burst and a 1/10-size network partition with exact
//! accounting of deaths and probes. `--scale-check` (the `cargo xtask test` stage) runs it small
//! and fails on a wrong count, never on a timing.
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

use crate::Ctx;

mod drain;
mod events;
mod listing;
mod measure;
mod partition;
mod quiet;
mod startup;
mod topo;
mod write;

/// What the section found, in the order measured.
#[derive(Default)]
pub struct Out {
    /// (what, measured, target, met: None where there is no target).
    pub rows: Vec<(String, String, String, Option<bool>)>,
    pub notes: Vec<String>,
    pub cmds: Vec<String>,
    /// Correctness checks (the test stage fails on any false): (what, ok, detail).
    pub checks: Vec<(String, bool, String)>,
}

impl Out {
    pub fn figure(&mut self, what: &str, measured: String, target: &str, met: Option<bool>) {
        eprintln!("  scale: {what}: {measured}");
        self.rows.push((what.into(), measured, target.into(), met));
    }

    pub fn note(&mut self, text: String) {
        self.notes.push(text);
    }

    pub fn cmd(&mut self, c: String) {
        self.cmds.push(c);
    }

    pub fn check(&mut self, what: &str, ok: bool, detail: String) {
        eprintln!(
            "  scale check {}: {what} ({detail})",
            if ok { "ok" } else { "FAILED" }
        );
        self.checks.push((what.into(), ok, detail));
    }

    /// Runs one sub-part; its failure is a row and a failed check, and the next part runs.
    pub fn part(&mut self, name: &str, f: impl FnOnce(&mut Out) -> Result<()>) {
        eprintln!("keepalive-bench: scale: {name}");
        if let Err(e) = f(self) {
            eprintln!("keepalive-bench: scale: {name} failed: {e:#}");
            self.figure(name, format!("failed: {e:#}"), "runs", Some(false));
            self.check(name, false, format!("{e:#}"));
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C (or SIGTERM) during the section: the waits notice and fail, so that the guards drop
/// (holders, daemons, namespaces, the raised sysctl) instead of the process dying mid-way.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn catch_signals() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Kernel memory a TCP socket takes on this host (previous run: 4.86 KB of slab); used to
/// refuse a size the machine cannot hold before opening anything.
const KERNEL_BYTES_PER_SOCKET: f64 = 5_500.0;
/// What must stay available to the rest of the host.
const MARGIN: f64 = 3.0 * 1024.0 * 1024.0 * 1024.0;

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let r = run_checked(ctx);
    if let Err(e) = &r
        && ctx.scale.check
    {
        ctx.scale.failed.push(format!("section: {e:#}"));
    }
    r
}

fn run_checked(ctx: &mut Ctx) -> Result<()> {
    catch_signals();
    topo::restore_stale();
    let sockets = ctx.scale(ctx.scale.sockets).max(200) / 2 * 2;
    let partition = ctx.scale.partition.unwrap_or(sockets / 10).max(100);
    let avail = quiet::meminfo("MemAvailable") as f64;
    let need = (sockets + 2 * partition) as f64 * (KERNEL_BYTES_PER_SOCKET + 512.0);
    if avail - need < MARGIN {
        bail!(
            "{sockets} sockets need about {:.1} GiB (kernel and daemon); MemAvailable is {:.1} GiB and {:.0} GiB \
             must stay free: run a smaller --scale-sockets",
            need / 1073741824.0,
            avail / 1073741824.0,
            MARGIN / 1073741824.0
        );
    }
    let topo = topo::Topology::build(std::process::id(), 2)?;
    let mut out = Out::default();
    let opened = quiet::open_and_measure(ctx, &topo, sockets, &mut out);
    let result = match opened {
        Ok(q) => measure::run(ctx, &topo, q, partition, &mut out),
        Err(e) => Err(e),
    };
    drop(topo);
    topo::restore_stale();
    if let Err(e) = &result {
        out.check("section ran", false, format!("{e:#}"));
    }
    write::section(ctx, sockets, partition, &out, result.as_ref().err());
    let failed: Vec<String> = out
        .checks
        .iter()
        .filter(|c| !c.1)
        .map(|c| format!("{}: {}", c.0, c.2))
        .collect();
    if ctx.scale.check {
        ctx.scale.failed = failed;
    }
    result
}
