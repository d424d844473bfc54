//! Writing events: one record per event, filled in place in the ring buffer from the
//! socket's copy (`sock.rs`), and when to wake the daemon.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use keepalive_common::{FLAG_CLOSES, RawEvent};

use crate::sock::{self, Sock};

/// Events for the daemon. Size set by the daemon (`--ring-buffer-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// What ends a probe run — keepalive giving up, a RST, a close mid-run — in a ring of its own,
/// so that a flood of probe events in `EVENTS` (a partition: every socket probing at once)
/// can never leave a death without room. At most one such record per socket in `PROBING`; the
/// daemon sizes it from the same socket count (kernel/sizing.rs) and drains it first.
#[map]
static RUN_ENDS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Events that found the ring buffer full. Exported as `keepalive_events_lost_total`.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Run-ending records that found `RUN_ENDS` full. Exported as
/// `keepalive_events_lost_total{stage="run_end"}`.
#[map]
static LOST_ENDS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// When the daemon was last woken (`bpf_ktime_get_ns`), per ring: [`EVENTS`, `RUN_ENDS`]. One
/// slot for all CPUs: a lost race costs one extra or one skipped wake-up, and the daemon's
/// drain tick covers the latter.
#[map]
static LAST_WAKE: Array<u64> = Array::with_max_entries(2, 0);

#[inline(always)]
pub fn emit(kind: u8, hook: u8, sock: &Sock, probes: u8, errno: i32) {
    emit_packed(
        sock.addr,
        sock.copy(),
        pack(kind, hook, probes, 0),
        errno,
        0,
    );
}

/// Records the calling process too: only for hooks that run in the socket owner's syscall.
pub const WITH_TASK: u32 = 1;

/// `state` overrides the socket's state when non-zero: `inet_sock_set_state` fires before the
/// new state is stored, so the socket still shows the old one there.
#[inline(always)]
pub fn emit_in_state(kind: u8, hook: u8, sock: &Sock, state: u8) {
    emit_packed(sock.addr, sock.copy(), pack(kind, hook, 0, state), 0, 0);
}

#[inline(always)]
pub fn pack(kind: u8, hook: u8, probes: u8, state: u8) -> u32 {
    u32::from_le_bytes([kind, hook, probes, state])
}

/// Writes an event that stands for an `answered` event too (probes = the `sent` in bits 8..16
/// of `opts`), just before its own: a keepalive run that finds its probe answered usually
/// sends the next one at once (the storm of BENCHMARKS.md section 1: every run; a burst of
/// sockets opened together). One record, so one reserve and half the ring space of two.
pub const AFTER_ANSWER: u32 = 2;

#[inline(always)]
pub fn emit_after_answer(kind: u8, hook: u8, sock: &Sock, probes: u8, errno: i32, sent: u8) {
    let opts = AFTER_ANSWER | (sent as u32) << 8;
    emit_packed(
        sock.addr,
        sock.copy(),
        pack(kind, hook, probes, 0),
        errno,
        opts,
    );
}

#[inline(always)]
fn count_lost(n: u64) {
    if let Some(lost) = LOST.get_ptr_mut(0) {
        unsafe { *lost += n };
    }
}

/// Zeroes a reserved record and writes what every record carries: time, `[kind, hook,
/// probes]`, errno and the socket's description. Returns the record's time.
#[inline(always)]
unsafe fn fill(
    ev: *mut RawEvent,
    sk: u64,
    copy: *const u8,
    [kind, hook, probes]: [u8; 3],
    errno: i32,
) -> u64 {
    unsafe {
        core::ptr::write_bytes(ev, 0, 1);
        let e = &mut *ev;
        e.ts_ns = bpf_ktime_get_ns();
        e.hook = hook;
        e.kind = kind;
        e.probes = probes;
        e.errno = errno;
        sock::describe(sk, copy, e);
        e.ts_ns
    }
}

/// A record that ends a probe run (`EV_TIMEOUT`, `EV_RESET`, `EV_CLOSED`), into `RUN_ENDS`.
/// Out of line for the same reason as `emit_packed`; `probes` comes from the kernel
/// (`icsk_probes_out`, or what `PROBING` held), never from counting probe events. `closes`:
/// taken at the CLOSE transition, the record stands for the socket's `EV_SOCK_CLOSE` too
/// (`FLAG_CLOSES`). Returns whether the record was written: when `RUN_ENDS` is full the
/// caller still writes the close into `EVENTS`, so the inventory learns it.
#[inline(never)]
pub fn emit_run_end(sk: u64, copy: *const u8, meta: u32, errno: i32, closes: u32) -> u32 {
    let [kind, hook, probes, _] = meta.to_le_bytes();
    let Some(mut slot) = RUN_ENDS.reserve::<RawEvent>(0) else {
        if let Some(lost) = LOST_ENDS.get_ptr_mut(0) {
            unsafe { *lost += 1 };
        }
        return 0;
    };
    let now = unsafe {
        let ev = slot.as_mut_ptr();
        let now = fill(ev, sk, copy, [kind, hook, probes], errno);
        if closes != 0 {
            (*ev).flags |= FLAG_CLOSES;
        }
        now
    };
    let avail = RUN_ENDS.query(BPF_RB_AVAIL_DATA);
    let size = RUN_ENDS.query(BPF_RB_RING_SIZE);
    slot.submit(wake_flags(now, 1, avail, size));
    1
}

/// A run's end that leaves the socket open (a RST is read before `tcp_done`); false when
/// `RUN_ENDS` had no room (counted).
#[inline(always)]
pub fn run_end(kind: u8, hook: u8, sock: &Sock, probes: u8, errno: i32) -> bool {
    let meta = pack(kind, hook, probes, 0);
    emit_run_end(sock.addr, sock.copy(), meta, errno, 0) != 0
}

/// A run's end taken at the socket's CLOSE transition, standing for the close too; false when
/// `RUN_ENDS` had no room (counted), and the close is still to be written.
#[inline(always)]
pub fn run_end_closing(kind: u8, hook: u8, sock: &Sock, probes: u8, errno: i32) -> bool {
    let meta = pack(kind, hook, probes, 0);
    emit_run_end(sock.addr, sock.copy(), meta, errno, 1) != 0
}

/// One out-of-line copy (BPF calls take at most five arguments, hence the packing and the
/// socket passed as its two halves), filling the ring-buffer slot in place from the socket's
/// copy (`sock.rs`): a 128-byte record per inlined call site would overflow the 512-byte BPF
/// stack.
#[inline(never)]
pub fn emit_packed(sk: u64, copy: *const u8, meta: u32, errno: i32, opts: u32) {
    let [kind, hook, probes, state] = meta.to_le_bytes();
    let answered = opts & AFTER_ANSWER != 0;
    let Some(mut slot) = EVENTS.reserve::<RawEvent>(0) else {
        count_lost(if answered { 2 } else { 1 });
        return;
    };
    let ev = slot.as_mut_ptr();
    let now = unsafe {
        fill(ev, sk, copy, [kind, hook, probes], errno);
        let e = &mut *ev;
        if state != 0 {
            e.state = state;
        }
        if answered {
            e.answered = ((opts >> 8) as u8).saturating_add(1);
        }
        if opts & WITH_TASK != 0 {
            e.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            e.comm = bpf_get_current_comm().unwrap_or_default();
        }
        e.ts_ns
    };
    let flags = wake_flags(
        now,
        0,
        EVENTS.query(BPF_RB_AVAIL_DATA),
        EVENTS.query(BPF_RB_RING_SIZE),
    );
    slot.submit(flags);
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;
/// Wake the daemon at most this often while events flow. Below the 6 ms the daemon keeps
/// draining on its 2 ms tick after the last record it found (three empty `DRAIN_TICK`s in
/// pipeline/event_loop.rs), so a record written without a wake-up is still drained within 2 ms.
/// Each wake-up is an irq_work self-IPI (a VM exit on the host) paid by the program that
/// submits: at 1 ms it added ≈ 250 ns per event to the timer exit in a 10 000 runs/s storm
/// (measured on the 6.18 host beside profiling programs on the same hook, 1 ms against 5 ms).
const WAKE_EVERY_NS: u64 = 5_000_000;

/// Submit flags for a record written at `now` into the ring whose wake-up time is in
/// `LAST_WAKE[ring]` and which holds `avail` of `size` bytes. A default submit wakes the daemon whenever the
/// ring was empty: an irq_work self-IPI and a scheduler wake-up paid inside the program, once
/// per event at moderate rates (most of an event's kernel cost, measured). Instead wake at most
/// once every `WAKE_EVERY_NS`, or at once when the ring is a quarter full so that a burst cannot
/// fill it before the daemon runs; after a wake-up the daemon drains again within 2 ms
/// (pipeline.rs `DRAIN_TICK`), so an event written without a wake-up waits at most that long.
#[inline(always)]
fn wake_flags(now: u64, ring: u32, avail: u64, size: u64) -> u64 {
    let Some(last) = LAST_WAKE.get_ptr_mut(ring) else {
        return 0;
    };
    if avail < size / 4 && now.wrapping_sub(unsafe { *last }) < WAKE_EVERY_NS {
        return BPF_RB_NO_WAKEUP;
    }
    unsafe { *last = now };
    BPF_RB_FORCE_WAKEUP
}
