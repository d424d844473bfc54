//! The QEMU test bed (issue 3): Debian cloud kernels, a generated initramfs with the static
//! daemon and scenario suite, one boot per kernel running every requested hook mode.

mod apt;
pub use apt::sources_for;
pub mod bench;
mod initramfs;
pub mod kernels;
mod matrix;
mod mirrors;
mod modules;
pub mod qemu;
mod replay;
pub mod report;
mod sysroot;
mod tools;

use std::{fs, path::PathBuf, time::Duration};

use anyhow::{Result, bail};

use crate::{build, setup};
use kernels::{Arch, KERNELS, Kernel};
use report::Outcome;

#[derive(clap::Parser)]
pub struct Options {
    /// Kernel to boot (repeatable); see xtask/src/vm/kernels.rs. Default: 6.12.
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernels: Vec<String>,
    /// Every known kernel, and regenerate docs/kernel-matrix.md from the results.
    #[arg(long)]
    pub all: bool,
    /// Hook mode to run (repeatable). Default: fentry, kprobe, tracepoint, auto.
    #[arg(long = "mode", value_name = "MODE")]
    pub modes: Vec<String>,
    /// Only this scenario (repeatable). Default: the whole suite.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Run the suite's kernel-side checks only, without the daemon.
    #[arg(long)]
    pub no_daemon: bool,
    /// Only check the guest environment (BTF, kallsyms, netns+veth, nftables, nstat); needs
    /// neither the daemon nor the suite to build.
    #[arg(long, conflicts_with = "no_daemon")]
    pub smoke: bool,
    /// Extra argument for the daemon in the guest (repeatable), e.g. --daemon-arg=--log.level=debug.
    #[arg(long = "daemon-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub daemon_args: Vec<String>,
    /// Extra argument for the suite in the guest (repeatable), e.g. --suite-arg=--family=ipv4.
    #[arg(long = "suite-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub suite_args: Vec<String>,
    /// Watchdog: seconds a VM may run before it is killed. Default: 180 plus 600 per mode.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Re-resolve the kernel packages instead of using the cached downloads.
    #[arg(long)]
    pub refresh: bool,
    /// Echo the whole serial console, not only the harness's lines.
    #[arg(long)]
    pub verbose: bool,
    /// With --all: rewrite docs/kernel-matrix.md from each kernel's last console log in
    /// target/vm/logs instead of booting (kernels run on their own or side by side).
    #[arg(long, requires = "all")]
    pub from_logs: bool,
}

pub fn run(opts: Options) -> Result<()> {
    setup::run(setup::Options {
        toolchain_only: false,
    })?;
    let kernels: Vec<&'static Kernel> = if opts.all {
        KERNELS.iter().collect()
    } else if opts.kernels.is_empty() {
        vec![kernels::by_name(kernels::DEFAULT_KERNEL)?]
    } else {
        opts.kernels
            .iter()
            .map(|k| kernels::by_name(k))
            .collect::<Result<_>>()?
    };
    let modes = if opts.modes.is_empty() {
        kernels::HOOK_MODES.iter().map(|m| m.to_string()).collect()
    } else {
        opts.modes.clone()
    };
    let ok = if opts.from_logs {
        let outcomes: Vec<Outcome> = kernels
            .iter()
            .map(|k| replay::outcome(k))
            .collect::<Result<_>>()?;
        write_matrix(&outcomes, &kernels, &modes, &opts)?;
        println!(
            "\nVM suite (from the console logs):\n{}",
            report::summary(&outcomes, &modes)
        );
        outcomes.iter().all(|o| o.passed(&modes))
    } else {
        run_kernels(&kernels, &modes, &opts)?.1
    };
    if !ok {
        bail!("the VM suite failed (summary above)");
    }
    Ok(())
}

/// Builds the static binaries, then boots each kernel once; returns the outcomes and whether
/// every requested cell passed. Also the VM stage of `cargo xtask test`.
pub fn run_kernels(
    kernels: &[&'static Kernel],
    modes: &[String],
    opts: &Options,
) -> Result<(Vec<Outcome>, bool)> {
    // Build only what the guest will run, so a smoke or --no-daemon run works while the
    // daemon does not build.
    let packages: &[&str] = if opts.smoke {
        &["keepalive-vminit"]
    } else if opts.no_daemon {
        &["keepalive-vminit", "keepalive-scenarios"]
    } else {
        &[
            "keepalive-vminit",
            "keepalive-scenarios",
            "keepalive-daemon",
        ]
    };
    // Once per guest architecture among the kernels.
    let mut built: Vec<Arch> = Vec::new();
    for kernel in kernels {
        if !built.contains(&kernel.arch) {
            build::build_packages(&static_build(kernel.arch), packages)?;
            built.push(kernel.arch);
        }
    }
    let work = PathBuf::from("target/vm");
    fs::create_dir_all(work.join("logs"))?;

    let mut outcomes = Vec::new();
    for kernel in kernels {
        let musl = static_build(kernel.arch);
        let outcome = boot_kernel(kernel, modes, opts, &musl, &work).unwrap_or_else(|e| Outcome {
            kernel: kernel.name.to_owned(),
            error: Some(format!("{e:#}")),
            ..Outcome::default()
        });
        outcomes.push(outcome);
        if opts.all {
            // After every kernel, not only at the end: a long run that is stopped still leaves
            // the kernels it finished documented (the others are listed as not run yet).
            write_matrix(&outcomes, kernels, modes, opts)?;
        }
    }
    println!(
        "\nVM suite ({}):\n{}",
        flavour(opts),
        report::summary(&outcomes, modes)
    );
    let ok = outcomes.iter().all(|o| o.passed(modes));
    Ok((outcomes, ok))
}

/// Boots of one kernel tried when each one panics before the guest's init starts.
const EARLY_PANIC_BOOTS: u32 = 3;

fn boot_kernel(
    kernel: &'static Kernel,
    modes: &[String],
    opts: &Options,
    musl: &build::Options,
    work: &std::path::Path,
) -> Result<Outcome> {
    let image = apt::fetch(kernel, opts.refresh)?;
    let selection = modules::select(&image.modules)?;
    let names: Vec<&str> = selection.modules.iter().map(|m| m.name.as_str()).collect();
    eprintln!(
        "vm: {} = {} {} ({}); modules: {}; built in: {}; absent: {}",
        kernel.name,
        image.package,
        image.version,
        image.release,
        names.join(" "),
        selection.builtin.join(" "),
        selection.absent.join(" "),
    );

    let shipped = match kernel.arch {
        Arch::X86_64 => tools::collect()?,
        // The host's tools cannot run there: Debian's builds for the guest's architecture.
        foreign => sysroot::collect(foreign)?,
    };
    if !shipped.missing.is_empty() {
        eprintln!(
            "vm: not on this host, so not in the guest (their scenarios will be skipped): {}",
            shipped.missing.join(" ")
        );
    }
    let initrd = work.join(format!("initrd-{}.gz", kernel.name));
    let size = initramfs::write(
        &initramfs::Payload {
            init: &build::binary(musl, "keepalive-vminit"),
            daemon: (!opts.smoke && !opts.no_daemon)
                .then(|| build::binary(musl, "keepalive-daemon"))
                .as_deref(),
            scenarios: (!opts.smoke)
                .then(|| build::binary(musl, "keepalive-scenarios"))
                .as_deref(),
            bench: None,
            modules: &selection,
            tools: &shipped,
        },
        &initrd,
    )?;
    eprintln!("vm: {} ({} KiB)", initrd.display(), size / 1024);

    // Kernel parameters with a dot are not passed to init as arguments or environment; vminit
    // reads them from /proc/cmdline.
    let mut append = format!(
        "console={} panic=-1 quiet kat.modes={}",
        qemu::console(kernel.arch),
        modes.join(",")
    );
    if !opts.scenarios.is_empty() {
        append.push_str(&format!(" kat.scenarios={}", opts.scenarios.join(",")));
    }
    if opts.no_daemon {
        append.push_str(" kat.nodaemon=1");
    }
    if opts.smoke {
        append.push_str(" kat.smoke=1");
    }
    let passed = [
        ("daemonarg", &opts.daemon_args),
        ("suitearg", &opts.suite_args),
    ];
    for (param, args) in passed {
        for arg in args {
            if arg.contains(char::is_whitespace) {
                bail!("{arg:?}: kernel parameters cannot carry whitespace");
            }
            append.push_str(&format!(" kat.{param}={arg}"));
        }
    }
    let timeout = Duration::from_secs(opts.timeout.unwrap_or(180 + 600 * modes.len() as u64));
    let log = work.join("logs").join(format!("{}.log", kernel.name));
    let boot = qemu::Boot {
        label: kernel.name,
        arch: kernel.arch,
        vmlinuz: &image.vmlinuz,
        initrd: &initrd,
        append,
        timeout,
        log: &log,
        verbose: opts.verbose,
        marker: "kat: ",
        memory_mib: 1024,
        drives: &[],
        single_thread_tcg: false,
    };
    let mut console = qemu::boot(&boot)?;
    // Multi-threaded TCG occasionally loses a race with the guest's own code patching while it
    // boots ("Oops: int3" in sched_clock_tick, seen on 6.12 before init ran): nothing of ours
    // has run yet, so that boot is repeated, its console kept beside the log and the retry said.
    for attempt in 2..=EARLY_PANIC_BOOTS {
        let Some(panic) = qemu::panic_before_init(&console) else {
            break;
        };
        let kept = work
            .join("logs")
            .join(format!("{}.panic{}.log", kernel.name, attempt - 1));
        fs::rename(&log, &kept)?;
        eprintln!(
            "vm: {} panicked before init ({panic}); console kept in {}; boot {attempt} of {EARLY_PANIC_BOOTS}",
            kernel.name,
            kept.display()
        );
        console = qemu::boot(&boot)?;
    }

    let mut outcome = Outcome {
        kernel: kernel.name.to_owned(),
        package: image.package,
        version: image.version,
        release: image.release,
        timed_out: console.timed_out,
        boot: console.boot,
        wall: console.wall,
        ..Outcome::default()
    };
    report::parse(&mut outcome, &console.lines);
    if outcome.verdict.is_none() && outcome.error.is_none() && !outcome.timed_out {
        outcome.error = Some(format!(
            "guest stopped without a verdict; console in {}",
            log.display()
        ));
    }
    Ok(outcome)
}

/// docs/kernel-matrix.md from the outcomes so far; kernels still to boot get a row saying so.
fn write_matrix(
    outcomes: &[Outcome],
    kernels: &[&'static Kernel],
    modes: &[String],
    opts: &Options,
) -> Result<()> {
    // The exact command, so the document says how its results were obtained.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = format!("cargo xtask {}", args.join(" "));
    let caveat = if opts.smoke || opts.no_daemon {
        Some(
            "Run without the daemon: these are the suite's kernel-side checks only, and the \
             mode columns do not exercise any hook mode.",
        )
    } else if opts.from_logs {
        Some(
            "Rendered from each kernel's console log of its last boot (target/vm/logs), not from \
             one boot after another: boot and wall seconds are those runs' own.",
        )
    } else {
        None
    };
    let pending: Vec<Outcome> = kernels[outcomes.len()..]
        .iter()
        .map(|k| Outcome {
            kernel: k.name.to_owned(),
            error: Some(format!(
                "{}: the run was stopped before this kernel",
                matrix::NOT_RUN_YET
            )),
            ..Outcome::default()
        })
        .collect();
    let all: Vec<&Outcome> = outcomes.iter().chain(&pending).collect();
    matrix::write(&all, modes, &command, caveat)
}

/// The static (musl) release build whose binaries go into a guest of `arch`.
fn static_build(arch: Arch) -> build::Options {
    build::Options {
        release: true,
        musl: true,
        arm64: arch == Arch::Arm64,
    }
}

fn flavour(opts: &Options) -> &'static str {
    if opts.smoke {
        "--smoke"
    } else if opts.no_daemon {
        "--no-daemon"
    } else {
        "with the daemon"
    }
}
