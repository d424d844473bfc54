//! Kernel side of the keepalive observer.
//!
//! The daemon loads every program in this object and attaches, per hook, the best family the
//! running kernel accepts (fentry/fexit, then kprobe/kretprobe, then tracepoints). All families
//! feed the same per-CPU "keepalive timer run" bookkeeping in [`state`], so the events they emit
//! are identical whichever rung of the ladder is in use.
#![no_std]
#![no_main]
// `state::count`: the BPF target has no atomic read-modify-write methods in `core`.
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

mod classify;
mod emit;
mod ends;
mod kernel;
mod nesting;
mod sock;
mod state;

mod hooks {
    pub mod calibrate;
    pub mod fentry;
    pub mod iter;
    pub mod kprobe;
    pub mod syscalls;
    pub mod tracepoint;
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: fentry, raw tracepoints and bpf_probe_read_kernel require it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
