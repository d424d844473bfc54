//! `cargo xtask bed`: the package proven under a real systemd. A Debian system (systemd as PID 1,
//! the suite's own kernel, redis-server as the service under watch) boots in QEMU; its test
//! unit installs the .deb with apt as an operator would and records what the service does; the
//! host then reads the records back from the payload disk and checks them (checks.rs).
//!
//! The project's other tests run the daemon under a simulated sandbox (an unprivileged user
//! with the unit's capabilities); only this one runs the unit itself, with systemd's own
//! readiness protocol, sandbox, journal and `systemd-analyze security` on the live unit.

mod checks;
mod rootfs;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    exec::{exec, output},
    package, setup,
    vm::{kernels, qemu},
};

/// The kernels the bed boots: each is its Debian release's own (`kernels.rs`), so the system
/// around it is that release too (systemd 252 in bookworm, 257 in trixie).
pub const BED_KERNELS: &[&str] = &["6.1", "6.12"];
/// What `cargo xtask test` boots by default: the CI kernel of the VM suite.
pub const DEFAULT_BED_KERNEL: &str = kernels::DEFAULT_KERNEL;

const GUEST_SCRIPT: &str = include_str!("guest.sh");

#[derive(clap::Parser)]
pub struct Options {
    /// Kernel (and with it the Debian release) to boot, repeatable: 6.1 (bookworm) or 6.12
    /// (trixie). Default: 6.12.
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernels: Vec<String>,
    /// Both kernels.
    #[arg(long, conflicts_with = "kernels")]
    pub all: bool,
    /// Install this .deb instead of building one with `cargo xtask package`.
    #[arg(long, value_name = "FILE")]
    pub deb: Option<PathBuf>,
    /// Rebuild the cached root file system (target/bed/<kernel>/).
    #[arg(long)]
    pub refresh: bool,
    /// Echo the whole serial console, not only the test script's `bed:` lines.
    #[arg(long)]
    pub verbose: bool,
}

pub fn run(opts: Options) -> Result<()> {
    setup::run(setup::Options {
        toolchain_only: false,
    })?;
    boot(&opts)
}

/// The bed on the chosen kernels, once `cargo xtask setup` has run (`cargo xtask test` runs
/// it as its first stage).
pub fn boot(opts: &Options) -> Result<()> {
    let names: Vec<String> = if opts.all {
        BED_KERNELS.iter().map(|k| k.to_string()).collect()
    } else if opts.kernels.is_empty() {
        vec![DEFAULT_BED_KERNEL.to_owned()]
    } else {
        opts.kernels.clone()
    };
    for name in &names {
        if !BED_KERNELS.contains(&name.as_str()) {
            bail!(
                "--kernel {name}: the systemd test bed boots {}",
                BED_KERNELS.join(" or ")
            );
        }
    }
    let deb = match &opts.deb {
        Some(d) => d.clone(),
        None => package::build_deb(&package::Options {
            binary: None,
            out_dir: PathBuf::from("target/debian"),
            arch: None,
        })?,
    };
    let mut failed = Vec::new();
    for name in &names {
        if let Err(e) = run_kernel(name, &deb, opts) {
            eprintln!("bed {name}: FAILED: {e:#}");
            failed.push(format!("{name}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("the systemd test bed failed:\n{}", failed.join("\n"));
    }
    Ok(())
}

fn run_kernel(name: &str, deb: &Path, opts: &Options) -> Result<()> {
    let kernel = kernels::by_name(name)?;
    let image = rootfs::prepare(kernel, opts.refresh)?;
    let dir = PathBuf::from("target/bed").join(name);
    let payload = dir.join("payload");
    if payload.exists() {
        fs::remove_dir_all(&payload)?;
    }
    fs::create_dir_all(payload.join("results"))?;
    fs::write(payload.join("guest.sh"), GUEST_SCRIPT)?;
    fs::copy(deb, payload.join("keepalive-daemon.deb"))
        .with_context(|| format!("copying {}", deb.display()))?;
    repack_as_upgrade(
        deb,
        &dir.join("upgrade"),
        &payload.join("keepalive-daemon-upgrade.deb"),
    )?;
    let disk = dir.join("payload.img");
    let _ = fs::remove_file(&disk);
    exec(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-d"])
            .arg(&payload)
            .arg(&disk)
            .arg("256M"),
    )?;

    let log = dir.join("console.log");
    let start = Instant::now();
    let console = qemu::boot(&qemu::Boot {
        label: name,
        arch: kernel.arch,
        vmlinuz: &image.vmlinuz,
        initrd: &image.initrd,
        append: "root=/dev/vda rw console=ttyS0 panic=-1".to_owned(),
        // About 30 s to multi-user.target and 3–4 min of checks under TCG here.
        timeout: Duration::from_secs(900),
        log: &log,
        verbose: opts.verbose,
        marker: "bed: ",
        memory_mib: 2048,
        drives: &[(&image.disk, true), (&disk, false)],
        // The daemon attaches and detaches tracepoints at start, which patches kernel text:
        // under multi-threaded TCG that once oopsed the guest ("int3" in enqueue_timer, 6.12,
        // with the host loaded). The bed's minute is cheap enough to run on one host thread.
        single_thread_tcg: true,
    })?;
    let results = dir.join("results");
    if results.exists() {
        fs::remove_dir_all(&results)?;
    }
    // debugfs reads the guest's ext4 image directly: no loop mount, nothing left mounted. It
    // exits 0 whatever happens, so its result is the directory it writes.
    let said = output(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("rdump /results {}", dir.display()))
            .arg(&disk),
    )?;
    ensure!(
        results.is_dir(),
        "debugfs could not copy /results out of {}: {said}",
        disk.display()
    );
    if console.timed_out {
        bail!(
            "the guest did not power off within {} s (console: {})",
            console.wall.as_secs(),
            log.display()
        );
    }
    if let Some(oops) = console
        .lines
        .iter()
        .find(|l| l.contains("Oops:") || l.contains("Kernel panic") || l.contains("BUG:"))
    {
        bail!(
            "the guest kernel failed: {} (console: {})",
            oops.trim(),
            log.display()
        );
    }
    if !console.lines.iter().any(|l| l.starts_with("bed: done")) {
        bail!(
            "the test script did not finish (console: {}, records: {})",
            log.display(),
            results.display()
        );
    }
    let report = checks::judge(&results)?;
    println!(
        "bed {name}: {} checks passed in {:.0} s ({:.0} s to the test unit); records in {}",
        report.passed,
        start.elapsed().as_secs_f64(),
        console.boot.map_or(0.0, |b| b.as_secs_f64()),
        results.display()
    );
    for line in &report.evidence {
        println!("bed {name}: {line}");
    }
    if !report.failed.is_empty() {
        bail!(
            "{} of {} checks failed:\n  {}",
            report.failed.len(),
            report.failed.len() + report.passed,
            report.failed.join("\n  ")
        );
    }
    Ok(())
}

/// The same package with a higher version (`<version>+bedupgrade`), so the guest can upgrade
/// in place as an operator does with a new release: the conffile edit must survive and the
/// maintainer scripts must restart the service.
fn repack_as_upgrade(deb: &Path, work: &Path, out: &Path) -> Result<()> {
    if work.exists() {
        fs::remove_dir_all(work)?;
    }
    exec(Command::new("dpkg-deb").arg("-R").arg(deb).arg(work))?;
    let control = work.join("DEBIAN/control");
    let text = fs::read_to_string(&control)?;
    let mut bumped = false;
    let text: String = text
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(v) => {
                bumped = true;
                format!("Version: {v}+bedupgrade\n")
            }
            None => format!("{l}\n"),
        })
        .collect();
    ensure!(bumped, "no Version: in {}", control.display());
    fs::write(&control, text)?;
    exec(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(work)
            .arg(out),
    )?;
    fs::remove_dir_all(work)?;
    Ok(())
}
