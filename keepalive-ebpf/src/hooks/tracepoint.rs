//! Tracepoint family: the rung every kernel has, and the only one on lockdown kernels without
//! kprobes whose fentry loads fail (the 6.18 development host).
//!
//! Raw tracepoints: arguments are the `TP_PROTO` arguments, so no per-kernel parsing of the
//! `format` files is needed. Tested on: 6.18.44 (host), Debian 5.10, 6.1, 6.12 (QEMU).
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use keepalive_common::HOOK_TRACEPOINT;

use crate::{kernel, state};

/// `timer:timer_expire_entry` — TP_PROTO(struct timer_list *timer, unsigned long baseclk)
/// (the second argument is `now` before 5.6; unused). Fires for every timer wheel callback, so
/// the first thing done is the callback-address filter.
#[raw_tracepoint(tracepoint = "timer_expire_entry")]
pub fn ka_timer_expire_entry(ctx: RawTracePointContext) -> i32 {
    let timer: u64 = ctx.arg(0);
    let function = kernel::read::<u64>(timer, kernel::offsets().timer_function);
    if function != 0 && function == kernel::settings().keepalive_timer_fn {
        state::timer_enter(kernel::sk_of_timer(timer), HOOK_TRACEPOINT);
    }
    0
}

/// `timer:timer_expire_exit` — TP_PROTO(struct timer_list *timer). The timer (and the socket)
/// may already be freed here, so only the per-CPU run recorded at entry is trusted.
#[raw_tracepoint(tracepoint = "timer_expire_exit")]
pub fn ka_timer_expire_exit(_ctx: RawTracePointContext) -> i32 {
    state::timer_exit();
    0
}

/// `sock:inet_sock_set_state` — TP_PROTO(const struct sock *sk, const int oldstate,
/// const int newstate), 4.16+.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn ka_inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let newstate: u64 = ctx.arg(2);
    state::state_changed(&ctx, sk, newstate as u8, HOOK_TRACEPOINT);
    0
}

/// `tcp:tcp_receive_reset` — TP_PROTO(struct sock *sk), 4.15+. Fires at the top of
/// `tcp_reset`, before the socket's state changes.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn ka_tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    state::reset_received(sk, HOOK_TRACEPOINT);
    0
}
