//! `--config.check`: everything the daemon would find wrong at start, found without attaching
//! anything. Prints `ok:` and `warning:` lines on stdout and one `problem:` line per problem on
//! stderr; exits 0 when there is no problem, else with the exit code the daemon itself would
//! have used for the first one (2 configuration, 3 BTF, 4 privileges, 5 hooks, 6 listen).
use std::{fs, path::Path, process::ExitCode};

use aya::programs::ProgramType;
use keepalive_common::Offsets;

use crate::{
    error::Error,
    kernel::btf::Btf,
    kernel::inventory_offsets,
    kernel::offsets,
    kernel::tracefs,
    service::caps::{
        self, CAP_BPF, CAP_DAC_READ_SEARCH, CAP_NET_RAW, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE,
    },
    service::cli::{HookMode, RunArgs},
    service::webconfig,
};

/// Kernel functions the fentry and kprobe rungs attach to (the ladders in attach.rs), and
/// whether a rung can do without it (the death hook falls back to the state-change hook).
const FUNCTIONS: &[(&str, bool)] = &[
    ("tcp_keepalive_timer", true),
    ("tcp_write_wakeup", true),
    ("tcp_done_with_error", false),
];
/// Raw tracepoints: the tracepoint rung's timer hooks, and the hooks every mode uses.
const TRACEPOINT_RUNG: &[(&str, &str)] = &[
    ("timer", "timer_expire_entry"),
    ("timer", "timer_expire_exit"),
];
/// The startup calibration's hook (calibrate.rs).
const CALIBRATION: &[(&str, &str)] = &[("timer", "timer_start")];
const ALWAYS: &[(&str, &str)] = &[
    ("sock", "inet_sock_set_state"),
    ("tcp", "tcp_receive_reset"),
];

#[derive(Default)]
struct Report {
    problems: Vec<(i32, String)>,
    warnings: usize,
}

impl Report {
    fn ok(&self, line: impl AsRef<str>) {
        println!("ok: {}", line.as_ref());
    }
    fn warn(&mut self, line: impl AsRef<str>) {
        self.warnings += 1;
        println!("warning: {}", line.as_ref());
    }
    fn problem(&mut self, code: i32, line: impl AsRef<str>) {
        eprintln!("problem: {}", line.as_ref());
        self.problems.push((code, line.as_ref().to_string()));
    }
    fn error(&mut self, e: &Error) {
        self.problem(e.exit_code(), e.to_string());
    }
}

pub fn run(opts: &RunArgs) -> ExitCode {
    let mut r = Report::default();
    match &opts.config_file {
        Some(p) => r.ok(format!("config file {}", p.display())),
        None => r.ok("no config file: defaults and flags"),
    }
    match &opts.web_config_file {
        Some(p) => match webconfig::load(p) {
            Ok(c) => {
                r.ok(format!("web config {}: {}", p.display(), c.summary()));
                if c.tls.is_none() && !opts.listen.ip().is_loopback() {
                    r.warn(format!(
                        "web.listen-address {} is not loopback and the web config has no TLS",
                        opts.listen
                    ));
                }
            }
            Err(e) => r.problem(2, e),
        },
        None if !opts.listen.ip().is_loopback() => r.warn(format!(
            "web.listen-address {} is not loopback and there is no web config (no TLS, no auth)",
            opts.listen
        )),
        None => r.ok("no web config: plain HTTP on loopback"),
    }
    listen(&mut r, opts);

    let eff = caps::effective();
    let has = |c: u32| eff & (1u64 << c) != 0;
    let can_load = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    if can_load {
        r.ok(format!(
            "privileges to load and attach: {}",
            caps::names(eff & caps::mask(&[CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN])).join(" ")
        ));
    } else {
        r.error(&Error::Privileges);
    }
    for (cap, without) in [
        (
            CAP_SYS_PTRACE,
            "sockets of other users' processes are reported without pid and comm",
        ),
        (
            CAP_DAC_READ_SEARCH,
            "sockets of other users' processes are reported without pid and comm",
        ),
        (
            CAP_SYS_ADMIN,
            "ICMP errors and sysctl defaults of other network namespaces are not seen",
        ),
        (
            CAP_NET_RAW,
            "ICMP destination-unreachable errors are not seen (no `unreachable` cause)",
        ),
    ] {
        if !has(cap) {
            r.warn(format!("no {}: {without}", caps::name(cap)));
        }
    }

    let btf = match Btf::from_file(&opts.btf_path) {
        Ok(b) => b,
        Err(e) => {
            r.error(&e);
            return finish(r);
        }
    };
    let mut offs: Option<Offsets> = None;
    match offsets::resolve(&btf).and_then(|mut o| inventory_offsets::fill(&btf, &mut o).map(|()| o))
    {
        Ok(o) => offs = Some(o),
        Err(e) => r.error(&e),
    }
    if let Err(e) = offsets::mib_keepalive(&btf) {
        r.error(&e);
    }
    if offs.is_some() {
        r.ok(format!(
            "BTF {}: every structure offset found",
            opts.btf_path.display()
        ));
    }
    tracefs::ensure_mounted();
    if let Some(o) = offs.as_mut() {
        match tracefs::fill(o) {
            Ok(()) => {
                r.ok("syscall tracepoints: settings changes and accepted sockets' owners are seen")
            }
            Err(e) => r.warn(format!(
                "{e}: keepalive options set after a connection opens will not be seen"
            )),
        }
    }

    // The timer callback's address is measured at start by arming a keepalive timer under a
    // `timer:timer_start` program (calibrate.rs); checking only asks whether that can work.
    match (tracepoints_missing(CALIBRATION), opts.hook_mode) {
        (Ok(missing), _) if missing.is_empty() => r.ok("tracepoint timer:timer_start exists: tcp_keepalive_timer can be found at start"),
        (Ok(_), HookMode::Auto | HookMode::Tracepoint) => {
            r.problem(5, "tracepoint timer:timer_start missing: tcp_keepalive_timer cannot be found at start")
        }
        (Ok(_), _) => r.warn("tracepoint timer:timer_start missing: only the tracepoint rung needs tcp_keepalive_timer's address"),
        (Err(e), _) => r.warn(e),
    }

    let fentry = mode_fentry(&btf, can_load);
    let kprobe = mode_kprobe(&btf, can_load);
    let tracepoint = mode_tracepoint(TRACEPOINT_RUNG, can_load);
    match tracepoints_missing(ALWAYS) {
        Ok(missing) if missing.is_empty() => {
            r.ok("tracepoints sock:inet_sock_set_state and tcp:tcp_receive_reset exist")
        }
        Ok(missing) => r.problem(
            5,
            format!(
                "tracepoints {} missing: no hook mode can work on this kernel",
                missing.join(", ")
            ),
        ),
        Err(e) => r.warn(e),
    }
    let modes = [
        ("fentry", HookMode::Fentry, fentry),
        ("kprobe", HookMode::Kprobe, kprobe),
        ("tracepoint", HookMode::Tracepoint, tracepoint),
    ];
    for (name, mode, result) in &modes {
        match (result, opts.hook_mode == *mode) {
            (Ok(note), _) => r.ok(format!("hook mode {name}: available{note}")),
            (Err(why), true) => r.problem(
                5,
                format!("hook mode {name} (configured): not available: {why}"),
            ),
            (Err(why), false) => println!("info: hook mode {name}: not available: {why}"),
        }
    }
    if opts.hook_mode == HookMode::Auto && modes.iter().all(|(_, _, res)| res.is_err()) {
        r.problem(
            5,
            "hook mode auto: no hook family is available on this kernel",
        );
    }
    memlock(&mut r);
    finish(r)
}

fn finish(r: Report) -> ExitCode {
    match r.problems.first() {
        None => {
            println!(
                "config check passed ({} warning{})",
                r.warnings,
                if r.warnings == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Some((code, _)) => {
            eprintln!(
                "config check failed: {} problem{}",
                r.problems.len(),
                if r.problems.len() == 1 { "" } else { "s" }
            );
            ExitCode::from(*code as u8)
        }
    }
}

fn listen(r: &mut Report, opts: &RunArgs) {
    match std::net::TcpListener::bind(opts.listen) {
        Ok(_) => r.ok(format!("web.listen-address {} can be bound", opts.listen)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => r.warn(format!(
            "web.listen-address {} is in use now (by a running daemon?)",
            opts.listen
        )),
        Err(e) => r.error(&Error::Listen {
            addr: opts.listen.to_string(),
            source: e,
        }),
    }
}

/// Loading a trivial program of the type: a load, not an attach; needs the privileges.
fn loadable(t: ProgramType, can_load: bool) -> Result<(), String> {
    if !can_load {
        return Err("cannot probe program types without CAP_BPF + CAP_PERFMON".into());
    }
    match aya::sys::is_program_supported(t) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("the kernel does not load {t:?} programs")),
        Err(e) => {
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(inner) = src {
                why.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            Err(format!("loading a test {t:?} program: {why}"))
        }
    }
}

/// Both function-hook modes need the traced functions in BTF; a missing optional one is
/// named in the mode's note.
fn traced_functions(btf: &Btf) -> Result<String, String> {
    let mut note = String::new();
    for (f, required) in FUNCTIONS {
        if !btf.has_func(f) {
            if *required {
                return Err(format!("{f} is not in the kernel BTF"));
            }
            note = format!(" (no {f}: deaths seen by the state-change hook)");
        }
    }
    Ok(note)
}

fn mode_fentry(btf: &Btf, can_load: bool) -> Result<String, String> {
    let note = traced_functions(btf)?;
    loadable(ProgramType::Tracing, can_load)?;
    Ok(note)
}

/// Functions are looked up in BTF, not /proc/kallsyms (which the unit hides): a function the
/// BTF lists was not inlined away, so a kprobe can find it.
fn mode_kprobe(btf: &Btf, can_load: bool) -> Result<String, String> {
    let note = traced_functions(btf)?;
    if !Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        return Err("no kprobe PMU (/sys/bus/event_source/devices/kprobe/type)".into());
    }
    loadable(ProgramType::KProbe, can_load)?;
    Ok(note)
}

fn mode_tracepoint(rung: &[(&str, &str)], can_load: bool) -> Result<String, String> {
    let missing = tracepoints_missing(rung)?;
    if !missing.is_empty() {
        return Err(format!("tracepoints {} missing", missing.join(", ")));
    }
    loadable(ProgramType::RawTracePoint, can_load)?;
    Ok(String::new())
}

fn tracepoints_missing(list: &[(&str, &str)]) -> Result<Vec<String>, String> {
    let root = [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.is_dir())
    .ok_or("tracefs is not mounted: cannot tell which tracepoints exist")?;
    Ok(list
        .iter()
        .filter(|(c, e)| !root.join(c).join(e).is_dir())
        .map(|(c, e)| format!("{c}:{e}"))
        .collect())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn memlock(r: &mut Report) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= (5, 11) {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < 64 << 20 {
        r.warn(format!(
            "kernel {}.{} charges BPF maps to RLIMIT_MEMLOCK, which is {} KiB: raise it (LimitMEMLOCK=infinity)",
            version.0,
            version.1,
            lim.rlim_cur / 1024
        ));
    }
}
