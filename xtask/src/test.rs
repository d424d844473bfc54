//! `cargo xtask test`: every test in one command, for developers and CI alike. Stages run on
//! after a failure where they can, so one run shows everything that is broken.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    build,
    exec::{exec, exec_quoting, privileged},
    image, setup,
    vm::{self, kernels},
};

/// The blocks the scenario suite ends its stdout with (keepalive-scenarios/src/main.rs).
const FLAKY_HEADER: &str = "flaky scenarios (failed once, passed when run again):";
const FAILED_HEADER: &str = "failed scenarios:";

#[derive(clap::Parser)]
pub struct Options {
    /// Run the VM stage on every known kernel instead of the default one (6.12) only, and the
    /// systemd test bed on 6.1 and 6.12.
    #[arg(long)]
    pub all_kernels: bool,
    /// Skip the VM stage.
    #[arg(long)]
    pub no_vm: bool,
    /// Also run the churn soak (a million keepalive connections over ten minutes).
    #[arg(long)]
    pub soak: bool,
    /// Skip the scale stage (40 000 sockets and a 4 000-connection partition, about 75 s).
    #[arg(long)]
    pub no_scale: bool,
}

/// Sockets the scale stage opens: the scale bench's checks at a size a CI machine holds in a
/// minute (the bench's section 8 runs the million).
const SCALE_SOCKETS: &str = "40000";

/// A stage that could not run on this machine: shown as SKIPPED with the measured reason,
/// counted apart from passed and failed stages.
#[derive(Debug)]
pub struct Skipped(pub String);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skipped {}

fn skipped(r: &Result<()>) -> bool {
    r.as_ref()
        .is_err_and(|e| e.downcast_ref::<Skipped>().is_some())
}

struct Stage {
    name: String,
    result: Result<()>,
    took: Duration,
}

pub fn run(opts: Options) -> Result<()> {
    let mut stages = Vec::new();
    // Blocks a passing stage still wants at the end of the log (flaky scenarios).
    let mut notes: Vec<String> = Vec::new();
    let mut stage = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> bool {
        eprintln!("\n== {name}");
        let start = Instant::now();
        let result = f();
        let ok = result.is_ok();
        match &result {
            Err(e) if e.downcast_ref::<Skipped>().is_some() => eprintln!("== {name}: SKIPPED: {e}"),
            Err(e) => eprintln!("== {name}: FAILED: {e:#}"),
            Ok(()) => {}
        }
        stages.push(Stage {
            name: name.to_owned(),
            result,
            took: start.elapsed(),
        });
        ok
    };

    let ready = stage("setup", &mut || {
        setup::run(setup::Options {
            toolchain_only: false,
        })
    });
    if ready {
        stage("unit tests", &mut || {
            // keepalive-ebpf only builds for the BPF target, through the daemon's build script.
            exec(Command::new("cargo").args([
                "test",
                "--workspace",
                "--exclude",
                "keepalive-ebpf",
                "--no-fail-fast",
            ]))
        });
        let release = build::Options {
            release: true,
            musl: false,
            arm64: false,
        };
        if stage("build (release)", &mut || build::build(&release)) {
            stage(
                "deploy checks (systemd unit, promtool, dashboard, package, kubernetes)",
                &mut || crate::deploy_checks::run_checks(),
            );
            stage("host scenarios (hook mode auto)", &mut || {
                // One rerun of a failed scenario: a failure that does not repeat is reported
                // as flaky at the end of the log (README, Testing), not hidden.
                let flaky = exec_quoting(
                    privileged(build::binary(&release, "keepalive-scenarios"))
                        .arg("--daemon")
                        .arg(build::binary(&release, "keepalive-daemon"))
                        .args(["--hook-mode", "auto", "--retries", "1"]),
                    &[FLAKY_HEADER, FAILED_HEADER],
                )?;
                notes.push(flaky);
                Ok(())
            });
            if !opts.no_scale {
                stage(
                    "scale (40 000 sockets, 4 000-connection partition)",
                    &mut || scale(&release),
                );
            }
            // The package under a real systemd (xtask/src/bed): the CI kernel's Debian release,
            // both releases with --all-kernels.
            let bed = crate::bed::Options {
                kernels: Vec::new(),
                all: opts.all_kernels,
                deb: None,
                refresh: false,
                verbose: false,
            };
            let kernels = if bed.all {
                crate::bed::BED_KERNELS.join(", ")
            } else {
                crate::bed::DEFAULT_BED_KERNEL.to_owned()
            };
            stage(&format!("systemd test bed ({kernels})"), &mut || {
                crate::bed::boot(&bed)
            });
        }
        if opts.soak {
            stage("churn soak (1 M connections, 10 min)", &mut || {
                exec(Command::new("cargo").args([
                    "test",
                    "--release",
                    "-p",
                    "keepalive-daemon",
                    "--test",
                    "faults",
                    "churn",
                    "--",
                    "--ignored",
                    "--nocapture",
                ]))
            });
        }
        if !opts.no_vm {
            let names: Vec<&str> = if opts.all_kernels {
                kernels::KERNELS.iter().map(|k| k.name).collect()
            } else {
                vec![kernels::DEFAULT_KERNEL]
            };
            for name in names {
                stage(
                    &format!("VM {name} ({})", kernels::HOOK_MODES.join(", ")),
                    &mut || {
                        let kernel = kernels::by_name(name)?;
                        let modes: Vec<String> =
                            kernels::HOOK_MODES.iter().map(|m| m.to_string()).collect();
                        let vm_opts = vm::Options {
                            kernels: vec![name.to_owned()],
                            all: false,
                            modes: modes.clone(),
                            scenarios: Vec::new(),
                            no_daemon: false,
                            smoke: false,
                            daemon_args: Vec::new(),
                            suite_args: Vec::new(),
                            timeout: None,
                            refresh: false,
                            verbose: false,
                            from_logs: false,
                        };
                        let (outcomes, ok) = vm::run_kernels(&[kernel], &modes, &vm_opts)?;
                        if !ok {
                            bail!(
                                "a scenario failed in the VM (table above)\n{}",
                                vm::report::failures(&outcomes)
                            );
                        }
                        Ok(())
                    },
                );
            }
        }
        stage("container image (OCI, skopeo, podman)", &mut || {
            // After the VM stages, whose static build it reuses.
            let built = image::build_and_inspect(&[image::Arch::Amd64])?;
            match image::podman::check(&built, &built.images[0])? {
                image::podman::Outcome::Passed(summary) => {
                    eprintln!("container image: {summary}");
                    Ok(())
                }
                image::podman::Outcome::Skipped(reason) => Err(Skipped(format!(
                    "image written and read back by skopeo; podman run skipped: {reason}"
                ))
                .into()),
            }
        });
    }

    let skipped_count = stages.iter().filter(|s| skipped(&s.result)).count();
    let failed = stages.iter().filter(|s| s.result.is_err()).count() - skipped_count;
    println!("\n{:<40} {:>8}  result", "stage", "secs");
    for s in &stages {
        let result = match &s.result {
            Ok(()) => "ok".to_owned(),
            Err(e) if skipped(&s.result) => format!("SKIPPED: {e}"),
            Err(e) => format!("FAILED: {}", e.to_string().lines().next().unwrap_or("")),
        };
        println!("{:<40} {:>8.1}  {result}", s.name, s.took.as_secs_f64());
    }
    // The details after the table: CI keeps only the end of the log.
    for n in notes.iter().filter(|n| !n.is_empty()) {
        println!("\n{n}");
    }
    for s in &stages {
        if let Err(e) = &s.result {
            let text = e.to_string();
            let more: Vec<&str> = text.lines().skip(1).collect();
            if !more.is_empty() {
                println!("\n{}:\n{}", s.name, more.join("\n"));
            }
        }
    }
    // The plain closing line CI reads when no test runner's own line comes last.
    println!(
        "stages: {} passed, {failed} failed, {skipped_count} skipped",
        stages.len() - failed - skipped_count
    );
    if failed > 0 {
        bail!("{failed} stage(s) failed");
    }
    Ok(())
}

/// The scale bench's correctness checks, small: deaths reported exactly once, probe events
/// equal to the kernel's count, no unexplained loss, `/sockets` rows equal to the sockets
/// opened, promtool clean. Timing figures are printed, never judged here.
fn scale(release: &build::Options) -> Result<()> {
    build::build_packages(release, &["keepalive-bench"])?;
    let out = "target/scale-check/BENCHMARKS.md";
    std::fs::create_dir_all("target/scale-check")?;
    let _ = std::fs::remove_file(out);
    exec(
        privileged(build::binary(release, "keepalive-bench"))
            .arg("run")
            .arg("--daemon")
            .arg(build::binary(release, "keepalive-daemon"))
            .args(["--only", "scale", "--scale-check", "--out", out])
            .args(["--scale-sockets", SCALE_SOCKETS])
            // A ring that holds the stage's bursts even when other work shares the host: the
            // stage checks counts; the default ring's losses are section 8's figures.
            .arg("--scale-daemon-arg=--ring-buffer-bytes=16777216")
            .args(["--command", "cargo xtask test (scale stage)"]),
    )
}
