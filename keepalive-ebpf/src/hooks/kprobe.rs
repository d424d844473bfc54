//! kprobe/kretprobe family: for kernels with kprobes but no BTF trampolines (or where fentry is
//! refused). Same prototypes as the fentry family. Tested on: Debian 5.10, 6.1, 6.12, 7.2, 7.3
//! (QEMU, x86_64) and 6.12 (QEMU, arm64). The 6.18 lockdown host is built without
//! CONFIG_KPROBES.
//!
//! arm64: arguments and return values are read from `pt_regs` through aya-ebpf's
//! `ProbeContext::arg`/`RetProbeContext::ret`, which aya-build compiles for the daemon's target
//! (`bpf_target_arch`): `regs[0..7]` and `regs[0]` (x0) there, like libbpf's `PT_REGS_PARM*`;
//! nothing here reads `pt_regs` by hand.
use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use keepalive_common::HOOK_KPROBE;

use crate::{ends, kernel, state};

/// `static void tcp_keepalive_timer(struct timer_list *t)`
#[kprobe]
pub fn ka_kprobe_keepalive_timer(ctx: ProbeContext) -> u32 {
    let timer: u64 = ctx.arg(0).unwrap_or(0);
    if timer != 0 {
        state::timer_enter(kernel::sk_of_timer(timer), HOOK_KPROBE);
    }
    0
}

#[kretprobe]
pub fn ka_kretprobe_keepalive_timer(_ctx: RetProbeContext) -> u32 {
    state::timer_exit();
    0
}

/// `int tcp_write_wakeup(struct sock *sk, int mib)`: the arguments are only visible at entry,
/// the return value only at exit, so entry marks the run and exit completes it.
#[kprobe]
pub fn ka_kprobe_write_wakeup(ctx: ProbeContext) -> u32 {
    let sk: u64 = ctx.arg(0).unwrap_or(0);
    let mib: u64 = ctx.arg(1).unwrap_or(0);
    if let Some(run) = state::current_for(sk) {
        run.wakeup_pending = (mib as u32 == kernel::settings().mib_keepalive) as u8;
    }
    0
}

#[kretprobe]
pub fn ka_kretprobe_write_wakeup(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    if let Some(run) = state::pending_wakeup() {
        run.wakeup_pending = 0;
        crate::classify::record_wakeup(run, ret as i32);
    }
    0
}

/// `void tcp_done_with_error(struct sock *sk, int err)` (6.11+ and stable backports).
#[kprobe]
pub fn ka_kprobe_done_with_error(ctx: ProbeContext) -> u32 {
    let sk: u64 = ctx.arg(0).unwrap_or(0);
    let err: u64 = ctx.arg(1).unwrap_or(0);
    ends::dying(&ctx, sk, err as i32, true);
    0
}
