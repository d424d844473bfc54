//! Syscall tracepoints: settings changes and owners, on every rung of the ladder.
//!
//! TCP_KEEPINTVL, TCP_KEEPCNT and TCP_USER_TIMEOUT are set inline in `do_tcp_setsockopt` before
//! 6.6, so no kernel function marks them on every kernel; the setsockopt syscall does, once per
//! call. Field offsets come from the tracepoints' `format` files (see the daemon's tracefs.rs).
//! Tested on: 6.18.44 (host), Debian 5.10, 6.1, 6.12, 7.2, 7.3 (QEMU, x86_64) and 6.12 (QEMU,
//! arm64): arm64's syscall records have the same layout (`struct syscall_trace_enter/exit`),
//! and its generic syscall table has accept, accept4 and setsockopt, so the same four
//! tracepoints exist there.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_get_current_task},
    macros::{map, tracepoint},
    maps::{Array, HashMap},
    programs::TracePointContext,
};
use keepalive_common::HOOK_TRACEPOINT;

use crate::{kernel, state};

const SOL_SOCKET: u64 = 1;
const SO_KEEPALIVE: u64 = 9;
const IPPROTO_TCP: u64 = 6;
const TCP_KEEPIDLE: u64 = 4;
const TCP_KEEPINTVL: u64 = 5;
const TCP_KEEPCNT: u64 = 6;
const TCP_USER_TIMEOUT: u64 = 18;

/// Thread → socket of a keepalive setsockopt in progress that changes a value. Bounded; a
/// thread has one call at a time. The syscall holds a reference on the socket's file from
/// entry to exit, so the socket found at entry is still the one at exit.
#[map]
static SETSOCKOPT: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

fn keepalive_option(level: u64, optname: u64) -> bool {
    (level == SOL_SOCKET && optname == SO_KEEPALIVE)
        || (level == IPPROTO_TCP
            && matches!(
                optname,
                TCP_KEEPIDLE | TCP_KEEPINTVL | TCP_KEEPCNT | TCP_USER_TIMEOUT
            ))
}

/// Keepalive setsockopt calls in flight (entries of `SETSOCKOPT`). Every setsockopt of the
/// machine exits through `ka_sys_exit_setsockopt`, and almost none is a keepalive one: reading
/// this slot (an inlined array lookup) spares them the hash lookup, which misses (measured
/// 1.99× an empty program with the lookup on every call). Incremented only after an insert
/// succeeded and decremented only after a remove did, so it never undercounts.
#[map]
static IN_FLIGHT: Array<u64> = Array::with_max_entries(1, 0);

/// A field of the tracepoint record. Syscall records are `struct trace_entry` (8 bytes), the
/// syscall number (padded to 8), then one 8-byte slot per argument (`struct
/// syscall_trace_enter`/`_exit`, the same since 2.6.33), so the offsets the format files give
/// are these on every kernel. Context loads must have their offset in the instruction: a
/// constant per arm, where the verifier prunes every arm but the one `off` (frozen .rodata)
/// selects. Anything else falls back to `bpf_probe_read_kernel`, two calls per setsockopt that
/// cost twice an empty program (measured on 6.18).
#[inline(always)]
fn field(ctx: &TracePointContext, off: u32) -> u64 {
    let rec = ctx.as_ptr() as *const u64;
    match off {
        16 => unsafe { core::ptr::read_volatile(rec.add(2)) },
        24 => unsafe { core::ptr::read_volatile(rec.add(3)) },
        32 => unsafe { core::ptr::read_volatile(rec.add(4)) },
        40 => unsafe { core::ptr::read_volatile(rec.add(5)) },
        48 => unsafe { core::ptr::read_volatile(rec.add(6)) },
        _ => unsafe { ctx.read_at::<u64>(off as usize) }.unwrap_or(u64::MAX),
    }
}

/// `syscalls:sys_enter_setsockopt` (int fd, int level, int optname, char *optval, int optlen)
#[tracepoint]
pub fn ka_sys_enter_setsockopt(ctx: TracePointContext) -> u32 {
    try_sys_enter_setsockopt(&ctx);
    0
}

#[inline(always)]
fn try_sys_enter_setsockopt(ctx: &TracePointContext) {
    let o = kernel::offsets();
    let level = field(ctx, o.tp_setsockopt_level) as u32 as u64;
    let optname = field(ctx, o.tp_setsockopt_optname) as u32 as u64;
    if !keepalive_option(level, optname) {
        return;
    }
    let sk = socket_of_fd(field(ctx, o.tp_setsockopt_fd) as u32 as u64);
    // optval and optlen follow optname, one 8-byte slot each (the fixed layout of `field`).
    let slot = o.tp_setsockopt_optname.wrapping_add(8);
    let (optval, optlen) = (field(ctx, slot), field(ctx, slot.wrapping_add(8)));
    if sk == 0 || unchanged(sk, level, optname, optval, optlen as u32) {
        return;
    }
    let Some(n) = IN_FLIGHT.get_ptr_mut(0) else {
        return;
    };
    if SETSOCKOPT
        .insert(&bpf_get_current_pid_tgid(), &sk, 0)
        .is_ok()
    {
        state::count(n, 1);
    }
}

/// Whether the call leaves the option as it is: the socket already holds the value (as the
/// kernel stores it), or the value is too short (the kernel refuses it). Such calls make no
/// event, so an application that sets its options again on every request costs this entry
/// program and no copy of the socket. When unsure (the value not readable here — a page not
/// yet faulted in, which the kernel's own copy would fault in — or no HZ known), a change.
#[inline(always)]
fn unchanged(sk: u64, level: u64, optname: u64, optval: u64, optlen: u32) -> bool {
    if optlen < 4 {
        return true;
    }
    let Ok(val) = (unsafe { bpf_probe_read_user(optval as *const i32) }) else {
        return false;
    };
    let o = kernel::offsets();
    if level == SOL_SOCKET {
        let flags = kernel::read::<u64>(sk, o.sk_flags);
        let on = o.sock_keepopen_bit < 64 && flags & (1u64 << o.sock_keepopen_bit) != 0;
        return on == (val != 0);
    }
    // TCP_KEEPIDLE and TCP_KEEPINTVL are seconds, kept in jiffies (HZ = 2 × HZ/2).
    let hz = kernel::settings().resource_probe_jiffies as i64 * 2;
    let jiffies = |off: u32| hz != 0 && kernel::read::<u32>(sk, off) as i64 == val as i64 * hz;
    match optname {
        TCP_KEEPIDLE => jiffies(o.tp_keepalive_time),
        TCP_KEEPINTVL => jiffies(o.tp_keepalive_intvl),
        TCP_KEEPCNT => kernel::read::<u8>(sk, o.tp_keepalive_probes) as i32 == val,
        _ => kernel::read::<u32>(sk, o.icsk_user_timeout) as i32 == val,
    }
}

/// `syscalls:sys_exit_setsockopt` (long ret)
#[tracepoint]
pub fn ka_sys_exit_setsockopt(ctx: TracePointContext) -> u32 {
    try_sys_exit_setsockopt(&ctx);
    0
}

#[inline(always)]
fn try_sys_exit_setsockopt(ctx: &TracePointContext) {
    let Some(n) = IN_FLIGHT.get_ptr_mut(0) else {
        return;
    };
    if unsafe { core::ptr::read_volatile(n) } == 0 {
        return;
    }
    let tid = bpf_get_current_pid_tgid();
    let Some(sk) = (unsafe { SETSOCKOPT.get(&tid) }).copied() else {
        return;
    };
    if SETSOCKOPT.remove(&tid).is_ok() {
        state::count(n, u64::MAX);
    }
    if field(ctx, kernel::offsets().tp_setsockopt_ret) == 0 {
        state::settings_changed(sk, HOOK_TRACEPOINT);
    }
}

/// `syscalls:sys_exit_accept4` and `sys_exit_accept` (long ret = the new fd): an accepted
/// socket gets its file (and so its owner) only here, after its ESTABLISHED transition.
#[tracepoint]
pub fn ka_sys_exit_accept(ctx: TracePointContext) -> u32 {
    let fd = field(&ctx, kernel::offsets().tp_setsockopt_ret) as i64;
    if fd >= 0 {
        state::settings_changed(socket_of_fd(fd as u64), HOOK_TRACEPOINT);
    }
    0
}

/// current->files->fdt->fd[fd]->private_data->sk; 0 when anything on the way is missing.
fn socket_of_fd(fd: u64) -> u64 {
    if fd >= 1 << 20 {
        return 0;
    }
    let o = kernel::offsets();
    let task = unsafe { bpf_get_current_task() };
    let files = kernel::read::<u64>(task, o.task_files);
    let fdt = kernel::read::<u64>(files, o.files_fdt);
    let array = kernel::read::<u64>(fdt, o.fdtable_fd);
    if array == 0 {
        return 0;
    }
    let file = kernel::read::<u64>(array + fd * 8, 0);
    let socket = kernel::read::<u64>(file, o.file_private_data);
    kernel::read::<u64>(socket, o.socket_sk)
}
