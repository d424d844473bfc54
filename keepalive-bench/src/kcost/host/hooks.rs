//! The programs section 1 compares: each of the daemon's tracepoint-rung programs with the empty
//! program keepalive-empty attaches to the same hook, and the reference filters that show what a
//! filter written another way would cost. Kept apart from the measurement so that a new hook is
//! one row here.
use std::collections::HashMap;

/// (hook, the daemon's program, the empty program next to it). The timer pair is either the
/// tp_btf one or, where the kernel refuses it, the raw one (only the attached pair is loaded);
/// either is compared with the empty raw tracepoint on the same hook: both kinds are called the
/// same way (`bpf_trace_run*`), which `btf_tmr_entry` in the reference table checks.
pub(super) const PAIRS: &[(&str, &str, &str)] = &[
    (
        "timer_expire_entry (tp_btf)",
        "ka_btf_timer_expire_entry",
        "empty_tmr_entry",
    ),
    (
        "timer_expire_entry (raw tp)",
        "ka_timer_expire_entry",
        "empty_tmr_entry",
    ),
    (
        "timer_expire_exit (tp_btf)",
        "ka_btf_timer_expire_exit",
        "empty_tmr_exit",
    ),
    (
        "timer_expire_exit (raw tp)",
        "ka_timer_expire_exit",
        "empty_tmr_exit",
    ),
    (
        "inet_sock_set_state (raw tp)",
        "ka_inet_sock_set_state",
        "empty_set_state",
    ),
    (
        "inet_sock_set_state (raw tp, twin)",
        "ka_nest_set_state",
        "empty_set_state",
    ),
    (
        "tcp_receive_reset (raw tp)",
        "ka_tcp_receive_reset",
        "empty_rcv_reset",
    ),
    (
        "tcp_receive_reset (raw tp, twin)",
        "ka_nest_rcv_reset",
        "empty_rcv_reset",
    ),
    (
        "sys_enter_setsockopt (tp)",
        "ka_sys_enter_setsockopt",
        "empty_enter_sso",
    ),
    (
        "sys_exit_setsockopt (tp)",
        "ka_sys_exit_setsockopt",
        "empty_exit_sso",
    ),
    (
        "sys_exit_accept4/accept (tp)",
        "ka_sys_exit_accept",
        "empty_accept",
    ),
];
/// Hooks whose common path the noise condition exercises.
pub(super) const COMMON: &[&str] = &[
    "ka_btf_timer_expire_entry",
    "ka_timer_expire_entry",
    "ka_btf_timer_expire_exit",
    "ka_timer_expire_exit",
    "ka_sys_enter_setsockopt",
    "ka_sys_exit_setsockopt",
];
/// Reference filters from keepalive-empty: (hook, program, its empty baseline, what it is).
pub(super) const REFS: &[(&str, &str, &str, &str)] = &[
    (
        "timer_expire_entry (raw tp)",
        "filter_tmr_entry",
        "empty_tmr_entry",
        "bare filter: read `function` with the helper, compare",
    ),
    (
        "timer_expire_entry (tp_btf)",
        "btf_tmr_entry",
        "empty_tmr_entry",
        "empty tp_btf program (vs the empty raw tp)",
    ),
    (
        "timer_expire_entry (tp_btf)",
        "btf_filter_entry",
        "btf_tmr_entry",
        "same filter as a tp_btf program: a plain load",
    ),
    (
        "sys_enter_setsockopt (tp)",
        "direct_enter_sso",
        "empty_enter_sso",
        "the daemon's filter with context loads instead of the helper",
    ),
];

/// The timer pair the daemon attached: the tp_btf one unless the kernel refused it, then the
/// raw one. (tp_btf attached, entry program, exit program.)
pub(super) fn attached_timer_pair(
    names: &HashMap<String, Vec<u32>>,
) -> (bool, &'static str, &'static str) {
    if names.contains_key("ka_btf_timer_expire_entry") {
        (
            true,
            "ka_btf_timer_expire_entry",
            "ka_btf_timer_expire_exit",
        )
    } else {
        (false, "ka_timer_expire_entry", "ka_timer_expire_exit")
    }
}
