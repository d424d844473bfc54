//! Reading kernel memory at offsets the daemon found in BTF.
//!
//! There is no CO-RE in Rust eBPF: every field is read with `bpf_probe_read_kernel` at
//! `base + OFFSETS.<field>` — a socket's fields from one copy of it (`sock.rs`), the rest one
//! by one. A failed read yields zero, which the callers treat as "unknown";
//! a socket that vanished under us produces a harmless, zero-filled event at worst.
use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::map, maps::Array};
use keepalive_common::{ABSENT, FLAG_COUNT, Offsets, Settings};

use crate::sock::{self, Sock};

/// Filled by the daemon with `EbpfLoader::set_global` before load.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = unsafe { core::mem::zeroed() };

/// Filled by the daemon with `EbpfLoader::set_global` before load.
#[unsafe(no_mangle)]
static SETTINGS: Settings = unsafe { core::mem::zeroed() };

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;
pub const EPIPE: i32 = 32;
pub const ECONNRESET: i32 = 104;
pub const ECONNREFUSED: i32 = 111;
pub const ETIMEDOUT: i32 = 110;

/// The offsets, by reference. The loader rewrites .rodata after compilation, so the compiler
/// must not fold the zero initialiser into the code: the address goes through a volatile read,
/// after which the compiler no longer knows what it points at, and each field used is one load
/// (the verifier still sees a pointer into the frozen map, so the values are constants to it).
/// A volatile read of the whole struct instead copied its ~50 fields to the stack at every
/// call, several times per event.
#[inline(always)]
pub fn offsets() -> &'static Offsets {
    let p: *const Offsets = &raw const OFFSETS;
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// The settings, by reference (see [`offsets`]).
#[inline(always)]
pub fn settings() -> &'static Settings {
    let p: *const Settings = &raw const SETTINGS;
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// Run-time switches written by the daemon after attaching; see `FLAG_*`.
#[map]
static FLAGS: Array<u8> = Array::with_max_entries(FLAG_COUNT, 0);

#[inline(always)]
pub fn flag(index: u32) -> bool {
    FLAGS.get(index).copied().unwrap_or(0) != 0
}

#[inline(always)]
pub fn read<T: Default>(base: u64, off: u32) -> T {
    if base == 0 || off == ABSENT {
        return T::default();
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.unwrap_or_default()
}

#[inline(always)]
pub fn jiffies() -> u64 {
    unsafe { aya_ebpf::helpers::generated::bpf_jiffies64() }
}

/// The keepalive interval in effect for the socket, in jiffies (`keepalive_intvl_when`).
#[inline(always)]
pub fn intvl_jiffies(sock: &Sock) -> u32 {
    let o = offsets();
    match sock.get::<u32>(o.tp_keepalive_intvl) {
        0 => {
            let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
            sock::net_info(sock.get::<u64>(o.skc_net), now).2
        }
        v => v,
    }
}

#[inline(always)]
pub fn state(sk: u64) -> u8 {
    read::<u8>(sk, offsets().skc_state)
}

/// Socket address derived from the keepalive `timer_list` address.
#[inline(always)]
pub fn sk_of_timer(timer: u64) -> u64 {
    timer.wrapping_sub(offsets().keepalive_timer as u64)
}

/// The error `tcp_write_err` gave the socket: `sk_err`, which it sets to `sk_err_soft ?:
/// ETIMEDOUT` just before closing. The woken application may already have consumed `sk_err`
/// (SO_ERROR, recv) on another CPU by the time the CLOSE transition is seen; the same rule
/// then recovers what it was.
#[inline(always)]
pub fn write_err(sock: &Sock) -> i32 {
    let o = offsets();
    match sock.get::<i32>(o.sk_err) {
        0 => match sock.get::<i32>(o.sk_err_soft) {
            0 => ETIMEDOUT,
            soft => soft,
        },
        err => err,
    }
}
