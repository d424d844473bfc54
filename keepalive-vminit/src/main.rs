//! /init of the test VMs built by `cargo xtask vm`. Everything it prints that the host reads
//! starts with `kat: `, so kernel messages on the same console cannot be mistaken for results:
//!
//! - `kat: boot kernel=R uptime=S modules=N`
//! - `kat: kernel=R mode=M <line>` for each line the suite prints (stderr lines after `log: `)
//! - `kat: done kernel=R mode=M exit=N secs=S`
//! - `kat: error <message>` when the guest itself could not get ready
//! - `kat: success` or `kat: failure`, then poweroff

mod bench;
mod plan;
mod smoke;
mod sys;

use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Command, Stdio},
    thread,
    time::Instant,
};

const MODULE_DIR: &str = "/lib/modules/kat";

fn main() {
    let ok = match prepare() {
        Ok(plan) => run_suite(&plan),
        Err(e) => {
            println!("kat: error {e}");
            false
        }
    };
    println!("kat: {}", if ok { "success" } else { "failure" });
    sys::power_off();
}

fn prepare() -> Result<plan::Plan, String> {
    for (fs, dir) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("tmpfs", "/run"),
        ("tmpfs", "/tmp"),
    ] {
        sys::mount(fs, dir).map_err(|e| format!("mounting {fs} on {dir}: {e}"))?;
    }
    // The daemon needs bpffs and tracefs; the others help when debugging a guest by hand.
    for (fs, dir, required) in [
        ("bpf", "/sys/fs/bpf", true),
        ("tracefs", "/sys/kernel/tracing", true),
        ("debugfs", "/sys/kernel/debug", false),
        ("cgroup2", "/sys/fs/cgroup", false),
    ] {
        if let Err(e) = sys::mount(fs, dir) {
            if required {
                return Err(format!("mounting {fs} on {dir}: {e}"));
            }
            println!("kat: note: mounting {fs} on {dir}: {e}");
        }
    }
    sys::unlimit_memlock().map_err(|e| format!("raising RLIMIT_MEMLOCK: {e}"))?;
    sys::loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;

    let order = std::fs::read_to_string(format!("{MODULE_DIR}/load-order"))
        .map_err(|e| format!("reading {MODULE_DIR}/load-order: {e}"))?;
    let mut count = 0;
    for name in order.lines().filter(|l| !l.is_empty()) {
        sys::load_module(&format!("{MODULE_DIR}/{name}.ko"))
            .map_err(|e| format!("loading module {name}: {e}"))?;
        count += 1;
    }

    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    println!(
        "kat: boot kernel={} uptime={} modules={count}",
        sys::kernel_release(),
        uptime()
    );
    Ok(plan::parse(&cmdline))
}

fn run_suite(plan: &plan::Plan) -> bool {
    let release = sys::kernel_release();
    let mut all_ok = true;
    for mode in &plan.modes {
        let prefix = format!("kat: kernel={release} mode={mode}");
        let start = Instant::now();
        if plan.smoke {
            let ok = smoke::run(mode, &prefix);
            println!(
                "kat: done kernel={release} mode={mode} exit={} secs={:.1}",
                i32::from(!ok),
                start.elapsed().as_secs_f64()
            );
            all_ok &= ok;
            continue;
        }
        let (program, args) = if plan.bench {
            (bench::BENCH_BIN, bench::args(mode))
        } else {
            ("/bin/keepalive-scenarios", plan::suite_args(plan, mode))
        };
        let child = Command::new(program)
            .args(args)
            .env("PATH", "/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                println!("{prefix} log: cannot start {program}: {e}");
                println!("kat: done kernel={release} mode={mode} exit=-1 secs=0");
                all_ok = false;
                continue;
            }
        };
        let relays = [
            relay(child.stdout.take().unwrap(), format!("{prefix} ")),
            relay(child.stderr.take().unwrap(), format!("{prefix} log: ")),
        ];
        for r in relays {
            let _ = r.join();
        }
        let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
        println!(
            "kat: done kernel={release} mode={mode} exit={code} secs={:.1}",
            start.elapsed().as_secs_f64()
        );
        all_ok &= code == 0;
    }
    all_ok
}

fn relay(pipe: impl Read + Send + 'static, prefix: String) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            // One println per line: the stdout lock keeps the two relays' lines whole.
            println!("{prefix}{line}");
        }
    })
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}
