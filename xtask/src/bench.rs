//! `cargo xtask bench`: builds the daemon and keepalive-bench in release, then runs the
//! benchmarks, which write BENCHMARKS.md (issue 6). Everything runs on this host in tracepoint
//! mode except section 1b, the fentry and kprobe rungs in the 6.1 VM (vm/bench.rs; --no-vm).
use std::{process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::{
    exec::{exec, find_binary, privileged},
    setup,
};

#[derive(clap::Parser)]
pub struct Options {
    /// Sections to run, comma-separated: kcost, kcost-vm, packet, pipeline, memory, peers, micro,
    /// scale (default: all). With a subset, the other sections of an existing report are kept.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Short windows and a tenth of the sockets: checks the machinery, not the numbers.
    #[arg(long)]
    pub quick: bool,
    /// Where the report goes (relative to the workspace root).
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: String,
    /// Length of the memory churn (the 10-minute soak is `cargo test --release -p
    /// keepalive-daemon --test faults churn -- --ignored`).
    #[arg(long, default_value_t = 180)]
    pub churn_seconds: u64,
    /// Skip the build (binaries already in target/release).
    #[arg(long)]
    pub no_build: bool,
    /// Skip section 1b (kcost-vm: the fentry and kprobe rungs in the 6.1 VM, ~2 min of QEMU).
    #[arg(long)]
    pub no_vm: bool,
    /// Sockets section 8 (scale) opens, both ends counted (it needs about 5.5 KB of kernel
    /// memory each and refuses a count that would leave less than 3 GiB available).
    #[arg(long, default_value_t = 1_000_000)]
    pub scale_sockets: usize,
    /// Connections per second the scale section opens.
    #[arg(long, default_value_t = 8_000)]
    pub scale_open_rate: u32,
}

/// Tools the bench drives, by the Debian package that has them. bpftrace is one of the peers
/// measured, so it is installed here rather than by `cargo xtask setup` for every developer.
const TOOLS: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("bpftrace", "bpftrace"),
    ("ss", "iproute2"),
    ("ip", "iproute2"),
];

pub fn run(opts: Options) -> Result<()> {
    let start = Instant::now();
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(bin, _)| find_binary(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        let mut cmd = privileged("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing);
        exec(&mut cmd)?;
    }
    if !opts.no_build {
        setup::toolchain()?;
        exec(Command::new("cargo").args([
            "build",
            "--release",
            "-p",
            "keepalive-daemon",
            "-p",
            "keepalive-bench",
        ]))?;
        // Compiled now so that the build does not run inside a measurement; the micro section
        // only runs it.
        exec(Command::new("cargo").args([
            "bench",
            "--no-run",
            "-p",
            "keepalive-bench",
            "--bench",
            "pipeline",
        ]))?;
    }
    let built = start.elapsed().as_secs_f64();
    // Section 1b first, so the VM's TCG load never overlaps a host measurement. Its failure is
    // reported after the host sections ran, like a failed section's.
    let want_vm =
        !opts.no_vm && (opts.only.is_empty() || opts.only.iter().any(|s| s == "kcost-vm"));
    let vm = want_vm.then(crate::vm::bench::run);
    if let Some(Err(e)) = &vm {
        eprintln!("bench: the VM part failed ({e:#}); the host sections run anyway");
    }
    let mut cmd = privileged("target/release/keepalive-bench");
    cmd.args([
        "run",
        "--daemon",
        "target/release/keepalive-daemon",
        "--out",
        &opts.out,
    ]);
    cmd.args(["--churn-seconds", &opts.churn_seconds.to_string()]);
    cmd.args(["--scale-sockets", &opts.scale_sockets.to_string()]);
    cmd.args(["--scale-open-rate", &opts.scale_open_rate.to_string()]);
    if opts.quick {
        cmd.arg("--quick");
    }
    if !opts.only.is_empty() {
        cmd.args(["--only", &opts.only.join(",")]);
    }
    // The micro section runs `cargo bench`; as root through sudo, PATH may lack cargo.
    if let Ok(cargo) = std::env::var("CARGO") {
        cmd.env("CARGO", cargo);
    }
    cmd.env("KEEPALIVE_BENCH_BUILD_SECONDS", format!("{built:.0}"));
    if let Some(Ok(results)) = &vm {
        cmd.arg("--vm-results").arg(results);
    }
    exec(&mut cmd)?;
    if let Some(Err(e)) = vm {
        return Err(e.context("section 1b (kcost-vm, the 6.1 VM)"));
    }
    eprintln!(
        "bench: build {built:.0} s, total {:.0} s; report in {}",
        start.elapsed().as_secs_f64(),
        opts.out
    );
    if !std::path::Path::new(&opts.out).exists() {
        bail!("{} was not written", opts.out);
    }
    Ok(())
}
