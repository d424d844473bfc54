//! The hook ladder: for each logical hook its rungs, best first, and the climb that attaches
//! the first rung the kernel accepts (or exactly the forced one).
use aya::{Btf, Ebpf};
use log::warn;

use super::{
    HookStatus,
    program::{Prog, attach_all},
};
use crate::{
    error::{Error, Result},
    service::cli::HookMode,
};

pub(super) type Rung = (&'static str, &'static [Prog]);

/// The ladders, best rung first. Program names are the functions in `keepalive-ebpf/src/hooks`.
pub(super) const TIMER: &[Rung] = &[
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
pub(super) const TIMER_RAW_TP: &[Prog] = &[
    Prog::RawTp("ka_timer_expire_entry", "timer_expire_entry"),
    Prog::RawTp("ka_timer_expire_exit", "timer_expire_exit"),
];
pub(super) const PROBE_SENT: &[Rung] = &[
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
pub(super) const DEATH: &[Rung] = &[
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
pub(super) const ALWAYS: &[(&str, &[Prog])] = &[
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
pub(super) const SETTINGS: &[Prog] = &[
    Prog::Tp(
        "ka_sys_enter_setsockopt",
        "syscalls",
        "sys_enter_setsockopt",
    ),
    Prog::Tp("ka_sys_exit_setsockopt", "syscalls", "sys_exit_setsockopt"),
    Prog::Tp("ka_sys_exit_accept", "syscalls", "sys_exit_accept4"),
    Prog::Tp("ka_sys_exit_accept", "syscalls", "sys_exit_accept"),
];
pub(super) const ITER: &str = "ka_iter_tcp";

/// Attaches the first rung the kernel accepts. `unavailable` marks the fentry and kprobe rungs
/// as impossible on this kernel (the target function does not exist).
pub(super) fn climb(
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
