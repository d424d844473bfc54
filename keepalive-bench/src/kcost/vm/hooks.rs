//! The programs section 1b compares: each of the daemon's fentry- and kprobe-rung programs with
//! its empty twin in keepalive-empty, on the same kernel function and of the same kind. Kept
//! apart from the guest's measurement and the host's write-up, which both read it.

/// Kind of attachment, as aya names the program types.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    FEntry,
    FExit,
    KProbe,
}

/// (mode, hook as printed, kernel function, kind, the daemon's program, its empty twin in
/// keepalive-empty). The daemon's side mirrors keepalive-daemon/src/kernel/attach/ladder.rs's ladders.
pub(super) type Pair = (
    &'static str,
    &'static str,
    &'static str,
    Kind,
    &'static str,
    &'static str,
);
pub(super) const PAIRS: &[Pair] = &[
    (
        "fentry",
        "tcp_keepalive_timer/fentry",
        "tcp_keepalive_timer",
        Kind::FEntry,
        "ka_fentry_keepalive_timer",
        "vm_fen_ka_timer",
    ),
    (
        "fentry",
        "tcp_keepalive_timer/fexit",
        "tcp_keepalive_timer",
        Kind::FExit,
        "ka_fexit_keepalive_timer",
        "vm_fex_ka_timer",
    ),
    (
        "fentry",
        "tcp_write_wakeup/fexit",
        "tcp_write_wakeup",
        Kind::FExit,
        "ka_fexit_write_wakeup",
        "vm_fex_wakeup",
    ),
    (
        "fentry",
        "tcp_done_with_error/fentry",
        "tcp_done_with_error",
        Kind::FEntry,
        "ka_fentry_done_with_error",
        "vm_fen_done_err",
    ),
    // The twin that stands in for the primary when an interrupt re-enters it (nesting.rs).
    (
        "fentry",
        "tcp_done_with_error/fentry-twin",
        "tcp_done_with_error",
        Kind::FEntry,
        "ka_nest_done_err",
        "vm_fen_done_err",
    ),
    (
        "kprobe",
        "tcp_keepalive_timer/kprobe",
        "tcp_keepalive_timer",
        Kind::KProbe,
        "ka_kprobe_keepalive_timer",
        "vm_kp_ka_timer",
    ),
    (
        "kprobe",
        "tcp_keepalive_timer/kretprobe",
        "tcp_keepalive_timer",
        Kind::KProbe,
        "ka_kretprobe_keepalive_timer",
        "vm_krp_ka_timer",
    ),
    (
        "kprobe",
        "tcp_write_wakeup/kprobe",
        "tcp_write_wakeup",
        Kind::KProbe,
        "ka_kprobe_write_wakeup",
        "vm_kp_wakeup",
    ),
    (
        "kprobe",
        "tcp_write_wakeup/kretprobe",
        "tcp_write_wakeup",
        Kind::KProbe,
        "ka_kretprobe_write_wakeup",
        "vm_krp_wakeup",
    ),
    (
        "kprobe",
        "tcp_done_with_error/kprobe",
        "tcp_done_with_error",
        Kind::KProbe,
        "ka_kprobe_done_with_error",
        "vm_kp_done_err",
    ),
];

/// Programs that emit an event on every run under the storm (state.rs: `timer_enter` reports the
/// answer to the previous probe, `timer_exit` the probe sent or the re-arm).
pub(super) const EVENT_PATH: &[&str] = &[
    "ka_fentry_keepalive_timer",
    "ka_fexit_keepalive_timer",
    "ka_kprobe_keepalive_timer",
    "ka_kretprobe_keepalive_timer",
];
