//! Tracepoint family: the rung every kernel has, and the only one on lockdown kernels without
//! kprobes whose fentry loads fail (the 6.18 development host).
//!
//! Raw tracepoints: arguments are the `TP_PROTO` arguments, so no per-kernel parsing of the
//! `format` files is needed. Tested on: 6.18.44 (host), Debian 5.10, 6.1, 6.12, 7.2, 7.3 (QEMU,
//! x86_64) and 6.12 (QEMU, arm64).
//!
//! The timer hooks come twice. `timer_expire_entry` fires for every timer-wheel expiry on the
//! machine, so its filter is most of what the daemon costs a quiet host: as a BTF tracepoint
//! (tp_btf, 5.5+) the verifier knows the argument is a `struct timer_list *` and reading
//! `timer->function` is a plain load, where a raw tracepoint needs a `bpf_probe_read_kernel`
//! call (measured on 6.18: 0.94× an empty program on the hook against 1.77×). The daemon
//! attaches the tp_btf pair and falls back to the raw pair (attach.rs).
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use keepalive_common::HOOK_TRACEPOINT;

use crate::{ends, kernel, nesting, state};

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

/// `timer_list.function` offset (from BTF) and the address of `tcp_keepalive_timer`, set by
/// the daemon at load. Two scalars rather than the whole `OFFSETS`: a volatile read of that
/// struct is a load per field, on every timer expiry of the machine.
#[unsafe(no_mangle)]
static TIMER_FILTER: [u64; 2] = [0; 2];

/// tp_btf twin of [`ka_timer_expire_entry`]; same prototype. Tested on: 6.18.44 (host).
#[btf_tracepoint(function = "timer_expire_entry")]
pub fn ka_btf_timer_expire_entry(ctx: BtfTracePointContext) -> i32 {
    try_btf_timer_expire_entry(ctx).unwrap_or(0)
}

#[inline(always)]
fn try_btf_timer_expire_entry(ctx: BtfTracePointContext) -> Result<i32, i32> {
    let timer: u64 = ctx.arg(0);
    // Volatile: the loader rewrites .rodata after compilation, so the zeros must not be
    // folded; to the verifier they are constants (frozen map), so the load below has a fixed
    // offset into `struct timer_list`, which it turns into a fault-safe load.
    let off = unsafe { core::ptr::read_volatile(&raw const TIMER_FILTER[0]) };
    let want = unsafe { core::ptr::read_volatile(&raw const TIMER_FILTER[1]) };
    if timer == 0 || want == 0 {
        return Ok(0);
    }
    let function = unsafe { core::ptr::read_volatile((timer + off) as *const u64) };
    if function == want {
        state::timer_enter(kernel::sk_of_timer(timer), HOOK_TRACEPOINT);
    }
    Ok(0)
}

/// tp_btf twin of [`ka_timer_expire_exit`]; same prototype. Tested on: 6.18.44 (host).
#[btf_tracepoint(function = "timer_expire_exit")]
pub fn ka_btf_timer_expire_exit(_ctx: BtfTracePointContext) -> i32 {
    state::timer_exit();
    0
}

/// `sock:inet_sock_set_state` — TP_PROTO(const struct sock *sk, const int oldstate,
/// const int newstate), 4.16+. Fires in process context too (connect, close), where softirqs
/// can interrupt it: see [`nesting`] for the twin below.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn ka_inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    nesting::primary(nesting::NEST_STATE, || set_state(&ctx));
    0
}

/// Twin of [`ka_inet_sock_set_state`], attached after it: runs the hook only in place of a
/// primary the kernel skipped because this CPU was already inside it.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn ka_nest_set_state(ctx: RawTracePointContext) -> i32 {
    nesting::twin(nesting::NEST_STATE, || set_state(&ctx));
    0
}

#[inline(always)]
fn set_state(ctx: &RawTracePointContext) {
    let sk: u64 = ctx.arg(0);
    let newstate: u64 = ctx.arg(2);
    ends::state_changed(ctx, sk, newstate as u8, HOOK_TRACEPOINT);
}

/// `tcp:tcp_receive_reset` — TP_PROTO(struct sock *sk), 4.15+. Fires at the top of
/// `tcp_reset`, before the socket's state changes; in process context when the RST waited in
/// the socket's backlog, hence a twin as well.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn ka_tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    nesting::primary(nesting::NEST_RESET, || {
        ends::reset_received(ctx.arg(0), HOOK_TRACEPOINT)
    });
    0
}

/// Twin of [`ka_tcp_receive_reset`] (see [`nesting`]).
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn ka_nest_rcv_reset(ctx: RawTracePointContext) -> i32 {
    nesting::twin(nesting::NEST_RESET, || {
        ends::reset_received(ctx.arg(0), HOOK_TRACEPOINT)
    });
    0
}
