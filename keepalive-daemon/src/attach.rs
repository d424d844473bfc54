//! Loading the kernel programs and climbing down the hook ladder.
//!
//! Each logical hook tries fentry/fexit, then kprobe/kretprobe, then its tracepoint rung (in
//! `auto` mode), or exactly the forced family. A rung that fails is unloaded before the next is
//! tried, and any error drops the whole `Ebpf`, which detaches everything already attached: a
//! failed start leaves nothing behind in the kernel.
use std::path::Path;

use aya::{
    Btf, Ebpf, EbpfLoader, Endianness,
    maps::Array,
    programs::{
        BtfTracePoint, FEntry, FExit, Iter, KProbe, ProgramError, RawTracePoint, TracePoint,
    },
};
use keepalive_common::{FLAG_DEATH_VIA_DONE, FLAG_PROBE_VIA_WAKEUP, Offsets, Settings};
use log::{info, warn};

use crate::{
    cli::HookMode,
    error::{Error, Result},
};

/// The object built by `build.rs` from `keepalive-ebpf`.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keepalive"));

/// Where one logical hook ended up.
#[derive(Debug, Clone)]
pub struct HookStatus {
    pub hook: &'static str,
    pub mode: &'static str,
    /// Why the rung above was not used, or what the chosen rung cannot do.
    pub note: Option<String>,
    /// Rungs above the chosen one that the kernel refused, with its reason: exported as
    /// `keepalive_hook_rung_refused`, so a fallback is visible without the log.
    pub refused: Vec<(&'static str, String)>,
}

pub struct Attached {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
}

pub struct LoadParams<'a> {
    pub offsets: Offsets,
    pub settings: Settings,
    pub ring_bytes: u32,
    pub btf_path: &'a Path,
    pub has_done_with_error: bool,
    pub mode: HookMode,
    /// The syscall tracepoints' offsets were found; without them settings changes are unseen.
    pub settings_hooks: bool,
}

/// One rung of one hook: the programs to load, attached in order.
#[derive(Clone, Copy)]
enum Prog {
    FEntry(&'static str, &'static str),
    FExit(&'static str, &'static str),
    KProbe(&'static str, &'static str),
    RawTp(&'static str, &'static str),
    /// BTF tracepoint (tp_btf): program, tracepoint.
    BtfTp(&'static str, &'static str),
    /// Classic tracepoint: program, category, event.
    Tp(&'static str, &'static str, &'static str),
}

pub fn load(p: &LoadParams<'_>) -> Result<Attached> {
    let btf = Btf::parse_file(p.btf_path, Endianness::default()).map_err(|e| Error::Btf {
        path: p.btf_path.into(),
        reason: e.to_string(),
    })?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("OFFSETS", &p.offsets, true)
        .override_global("SETTINGS", &p.settings, true)
        .override_global(
            "TIMER_FILTER",
            &[
                p.offsets.timer_function as u64,
                p.settings.keepalive_timer_fn,
            ],
            true,
        )
        .map_max_entries("EVENTS", p.ring_bytes)
        .load(OBJECT)
        .map_err(load_error)?;

    if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf).map(spawn_logger) {
        warn!("kernel-side log messages unavailable: {e}");
    }

    let mut hooks = Vec::new();
    let timer = climb(&mut ebpf, &btf, p.mode, "keepalive_timer", TIMER, None)?;
    hooks.push(timer);

    let probe = climb(&mut ebpf, &btf, p.mode, "probe_sent", PROBE_SENT, None)?;
    set_flag(&mut ebpf, FLAG_PROBE_VIA_WAKEUP, probe.mode != "tracepoint")?;
    hooks.push(probe);

    let absent = (!p.has_done_with_error).then(|| {
        "tcp_done_with_error is not in this kernel (before 6.11 without the 2024 backport)"
            .to_string()
    });
    let death = climb(&mut ebpf, &btf, p.mode, "death", DEATH, absent)?;
    set_flag(&mut ebpf, FLAG_DEATH_VIA_DONE, death.mode != "tracepoint")?;
    hooks.push(death);

    for &(hook, progs) in ALWAYS {
        attach_all(&mut ebpf, &btf, progs).map_err(|reason| Error::HookRefused {
            hook,
            mode: "tracepoint",
            reason,
        })?;
        hooks.push(HookStatus {
            hook,
            mode: "tracepoint",
            note: None,
            refused: Vec::new(),
        });
    }
    if p.settings_hooks {
        attach_all(&mut ebpf, &btf, SETTINGS).map_err(|reason| Error::HookRefused {
            hook: "settings",
            mode: "tracepoint",
            reason,
        })?;
        hooks.push(HookStatus {
            hook: "settings",
            mode: "tracepoint",
            note: None,
            refused: Vec::new(),
        });
    }
    let iter_ok = match <&mut Iter>::try_from(
        ebpf.program_mut(ITER)
            .ok_or_else(|| Error::Load(format!("{ITER} missing")))?,
    ) {
        Ok(it) => it.load("tcp", &btf).map_err(|e| describe(&e)),
        Err(e) => Err(e.to_string()),
    };
    match iter_ok {
        Ok(()) => hooks.push(HookStatus {
            hook: "inventory",
            mode: "iterator",
            note: None,
            refused: Vec::new(),
        }),
        Err(e) => warn!(
            "TCP socket iterator unavailable ({e}): sockets opened before the daemon are not inventoried"
        ),
    }
    for h in &hooks {
        match &h.note {
            Some(note) => info!("hook {:<15} mode {:<10} ({note})", h.hook, h.mode),
            None => info!("hook {:<15} mode {}", h.hook, h.mode),
        }
    }
    Ok(Attached { ebpf, hooks })
}

type Rung = (&'static str, &'static [Prog]);

/// The ladders, best rung first. Program names are the functions in `keepalive-ebpf/src/hooks`.
const TIMER: &[Rung] = &[
    (
        "fentry",
        &[
            Prog::FEntry("ka_fentry_keepalive_timer", "tcp_keepalive_timer"),
            Prog::FExit("ka_fexit_keepalive_timer", "tcp_keepalive_timer"),
        ],
    ),
    (
        "kprobe",
        &[
            Prog::KProbe("ka_kprobe_keepalive_timer", "tcp_keepalive_timer"),
            Prog::KProbe("ka_kretprobe_keepalive_timer", "tcp_keepalive_timer"),
        ],
    ),
    (
        "tracepoint",
        &[
            Prog::BtfTp("ka_btf_timer_expire_entry", "timer_expire_entry"),
            Prog::BtfTp("ka_btf_timer_expire_exit", "timer_expire_exit"),
        ],
    ),
];
/// The tracepoint rung's timer pair as raw tracepoints, for kernels that refuse the BTF ones
/// above (before 5.5, or a verifier that rejects the typed load): the filter then reads
/// `timer->function` with a helper call, about 1.7× the cost of an empty program on the hook.
const TIMER_RAW_TP: &[Prog] = &[
    Prog::RawTp("ka_timer_expire_entry", "timer_expire_entry"),
    Prog::RawTp("ka_timer_expire_exit", "timer_expire_exit"),
];
const PROBE_SENT: &[Rung] = &[
    (
        "fentry",
        &[Prog::FExit("ka_fexit_write_wakeup", "tcp_write_wakeup")],
    ),
    (
        "kprobe",
        &[
            Prog::KProbe("ka_kprobe_write_wakeup", "tcp_write_wakeup"),
            Prog::KProbe("ka_kretprobe_write_wakeup", "tcp_write_wakeup"),
        ],
    ),
    // No program: the timer hooks see icsk_probes_out rise inside the keepalive timer.
    ("tracepoint", &[]),
];
const DEATH: &[Rung] = &[
    // Each hook that can be re-entered on a CPU comes with its twin (keepalive-ebpf/src/nesting.rs).
    (
        "fentry",
        &[
            Prog::FEntry("ka_fentry_done_with_error", "tcp_done_with_error"),
            Prog::FEntry("ka_nest_done_err", "tcp_done_with_error"),
        ],
    ),
    (
        "kprobe",
        &[Prog::KProbe(
            "ka_kprobe_done_with_error",
            "tcp_done_with_error",
        )],
    ),
    // The CLOSE transition inside the keepalive timer, seen by the state_change hook.
    ("tracepoint", &[]),
];
/// Tracepoints on every rung: they are already the cheapest hook for these events.
/// Each comes with its twin (keepalive-ebpf/src/nesting.rs).
const ALWAYS: &[(&str, &[Prog])] = &[
    (
        "state_change",
        &[
            Prog::RawTp("ka_inet_sock_set_state", "inet_sock_set_state"),
            Prog::RawTp("ka_nest_set_state", "inet_sock_set_state"),
        ],
    ),
    (
        "reset",
        &[
            Prog::RawTp("ka_tcp_receive_reset", "tcp_receive_reset"),
            Prog::RawTp("ka_nest_rcv_reset", "tcp_receive_reset"),
        ],
    ),
];
/// Settings changes and owners of accepted sockets, when the syscall tracepoints exist.
const SETTINGS: &[Prog] = &[
    Prog::Tp(
        "ka_sys_enter_setsockopt",
        "syscalls",
        "sys_enter_setsockopt",
    ),
    Prog::Tp("ka_sys_exit_setsockopt", "syscalls", "sys_exit_setsockopt"),
    Prog::Tp("ka_sys_exit_accept", "syscalls", "sys_exit_accept4"),
    Prog::Tp("ka_sys_exit_accept", "syscalls", "sys_exit_accept"),
];
const ITER: &str = "ka_iter_tcp";

/// Attaches the first rung the kernel accepts. `unavailable` marks the fentry and kprobe rungs
/// as impossible on this kernel (the target function does not exist).
fn climb(
    ebpf: &mut Ebpf,
    btf: &Btf,
    mode: HookMode,
    hook: &'static str,
    rungs: &[Rung],
    unavailable: Option<String>,
) -> Result<HookStatus> {
    let mut why_not: Vec<String> = Vec::new();
    let mut refused: Vec<(&'static str, String)> = Vec::new();
    for (rung, progs) in rungs {
        let forced = mode != HookMode::Auto;
        if forced && mode.as_str() != *rung {
            continue;
        }
        if let (true, Some(reason)) = (*rung != "tracepoint", &unavailable) {
            if forced {
                // Not a refusal: this kernel lacks the function. Say so and use the state hook.
                warn!("hook {hook}: {rung} impossible: {reason}; using the tracepoint rung");
                return Ok(HookStatus {
                    hook,
                    mode: "tracepoint",
                    note: Some(reason.clone()),
                    refused,
                });
            }
            why_not.push(format!("{rung}: {reason}"));
            continue;
        }
        let attached = attach_all(ebpf, btf, progs).or_else(|e| match (*rung, hook) {
            ("tracepoint", "keepalive_timer") => attach_all(ebpf, btf, TIMER_RAW_TP)
                .map(|()| {
                    warn!("hook {hook}: BTF tracepoints refused ({e}); using raw tracepoints")
                })
                .map_err(|raw| format!("tp_btf: {e}; raw tracepoint: {raw}")),
            _ => Err(e),
        });
        match attached {
            Ok(()) => {
                let note = (!why_not.is_empty()).then(|| why_not.join("; "));
                return Ok(HookStatus {
                    hook,
                    mode: rung,
                    note,
                    refused,
                });
            }
            Err(e) if forced => {
                return Err(Error::HookRefused {
                    hook,
                    mode: rung,
                    reason: e,
                });
            }
            Err(e) => {
                warn!("hook {hook}: {rung} rung refused: {e}; trying the next rung");
                why_not.push(format!("{rung}: {e}"));
                refused.push((*rung, e));
            }
        }
    }
    Err(Error::HookRefused {
        hook,
        mode: mode.as_str(),
        reason: why_not.join("; "),
    })
}

fn attach_all(ebpf: &mut Ebpf, btf: &Btf, progs: &[Prog]) -> std::result::Result<(), String> {
    for (i, prog) in progs.iter().enumerate() {
        if let Err(e) = attach(ebpf, btf, *prog) {
            // Undo the half-attached rung so the next one starts clean.
            for done in &progs[..i] {
                unload(ebpf, *done);
            }
            unload(ebpf, *prog);
            return Err(e);
        }
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, btf: &Btf, prog: Prog) -> std::result::Result<(), String> {
    let name = prog_name(prog);
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the eBPF object"))?;
    let r: std::result::Result<(), ProgramError> = (|| {
        match prog {
            Prog::FEntry(_, func) => {
                let p: &mut FEntry = p.try_into()?;
                p.load(func, btf)?;
                p.attach()?;
            }
            Prog::FExit(_, func) => {
                let p: &mut FExit = p.try_into()?;
                p.load(func, btf)?;
                p.attach()?;
            }
            Prog::KProbe(_, func) => {
                let p: &mut KProbe = p.try_into()?;
                p.load()?;
                p.attach(func, 0)?;
            }
            Prog::RawTp(_, tp) => {
                let p: &mut RawTracePoint = p.try_into()?;
                p.load()?;
                p.attach(tp)?;
            }
            Prog::BtfTp(_, tp) => {
                let p: &mut BtfTracePoint = p.try_into()?;
                p.load(tp, btf)?;
                p.attach()?;
            }
            Prog::Tp(_, category, event) => {
                let p: &mut TracePoint = p.try_into()?;
                // The same program serves accept and accept4: load once, attach twice.
                if p.fd().is_err() {
                    p.load()?;
                }
                p.attach(category, event)?;
            }
        }
        Ok(())
    })();
    r.map_err(|e| describe(&e))
}

fn prog_name(prog: Prog) -> &'static str {
    match prog {
        Prog::FEntry(n, _)
        | Prog::FExit(n, _)
        | Prog::KProbe(n, _)
        | Prog::RawTp(n, _)
        | Prog::BtfTp(n, _) => n,
        Prog::Tp(n, ..) => n,
    }
}

fn unload(ebpf: &mut Ebpf, prog: Prog) {
    let Some(p) = ebpf.program_mut(prog_name(prog)) else {
        return;
    };
    let _ = match prog {
        Prog::FEntry(..) => <&mut FEntry>::try_from(p).map(|p| p.unload()),
        Prog::FExit(..) => <&mut FExit>::try_from(p).map(|p| p.unload()),
        Prog::KProbe(..) => <&mut KProbe>::try_from(p).map(|p| p.unload()),
        Prog::RawTp(..) => <&mut RawTracePoint>::try_from(p).map(|p| p.unload()),
        Prog::BtfTp(..) => <&mut BtfTracePoint>::try_from(p).map(|p| p.unload()),
        Prog::Tp(..) => <&mut TracePoint>::try_from(p).map(|p| p.unload()),
    };
}

/// The kernel's reason: the verifier's own error line (the last line before its statistics),
/// with the statistics after it. The whole log goes to the debug log.
fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            log::debug!("verifier log:\n{log}");
            match verifier_reason(&log) {
                Some(reason) => format!("{io_error} (verifier: {reason})"),
                None => io_error.to_string(),
            }
        }
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// The verifier ends every log with statistics ("processed N insns …", "stack depth …",
/// "verification time …", and from 7.x one "subprog …" line per function), success or not; the
/// line naming the refusal comes just before them. 7.x also explains a refusal at length after
/// its classic one-line message: there the classic line and the "Verification failed:" summary
/// are the reason.
fn verifier_reason(log: &str) -> Option<String> {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let is_stats = |l: &&str| {
        l.starts_with("processed ")
            || l.starts_with("stack depth")
            || l.starts_with("verification time")
            || l.starts_with("subprog ")
    };
    let processed = lines.iter().find(|l| l.starts_with("processed ")).copied();
    let reason = match lines
        .iter()
        .position(|l| l.starts_with("Verification failed:"))
    {
        Some(0) => Some(lines[0].to_owned()),
        Some(i) => Some(format!("{} — {}", lines[i - 1], lines[i])),
        None => lines
            .iter()
            .rposition(|l| !is_stats(l))
            .map(|i| lines[i].to_owned()),
    };
    match (reason, processed) {
        (Some(r), Some(p)) => Some(format!("{r}; {p}")),
        (Some(r), None) => Some(r),
        (None, p) => p.map(str::to_owned),
    }
}

/// Runs the `iter/tcp` program once per network namespace: one record per TCP socket. The
/// kernel walks the namespace of the task that creates the iterator file, so each file is
/// created on a thread that entered the namespace. A namespace that cannot be entered (gone
/// meanwhile) is skipped with a warning. Returns the records and the namespaces walked.
pub fn inventory(ebpf: &mut Ebpf) -> std::result::Result<(Vec<u8>, Vec<u32>), String> {
    let it: &mut Iter = ebpf
        .program_mut(ITER)
        .ok_or("iterator missing")?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())?;
    let (mut out, mut walked_ns) = (Vec::new(), Vec::new());
    for (ino, path) in crate::netns::discover() {
        let link = it.attach().map_err(|e| describe(&e))?;
        let link = it.take_link(link).map_err(|e| describe(&e))?;
        let walked = std::thread::scope(|scope| {
            scope
                .spawn(move || -> std::result::Result<Vec<u8>, String> {
                    let ns = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                    // SAFETY: valid fd; changes only this short-lived thread.
                    if unsafe {
                        libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET)
                    } != 0
                    {
                        return Err(std::io::Error::last_os_error().to_string());
                    }
                    let mut file = link.into_file().map_err(|e| e.to_string())?;
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut file, &mut buf).map_err(|e| e.to_string())?;
                    Ok(buf)
                })
                .join()
                .unwrap_or_else(|_| Err("iterator thread panicked".into()))
        });
        match walked {
            Ok(buf) => {
                out.extend_from_slice(&buf);
                walked_ns.push(ino);
            }
            Err(e) => warn!("inventory of netns {ino} skipped: {e}"),
        }
    }
    Ok((out, walked_ns))
}

fn set_flag(ebpf: &mut Ebpf, index: u32, on: bool) -> Result<()> {
    let map = ebpf
        .map_mut("FLAGS")
        .ok_or_else(|| Error::Load("map FLAGS missing".into()))?;
    let mut flags: Array<_, u8> = Array::try_from(map).map_err(|e| Error::Load(e.to_string()))?;
    flags
        .set(index, on as u8, 0)
        .map_err(|e| Error::Load(e.to_string()))
}

fn load_error(e: aya::EbpfError) -> Error {
    let text = e.to_string();
    let perm = matches!(&e, aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
        if io_error.raw_os_error() == Some(libc::EPERM));
    if perm {
        Error::Privileges
    } else {
        Error::Load(text)
    }
}

fn spawn_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    tokio::spawn(async move {
        // SAFETY: the AsyncFd owns the logger and with it the ring buffer's descriptor.
        let Ok(mut fd) = (unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }) else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests;
