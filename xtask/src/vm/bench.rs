//! The VM part of `cargo xtask bench` (BENCHMARKS.md section 1b): boots the 6.1 guest once with
//! `kat.bench=1 kat.modes=fentry,kprobe`, where keepalive-vminit runs `keepalive-bench kcost-vm`
//! per mode instead of the scenario suite, and keeps the `kcost-vm …` lines it prints for the
//! host-side `keepalive-bench run --vm-results` to format. The fentry and kprobe rungs only
//! exist there: the lockdown host refuses both.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, bail};

use super::{apt, initramfs, kernels, modules, qemu, tools};
use crate::build;

/// The modes measured, in the order the guest runs them.
const MODES: &str = "fentry,kprobe";

/// Where the collected lines go (read by `keepalive-bench run --vm-results`).
pub const RESULTS: &str = "target/bench/kcost-vm.txt";

/// Builds the guest's binaries, boots the 6.1 kernel, and writes RESULTS; its path on success.
/// Fails (naming the console log) when the guest did not report success for both modes.
pub fn run() -> Result<PathBuf> {
    let musl = build::Options {
        release: true,
        musl: true,
        arm64: false,
    };
    build::build_packages(
        &musl,
        &["keepalive-vminit", "keepalive-daemon", "keepalive-bench"],
    )?;
    let kernel = kernels::by_name(kernels::BENCH_KERNEL)?;
    // Cached package when there is one: a bench run should not depend on the mirror.
    let image = apt::fetch(kernel, false)?;
    let selection = modules::select(&image.modules)?;
    let shipped = tools::collect()?;
    let work = PathBuf::from("target/vm");
    fs::create_dir_all(work.join("logs"))?;
    let initrd = work.join(format!("initrd-bench-{}.gz", kernel.name));
    let (init, daemon, bench) = (
        build::binary(&musl, "keepalive-vminit"),
        build::binary(&musl, "keepalive-daemon"),
        build::binary(&musl, "keepalive-bench"),
    );
    let size = initramfs::write(
        &initramfs::Payload {
            init: &init,
            daemon: Some(&daemon),
            scenarios: None,
            bench: Some(&bench),
            modules: &selection,
            tools: &shipped,
        },
        &initrd,
    )?;
    eprintln!(
        "bench: VM {} = {} {} ({}), {} ({} KiB)",
        kernel.name,
        image.package,
        image.version,
        image.release,
        initrd.display(),
        size / 1024
    );
    let log = work.join("logs").join(format!("bench-{}.log", kernel.name));
    let console = qemu::boot(&qemu::Boot {
        label: "bench",
        arch: kernel.arch,
        vmlinuz: &image.vmlinuz,
        initrd: &initrd,
        append: format!("console=ttyS0 panic=-1 quiet kat.modes={MODES} kat.bench=1"),
        // About a minute per mode under TCG; the watchdog only catches a hung guest.
        timeout: Duration::from_secs(420),
        log: &log,
        verbose: false,
        marker: "kat: ",
        memory_mib: 1024,
        drives: &[],
        single_thread_tcg: false,
    })?;

    let mut out = format!(
        "kcost-vm-guest {} {} (`{}`), QEMU TCG, 2 vCPUs, 1 GiB; {:.0} s wall for both modes\n\
         kcost-vm-cmd cargo xtask bench --only kcost-vm   # boots the guest with kat.bench=1 kat.modes={MODES}\n",
        image.package,
        image.version,
        image.release,
        console.wall.as_secs_f64()
    );
    let lines = measurement_lines(&console.lines);
    for l in &lines {
        out.push_str(l);
        out.push('\n');
    }
    let results = PathBuf::from(RESULTS);
    fs::create_dir_all(results.parent().unwrap_or(Path::new(".")))?;
    fs::write(&results, &out)?;
    let success = console.lines.iter().any(|l| l.contains("kat: success"));
    let rows = lines.iter().filter(|l| l.starts_with("kcost-vm ")).count();
    if console.timed_out || !success || rows == 0 {
        bail!(
            "the VM kernel-cost run failed ({} measurement lines{}); console in {}",
            rows,
            if console.timed_out {
                ", watchdog fired"
            } else {
                ""
            },
            log.display()
        );
    }
    eprintln!(
        "bench: VM part {:.0} s, {rows} programs measured; lines in {RESULTS}",
        console.wall.as_secs_f64()
    );
    Ok(results)
}

/// The bench's own stdout lines (`kcost-vm…`), from the console's
/// `kat: kernel=R mode=M <line>` relays; stderr relays (`… log: …`) are left out.
fn measurement_lines(console: &[String]) -> Vec<String> {
    console
        .iter()
        .filter_map(|l| {
            let kat = &l[l.find("kat: kernel=")?..];
            let rest = kat.splitn(4, ' ').nth(3)?;
            rest.starts_with("kcost-vm").then(|| rest.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_only_the_measurement_lines() {
        let console = [
            "kat: boot kernel=6.1.0 uptime=4 modules=15",
            "noise kat: kernel=6.1.0 mode=fentry kcost-vm mode=fentry hook=a/fexit ratio=1.1",
            "kat: kernel=6.1.0 mode=kprobe log: kcost-vm failed",
            "kat: kernel=6.1.0 mode=kprobe kcost-vm-note twin x not attached",
        ]
        .map(String::from);
        assert_eq!(
            super::measurement_lines(&console),
            [
                "kcost-vm mode=fentry hook=a/fexit ratio=1.1",
                "kcost-vm-note twin x not attached"
            ]
        );
    }
}
