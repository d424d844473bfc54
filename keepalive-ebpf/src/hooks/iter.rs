//! `iter/tcp` (5.9+): the startup inventory of every TCP socket in every namespace.
//! Tested on: 6.18.44 (host), Debian 5.10, 6.1, 6.12, 7.2, 7.3 (QEMU, x86_64), 6.12 (QEMU, arm64).
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_seq_write},
    macros::map,
    maps::PerCpuArray,
};
use keepalive_common::{EV_INVENTORY, HOOK_TRACEPOINT, RawEvent};

use crate::{kernel, sock};

/// The record is built here, not on the stack: with a 150-byte stack record every branch of
/// `describe` leaves a different stack, the verifier cannot prune, and loading took 2.5 s on
/// the host (minutes under TCG). A map value keeps the verifier's states comparable.
#[map]
static SCRATCH: PerCpuArray<RawEvent> = PerCpuArray::with_max_entries(1, 0);

const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;

/// `struct bpf_iter__tcp { struct bpf_iter_meta *meta; struct sock_common *sk_common;
/// uid_t uid; }`, each pointer in an 8-byte union; `bpf_iter_meta` starts with `seq`.
/// aya-ebpf 0.2 has no `#[iter]` macro, so the section is named by hand. The context pointers
/// must be loaded directly (not with probe_read): the verifier needs `seq` typed as a
/// `seq_file` pointer for `bpf_seq_write`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn ka_iter_tcp(ctx: *mut u64) -> i32 {
    let meta = unsafe { core::ptr::read_volatile(ctx) } as *const u64;
    let sk = unsafe { core::ptr::read_volatile(ctx.add(1)) };
    if meta.is_null() || sk == 0 {
        return 0;
    }
    let seq = unsafe { core::ptr::read_volatile(meta) };
    // Time-wait and request sockets are only a `sock_common`: nothing keepalive-related.
    let state = kernel::state(sk);
    if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
        return 0;
    }
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let rec = unsafe {
        core::ptr::write_bytes(rec, 0, 1);
        &mut *rec
    };
    rec.ts_ns = unsafe { bpf_ktime_get_ns() };
    rec.kind = EV_INVENTORY;
    rec.hook = HOOK_TRACEPOINT;
    let sock = sock::copy(sk);
    sock::describe(sk, sock.copy(), rec);
    unsafe {
        bpf_seq_write(
            seq as *mut _,
            (rec as *const RawEvent).cast(),
            RawEvent::SIZE as u32,
        )
    };
    0
}
