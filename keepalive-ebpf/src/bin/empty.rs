//! Comparison programs for `cargo xtask bench` (keepalive-bench), never loaded by the daemon.
//!
//! Each `empty_*` program attaches to a hook the daemon's tracepoint rung uses and does nothing,
//! so its `run_time_ns / run_cnt` (kernel.bpf_stats_enabled) is the floor every program on that
//! hook pays: dispatch plus the statistics' own clock reads. The daemon's programs are measured
//! next to these in the same run, on the same events. The `vm_*` programs at the end do the
//! same for the fentry and kprobe rungs, which only the 6.1 VM allows (section 1b).
//!
//! Three reference filters are not empty, each the cheapest form of a filter the daemon runs:
//! `filter_tmr_entry` reads `timer->function` with a helper and compares, as the daemon's raw
//! tracepoint must (it also counts keepalive expirations, which the bench needs to split the
//! entry cost into "keepalive timer" and "other timer"); `btf_filter_entry` does the same as a
//! BTF tracepoint (tp_btf), where the read is a plain load; `direct_enter_sso` reads the
//! setsockopt level and option straight from the tracepoint record instead of through the
//! `bpf_probe_read_kernel` helper that `TracePointContext::read_at` uses. They measure what
//! the proposed fixes in BENCHMARKS.md would bring.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, map, raw_tracepoint, tracepoint},
    maps::PerCpuArray,
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext,
        RetProbeContext, TracePointContext,
    },
};

#[raw_tracepoint(tracepoint = "timer_expire_entry")]
pub fn empty_tmr_entry(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "timer_expire_exit")]
pub fn empty_tmr_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn empty_set_state(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn empty_rcv_reset(_ctx: RawTracePointContext) -> i32 {
    0
}

#[tracepoint]
pub fn empty_enter_sso(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn empty_exit_sso(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn empty_accept(_ctx: TracePointContext) -> u32 {
    0
}

/// The daemon's startup walk runs an `iter/tcp` program once per socket; this one writes
/// nothing, so the difference is the cost of describing a socket.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn empty_iter_tcp(_ctx: *mut u64) -> i32 {
    0
}

/// Address of `tcp_keepalive_timer` (from /proc/kallsyms), set by the bench before loading.
#[unsafe(no_mangle)]
static KA_TIMER_FN: u64 = 0;
/// Offset of `timer_list.function` (from BTF), set by the bench before loading.
#[unsafe(no_mangle)]
static TIMER_FUNCTION_OFF: u64 = 0;

/// Keepalive timer expirations seen, per CPU.
#[map]
static KA_FIRED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[raw_tracepoint(tracepoint = "timer_expire_entry")]
pub fn filter_tmr_entry(ctx: RawTracePointContext) -> i32 {
    let timer: u64 = ctx.arg(0);
    // Volatile: the loader rewrites .rodata after compilation, so the zero must not be folded.
    let off = unsafe { core::ptr::read_volatile(&raw const TIMER_FUNCTION_OFF) };
    let want = unsafe { core::ptr::read_volatile(&raw const KA_TIMER_FN) };
    let function = unsafe { bpf_probe_read_kernel((timer + off) as *const u64) }.unwrap_or(0);
    if function != 0 && function == want {
        if let Some(n) = KA_FIRED.get_ptr_mut(0) {
            unsafe { *n += 1 };
        }
    }
    0
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn btf_tmr_entry(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Keepalive timer expirations seen by the tp_btf filter (slot 0), and keepalive setsockopt
/// calls seen by the direct-read filter (slot 1), so neither comparison can be optimised away.
#[map]
static REF_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

fn hit(slot: u32) {
    if let Some(n) = REF_HITS.get_ptr_mut(slot) {
        unsafe { *n += 1 };
    }
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn btf_filter_entry(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    let off = unsafe { core::ptr::read_volatile(&raw const TIMER_FUNCTION_OFF) };
    let want = unsafe { core::ptr::read_volatile(&raw const KA_TIMER_FN) };
    // A plain load: the verifier knows `timer` is a `struct timer_list *` (PTR_TO_BTF_ID) and
    // `off` a constant (read from frozen .rodata).
    let function = unsafe { core::ptr::read_volatile(timer.add(off as usize).cast::<u64>()) };
    if function == want {
        hit(0);
    }
    0
}

/// `syscalls:sys_enter_setsockopt`: `level` at 24 and `optname` at 32 in the record (8-byte
/// slots after the common header and `__syscall_nr`), read as context loads.
#[tracepoint]
pub fn direct_enter_sso(ctx: TracePointContext) -> u32 {
    let rec = ctx.as_ptr() as *const u64;
    let level = unsafe { core::ptr::read_volatile(rec.add(3)) } as u32;
    let optname = unsafe { core::ptr::read_volatile(rec.add(4)) } as u32;
    if (level == 1 && optname == 9) || (level == 6 && matches!(optname, 4 | 5 | 6 | 18)) {
        hit(1);
    }
    0
}

// The fentry and kprobe rungs (measured in the Debian 6.1 guest by `cargo xtask bench`, since
// the lockdown host refuses both): one empty twin per daemon program of
// keepalive-ebpf/src/hooks/{fentry,kprobe}.rs, on the same function and of the same kind, so
// the comparison pays the same trampoline or int3/kretprobe dispatch. Names stay within 15
// characters, the kernel's program name length, so a statistics reader sees them whole.
// Tested on: Debian 6.1 (QEMU).

/// `static void tcp_keepalive_timer(struct timer_list *t)`, entry.
#[fentry(function = "tcp_keepalive_timer")]
pub fn vm_fen_ka_timer(_ctx: FEntryContext) -> u32 {
    0
}

/// `static void tcp_keepalive_timer(struct timer_list *t)`, return.
#[fexit(function = "tcp_keepalive_timer")]
pub fn vm_fex_ka_timer(_ctx: FExitContext) -> u32 {
    0
}

/// `int tcp_write_wakeup(struct sock *sk, int mib)`, return.
#[fexit(function = "tcp_write_wakeup")]
pub fn vm_fex_wakeup(_ctx: FExitContext) -> u32 {
    0
}

/// `void tcp_done_with_error(struct sock *sk, int err)` (6.11+ and stable backports), entry.
#[fentry(function = "tcp_done_with_error")]
pub fn vm_fen_done_err(_ctx: FEntryContext) -> u32 {
    0
}

/// kprobe on `tcp_keepalive_timer`.
#[kprobe]
pub fn vm_kp_ka_timer(_ctx: ProbeContext) -> u32 {
    0
}

/// kretprobe on `tcp_keepalive_timer`.
#[kretprobe]
pub fn vm_krp_ka_timer(_ctx: RetProbeContext) -> u32 {
    0
}

/// kprobe on `tcp_write_wakeup`.
#[kprobe]
pub fn vm_kp_wakeup(_ctx: ProbeContext) -> u32 {
    0
}

/// kretprobe on `tcp_write_wakeup`.
#[kretprobe]
pub fn vm_krp_wakeup(_ctx: RetProbeContext) -> u32 {
    0
}

/// kprobe on `tcp_done_with_error`.
#[kprobe]
pub fn vm_kp_done_err(_ctx: ProbeContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_probe_read_kernel is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
