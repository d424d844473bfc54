//! keepalive-bench: what the keepalive observer costs, measured next to an empty BPF program,
//! `ss -tieo` polling and a bpftrace script, written to BENCHMARKS.md.
//!
//! `cargo xtask bench` builds everything and runs `keepalive-bench run`. The `hold` and `load`
//! subcommands are the child processes the run starts (socket holders, traffic generators).
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Parser;

mod bpf;
mod btf;
mod daemon;
mod holder;
mod kcost;
mod loadgen;
mod memory;
mod merge;
mod micro;
mod noise;
mod packet;
mod peers;
mod pipeline;
mod report;
mod scale;
mod sys;

#[derive(Parser)]
#[command(about = "Benchmarks of the keepalive observer (run as root; see BENCHMARKS.md)")]
enum Cli {
    /// Run the benchmarks and write the report.
    Run(RunOpts),
    /// (child) Hold loopback connections until stdin closes.
    #[command(hide = true)]
    Hold(holder::HoldOpts),
    /// (child) Generate loopback TCP traffic and print the result as JSON.
    #[command(hide = true)]
    Load(loadgen::LoadOpts),
    /// (child) Cross the hooks without concerning keepalive, until killed.
    #[command(hide = true)]
    Noise(noise::NoiseOpts),
    /// (guest) Section 1b inside the 6.1 VM: one hook mode, `kcost-vm …` lines on stdout.
    #[command(hide = true)]
    KcostVm(kcost::vm::VmOpts),
}

#[derive(clap::Args)]
pub struct RunOpts {
    /// The daemon binary to measure.
    #[arg(long, default_value = "target/release/keepalive-daemon")]
    pub daemon: PathBuf,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// Sections to run (default all): kcost, kcost-vm, packet, pipeline, memory, peers, micro,
    /// scale. With a subset, the other sections of an existing report are kept.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// One short window per figure and a tenth of the sockets: checks the machinery, not the
    /// numbers.
    #[arg(long)]
    pub quick: bool,
    /// How long the memory churn runs.
    #[arg(long, default_value_t = 180)]
    pub churn_seconds: u64,
    /// How the report names the command that produced it.
    #[arg(long, default_value = "cargo xtask bench")]
    pub command: String,
    /// The 6.1 VM's `kcost-vm` lines, collected by `cargo xtask bench`: section 1b (kcost-vm).
    #[arg(long)]
    pub vm_results: Option<PathBuf>,
    #[command(flatten)]
    pub scale: ScaleOpts,
}

/// Section 8 (scale).
#[derive(clap::Args, Clone)]
pub struct ScaleOpts {
    /// TCP sockets the scale section opens (both ends of each connection counted); the
    /// partition takes a tenth as many connections.
    #[arg(long = "scale-sockets", default_value_t = 1_000_000)]
    pub sockets: usize,
    /// Connections of the burst and partition (default: a tenth of `--scale-sockets`), so
    /// that a full-size partition can run beside few idle sockets.
    #[arg(long = "scale-partition")]
    pub partition: Option<usize>,
    /// Connections opened per second (all holders together): the daemon is running meanwhile,
    /// and a burst beyond its ring buffer would only measure losses.
    #[arg(long = "scale-open-rate", default_value_t = 8_000)]
    pub open_rate: u32,
    /// Correctness only (the `cargo xtask test` stage): skip the timing-only parts and exit
    /// non-zero when a count is wrong.
    #[arg(long = "scale-check")]
    pub check: bool,
    /// One more flag for the daemons the scale section starts (repeatable), e.g.
    /// `--scale-daemon-arg=--ring-buffer-bytes=33554432`.
    #[arg(long = "scale-daemon-arg", allow_hyphen_values = true)]
    pub daemon_args: Vec<String>,
    /// Checks that failed (filled by the section).
    #[arg(skip)]
    pub failed: Vec<String>,
}

type Section = fn(&mut Ctx) -> Result<()>;

/// What every section shares.
pub struct Ctx {
    pub daemon_bin: PathBuf,
    pub quick: bool,
    pub churn_seconds: u64,
    pub report: report::Report,
    pub offsets: btf::Offsets,
    /// Address of tcp_keepalive_timer.
    pub ka_fn: u64,
    /// Keepalive idle = intvl = 1 s by sysctl: every socket with SO_KEEPALIVE probes each second.
    pub storm_ns: sys::Netns,
    /// Linux defaults (7200 s idle): sockets with SO_KEEPALIVE that stay quiet.
    pub quiet_ns: sys::Netns,
    /// Section 1b's input (`--vm-results`).
    pub vm_results: Option<PathBuf>,
    pub scale: ScaleOpts,
}

impl Ctx {
    pub fn reps(&self) -> usize {
        if self.quick { 1 } else { 3 }
    }

    /// Measurement window, seconds.
    pub fn window(&self) -> f64 {
        if self.quick { 3.0 } else { 8.0 }
    }

    /// Socket counts shrink tenfold in quick mode.
    pub fn scale(&self, n: usize) -> usize {
        if self.quick { (n / 10).max(1) } else { n }
    }

    pub fn start_daemon(&self, extra: &[&str], tag: &str) -> Result<daemon::Daemon> {
        let log = daemon::scratch_dir().join(format!("daemon-{tag}.log"));
        daemon::Daemon::start(&self.daemon_bin, extra, &log)
    }
}

fn main() -> Result<()> {
    match Cli::parse() {
        Cli::Run(o) => run(o),
        Cli::Hold(o) => holder::hold(o),
        Cli::Load(o) => loadgen::load(o),
        Cli::Noise(o) => noise::noise(o),
        Cli::KcostVm(o) => kcost::vm::run(o),
    }
}

fn run(o: RunOpts) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: the bench loads BPF programs and creates network namespaces");
    }
    if !o.daemon.exists() {
        bail!(
            "{} missing: cargo build --release -p keepalive-daemon",
            o.daemon.display()
        );
    }
    sys::raise_nofile();
    sys::remove_stale_netns();
    sys::self_exe()?;
    let started = chrono::Utc::now();
    let t0 = std::time::Instant::now();
    let load_before = sys::loadavg();
    let tag = std::process::id();
    let mut ctx = Ctx {
        daemon_bin: o.daemon.canonicalize()?,
        quick: o.quick,
        churn_seconds: if o.quick { 20 } else { o.churn_seconds },
        report: report::Report::new(),
        offsets: btf::offsets().context("kernel BTF")?,
        ka_fn: sys::kallsyms("tcp_keepalive_timer")?,
        storm_ns: sys::Netns::create(&format!("kab-storm-{tag}"), &sys::STORM_KEEPALIVE)?,
        quiet_ns: sys::Netns::create(&format!("kab-quiet-{tag}"), &[])?,
        vm_results: o.vm_results.clone(),
        scale: o.scale.clone(),
    };
    let want = |s: &str| o.only.is_empty() || o.only.iter().any(|x| x == s);
    // The micro-benchmark first: it runs alone on the CPUs, and it records the structure sizes
    // the memory section quotes.
    // Section 1b only formats what the VM measured; without its lines there is nothing to run.
    let want = |s: &str| want(s) && (s != "kcost-vm" || o.vm_results.is_some());
    let sections: [(&str, Section); 8] = [
        ("micro", micro::run),
        ("kcost", kcost::host::run),
        ("kcost-vm", kcost::vm::section),
        ("packet", packet::run),
        ("pipeline", pipeline::run),
        ("memory", memory::run),
        ("peers", peers::run),
        ("scale", scale::run),
    ];
    for (name, f) in sections {
        if !want(name) {
            continue;
        }
        eprintln!(
            "keepalive-bench: {name} ({:.0} s so far)",
            t0.elapsed().as_secs_f64()
        );
        if let Err(e) = f(&mut ctx) {
            // A failed section is reported, not fatal: the others still say something.
            eprintln!("keepalive-bench: {name} failed: {e:#}");
            ctx.report.h2(&format!("{name}: failed"));
            ctx.report
                .p(&format!("This section did not complete: `{e:#}`"));
            ctx.report
                .verdict(name, "section ran", format!("failed: {e}"), false);
        }
    }
    if o.only.is_empty() && o.vm_results.is_none() {
        not_measured(&mut ctx.report);
    }
    let text = ctx.report.render(
        &started,
        t0.elapsed().as_secs_f64(),
        (&load_before, &sys::loadavg()),
        &o.command,
    );
    sys::remove_self_copy();
    let text = match std::fs::read_to_string(&o.out) {
        Ok(old) if !o.only.is_empty() => merge::merge(&old, &text),
        _ => text,
    };
    std::fs::write(&o.out, text).with_context(|| o.out.display().to_string())?;
    eprintln!(
        "keepalive-bench: wrote {} in {:.0} s",
        o.out.display(),
        t0.elapsed().as_secs_f64()
    );
    if !ctx.scale.failed.is_empty() {
        bail!("scale checks failed:\n  {}", ctx.scale.failed.join("\n  "));
    }
    Ok(())
}

/// Said when section 1b did not run (`cargo xtask bench --no-vm`, or the VM part failed).
fn not_measured(r: &mut report::Report) {
    r.h2("Not measured in this run: fentry and kprobe rungs (the 6.1 VM)");
    r.p("Everything above ran on the host kernel, where only the tracepoint rung attaches (lockdown: no \
         kprobes; fentry loads fail with EPERM). Section 1b measures the fentry/fexit and kprobe/kretprobe rungs \
         in the Debian 6.1 guest `cargo xtask vm` boots under TCG; this run skipped it (`--no-vm`) or the VM part \
         failed (see the bench's output and target/vm/logs/bench-6.1.log).");
}
