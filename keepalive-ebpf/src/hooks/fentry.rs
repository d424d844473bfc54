//! fentry/fexit family (BTF trampolines, 5.5+): the cheapest hooks and the only ones that see
//! `tcp_write_wakeup`'s mib argument and return value together.
//! Tested on: Debian 5.10, 6.1, 6.12, 7.2, 7.3 (QEMU, x86_64) and 6.12 (QEMU, arm64). Refused
//! (EPERM) by the lockdown host kernel.
use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_probe_read_kernel,
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use keepalive_common::HOOK_FENTRY;

use crate::{ends, nesting, state};

/// `static void tcp_keepalive_timer(struct timer_list *t)` — never inlined: it is a timer
/// callback, so it has a trampoline-able symbol on every kernel.
#[fentry(function = "tcp_keepalive_timer")]
pub fn ka_fentry_keepalive_timer(ctx: FEntryContext) -> u32 {
    let timer: u64 = ctx.arg(0);
    state::timer_enter(crate::kernel::sk_of_timer(timer), HOOK_FENTRY);
    0
}

#[fexit(function = "tcp_keepalive_timer")]
pub fn ka_fexit_keepalive_timer(_ctx: FExitContext) -> u32 {
    state::timer_exit();
    0
}

/// `int tcp_write_wakeup(struct sock *sk, int mib)` — shared by keepalive and zero-window
/// probes; for `LINUX_MIB_TCPKEEPALIVE` a return <= 0 is a probe out, > 0 a probe the kernel
/// counted but could not send (`probe_failed`).
#[fexit(function = "tcp_write_wakeup")]
pub fn ka_fexit_write_wakeup(ctx: FExitContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let mib: u64 = ctx.arg(1);
    let ret: u64 = ctx.arg(2);
    state::wakeup_returned(sk, mib as u32, ret as i32);
    0
}

/// `void tcp_done_with_error(struct sock *sk, int err)` — 6.11+ and the 2024 stable backports
/// (6.1.y, 6.6.y, 5.15.y). Called by the inlined `tcp_write_err` when keepalive gives up, and
/// by `tcp_reset` in process context (backlog), which softirqs can interrupt: hence the twin
/// (see [`crate::nesting`]).
#[fentry(function = "tcp_done_with_error")]
pub fn ka_fentry_done_with_error(ctx: FEntryContext) -> u32 {
    nesting::primary(nesting::NEST_DONE, || done_with_error(&ctx));
    0
}

#[fentry(function = "tcp_done_with_error")]
pub fn ka_nest_done_err(ctx: FEntryContext) -> u32 {
    nesting::twin(nesting::NEST_DONE, || done_with_error(&ctx));
    0
}

#[inline(always)]
fn done_with_error(ctx: &FEntryContext) {
    let sk = scalar_arg(ctx, 0);
    let err: u64 = ctx.arg(1);
    ends::dying(ctx, sk, err as i32, true);
}

/// Argument `n` as a plain number. Loaded from the context, a pointer argument is a typed
/// kernel pointer to the verifier (`ptr_sock`), and Debian's 7.3 refuses every operation on
/// one but adding or subtracting an offset: `ends::dying` logs `sk` in hex, which shifts it
/// byte by byte into the log record, and the whole death program was refused with "R4 pointer
/// arithmetic with >>= operator prohibited … Register Type Safety: Invalid pointer arithmetic
/// operator" (6.1 and 6.12 accepted the same object). Copied out of the context with
/// bpf_probe_read_kernel the value is a scalar, as a kprobe's register is: one helper call, on
/// a function that only runs when a connection dies.
#[inline(always)]
fn scalar_arg(ctx: &FEntryContext, n: usize) -> u64 {
    // SAFETY: the fentry context is the array of the traced function's arguments, one u64 each.
    let slot = unsafe { (ctx.as_ptr() as *const u64).add(n) };
    unsafe { bpf_probe_read_kernel(slot) }.unwrap_or(0)
}
