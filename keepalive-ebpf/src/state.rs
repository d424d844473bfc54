//! What every hook family shares: the run of one keepalive timer callback on this CPU, the set
//! of sockets with probes outstanding, and event output.
//!
//! A keepalive timer callback runs in softirq context with the socket bh-locked, and timer
//! callbacks never nest on one CPU, so a single per-CPU slot describes "the keepalive timer
//! currently running here". Everything that happens to that socket between the timer's entry
//! and exit (a probe sent, the socket closed by `tcp_write_err`) is keepalive's doing.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use aya_log_ebpf::debug;
use keepalive_common::{
    EV_ANSWERED, EV_CLOSED, EV_PROBE, EV_PROBE_FAILED, EV_REARMED, EV_RESET, EV_SETTINGS,
    EV_SOCK_CLOSE, EV_SOCK_OPEN, EV_TIMEOUT, FLAG_DEATH_VIA_DONE, FLAG_PROBE_VIA_WAKEUP, RawEvent,
};

use crate::classify::{self, Outcome, TimerRun};
use crate::kernel::{
    self, ECONNRESET, EPIPE, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_FIN_WAIT2, TCP_LISTEN,
};

/// Events for the daemon. Size set by the daemon (`--ring-buffer-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Events that found the ring buffer full. Exported as `keepalive_events_lost_total`.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Sockets with keepalive probes outstanding → probes sent in the current run. A plain
/// (preallocated) hash whose size the daemon sets at load from the TCP sockets there are
/// (kernel/sizing.rs): an LRU evicted sockets in the middle of their run when a partition made
/// more of them probe at once than it held, and their answers and closes went unreported. An
/// insert that finds it full is counted in `UNTRACKED` instead; updating a socket already in
/// it never fails (the kernel swaps in a per-CPU spare element).
///
/// Entries do not outlive their run: every way a run ends removes the socket — an answer
/// (`timer_enter`), keepalive giving up (`dying`), a RST (`reset_received`), and any state
/// change out of the keepalive states, which every socket passes through before it is freed
/// (`state_changed`: FIN_WAIT1, LAST_ACK, CLOSE …). The one miss is a state change the kernel
/// skipped (counted as `keepalive_events_lost_total{stage="nested"}`), and that entry is
/// dropped when a later socket reuses the address and its keepalive timer finds no probes out.
#[map]
static PROBING: HashMap<u64, u8> = HashMap::with_max_entries(65536, 0);

/// Probe runs `PROBING` had no room for (map full). Exported as
/// `keepalive_events_lost_total{stage="tracking"}`: the answer, RST or close that ends such a
/// run is not reported.
#[map]
static UNTRACKED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// When the daemon was last woken (`bpf_ktime_get_ns`). One slot for all CPUs: a lost race
/// costs one extra or one skipped wake-up, and the daemon's drain tick covers the latter.
#[map]
static LAST_WAKE: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static CURRENT: PerCpuArray<TimerRun> = PerCpuArray::with_max_entries(1, 0);

/// Keepalive timer runs in progress on all CPUs. `timer_expire_exit` fires for every timer of
/// the machine; reading this one shared slot (an inlined array lookup, a cache hit while it
/// stays zero) lets it return before the per-CPU lookup, a helper call and often a cache miss.
/// Only the entry increments it and only an exit that finds its run decrements it, so it can
/// err high (a run whose exit never came), which costs the lookup, never low.
#[map]
static RUNS: Array<u64> = Array::with_max_entries(1, 0);

/// Atomic add whose result is unused, so that it compiles to the plain BPF_XADD every kernel
/// accepts (the fetching forms need 5.12). `AtomicU64::fetch_add` does not exist for the BPF
/// target, hence the intrinsic there.
#[inline(always)]
pub fn count(slot: *mut u64, delta: u64) {
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            slot, delta,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(slot) }
        .fetch_add(delta, core::sync::atomic::Ordering::Relaxed);
}

#[inline(always)]
fn current() -> Option<&'static mut TimerRun> {
    CURRENT.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// The current run, if it is for `sk`.
#[inline(always)]
pub fn current_for(sk: u64) -> Option<&'static mut TimerRun> {
    match current() {
        Some(run) if run.sk != 0 && run.sk == sk => Some(run),
        _ => None,
    }
}

/// The current run, if it has a `tcp_write_wakeup` call awaiting its return (kprobe mode).
#[inline(always)]
pub fn pending_wakeup() -> Option<&'static mut TimerRun> {
    match current() {
        Some(run) if run.sk != 0 && run.wakeup_pending != 0 => Some(run),
        _ => None,
    }
}

#[inline(always)]
pub fn emit(kind: u8, hook: u8, sk: u64, probes: u8, errno: i32) {
    emit_packed(sk, pack(kind, hook, probes, 0), errno, 0);
}

/// Records the calling process too: only for hooks that run in the socket owner's syscall.
const WITH_TASK: u32 = 1;

/// `state` overrides the socket's state when non-zero: `inet_sock_set_state` fires before the
/// new state is stored, so the socket still shows the old one there.
#[inline(always)]
fn emit_in_state(kind: u8, hook: u8, sk: u64, probes: u8, errno: i32, state: u8) {
    emit_packed(sk, pack(kind, hook, probes, state), errno, 0);
}

#[inline(always)]
fn pack(kind: u8, hook: u8, probes: u8, state: u8) -> u32 {
    u32::from_le_bytes([kind, hook, probes, state])
}

/// One out-of-line copy (BPF calls take at most five arguments, hence the packing), filling
/// the ring-buffer slot in place: a 128-byte record per inlined call site would overflow the
/// 512-byte BPF stack.
#[inline(never)]
fn emit_packed(sk: u64, meta: u32, errno: i32, opts: u32) {
    let [kind, hook, probes, state] = meta.to_le_bytes();
    match EVENTS.reserve::<RawEvent>(0) {
        Some(mut slot) => {
            let ev = unsafe {
                let p = slot.as_mut_ptr();
                core::ptr::write_bytes(p, 0, 1);
                &mut *p
            };
            ev.ts_ns = unsafe { bpf_ktime_get_ns() };
            ev.kind = kind;
            ev.hook = hook;
            ev.probes = probes;
            ev.errno = errno;
            kernel::describe(sk, ev);
            if state != 0 {
                ev.state = state;
            }
            if opts & WITH_TASK != 0 {
                ev.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
                ev.comm = bpf_get_current_comm().unwrap_or_default();
            }
            let flags = wake_flags(ev.ts_ns);
            slot.submit(flags);
        }
        None => {
            if let Some(n) = LOST.get_ptr_mut(0) {
                unsafe { *n += 1 };
            }
        }
    }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;
/// Wake the daemon at most this often while events flow.
const WAKE_EVERY_NS: u64 = 1_000_000;

/// Submit flags for a record written at `now`. A default submit wakes the daemon whenever the
/// ring was empty: an irq_work self-IPI and a scheduler wake-up paid inside the program, once
/// per event at moderate rates (most of an event's kernel cost, measured). Instead wake at most
/// once a millisecond, or at once when the ring is a quarter full so that a burst cannot fill
/// it before the daemon runs; after a wake-up the daemon drains again within 2 ms (pipeline.rs
/// `DRAIN_TICK`), so an event written without a wake-up waits at most that long.
#[inline(always)]
fn wake_flags(now: u64) -> u64 {
    let Some(last) = LAST_WAKE.get_ptr_mut(0) else {
        return 0;
    };
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA);
    let size = EVENTS.query(BPF_RB_RING_SIZE);
    if avail < size / 4 && now.wrapping_sub(unsafe { *last }) < WAKE_EVERY_NS {
        return BPF_RB_NO_WAKEUP;
    }
    unsafe { *last = now };
    BPF_RB_FORCE_WAKEUP
}

/// Keepalive timer entry. A socket that had probes out and now has none was answered.
#[inline(always)]
pub fn timer_enter(sk: u64, hook: u8) {
    let Some(run) = current() else { return };
    let Some(runs) = RUNS.get_ptr_mut(0) else {
        return;
    };
    count(runs, 1);
    let probes = kernel::probes_out(sk);
    *run = TimerRun {
        sk,
        probes_before: probes,
        wakeup_pending: 0,
        wakeup_probe: 0,
        died: 0,
        hook,
        closed: 0,
        wakeup_failed: 0,
        _pad: 0,
        segs_before: kernel::segs_out(sk),
        entry_jiffies: kernel::jiffies(),
    };
    if probes == 0 {
        if let Some(sent) = unsafe { PROBING.get(&sk) } {
            let sent = *sent;
            let _ = PROBING.remove(&sk);
            emit(EV_ANSWERED, hook, sk, sent, 0);
        }
    }
}

/// Keepalive timer exit: report the probe this run sent, if any.
#[inline(always)]
pub fn timer_exit() {
    let Some(runs) = RUNS.get_ptr_mut(0) else {
        return;
    };
    if unsafe { core::ptr::read_volatile(runs) } == 0 {
        return;
    }
    let Some(run) = current() else { return };
    let sk = run.sk;
    if sk == 0 {
        return;
    }
    run.sk = 0;
    count(runs, u64::MAX);
    if run.died != 0 || run.closed != 0 {
        return;
    }
    let probes = kernel::probes_out(sk);
    let outcome = if kernel::flag(FLAG_PROBE_VIA_WAKEUP) {
        classify::from_wakeup(run)
    } else {
        classify::from_tracepoints(run, sk, probes)
    };
    match outcome {
        Outcome::Probe => {
            if PROBING.insert(&sk, &probes, 0).is_err() {
                if let Some(n) = UNTRACKED.get_ptr_mut(0) {
                    unsafe { *n += 1 };
                }
            }
            emit(EV_PROBE, run.hook, sk, probes, 0);
        }
        Outcome::Failed(ret) => emit(EV_PROBE_FAILED, run.hook, sk, probes, ret),
        Outcome::Rearmed => emit(EV_REARMED, run.hook, sk, probes, 0),
    }
}

/// `tcp_write_wakeup(sk, mib)` returned `ret` (fentry/kprobe modes).
#[inline(always)]
pub fn wakeup_returned(sk: u64, mib: u32, ret: i32) {
    if let Some(run) = current_for(sk) {
        if mib == kernel::settings().mib_keepalive {
            classify::record_wakeup(run, ret);
        }
    }
}

/// The socket is being closed with `err` (from `tcp_done_with_error`, or `sk_err` read at the
/// CLOSE transition). Inside the keepalive timer that is keepalive giving up.
#[inline(always)]
pub fn dying<C: EbpfContext>(ctx: &C, sk: u64, err: i32, from_done: bool) {
    if let Some(run) = current_for(sk) {
        if run.died != 0 || from_done != kernel::flag(FLAG_DEATH_VIA_DONE) {
            return;
        }
        run.died = 1;
        // Keepalive only gives up with probes out; the same timer also ends orphaned
        // FIN_WAIT2 sockets (tcp_fin_timeout), which is no keepalive death.
        let probes = kernel::probes_out(sk);
        if probes == 0 {
            return;
        }
        let _ = PROBING.remove(&sk);
        debug!(ctx, "keepalive gave up on sk {:x}: errno {}", sk, err);
        emit(EV_TIMEOUT, run.hook, sk, probes, err);
    }
}

/// `sock:inet_sock_set_state`: the inventory's births and deaths, keepalive deaths in
/// tracepoint mode (CLOSE inside the keepalive timer), and cleanup of sockets that leave the
/// keepalive states mid-probe for any other reason (the application closed them,
/// retransmission gave up).
#[inline(always)]
pub fn state_changed<C: EbpfContext>(ctx: &C, sk: u64, newstate: u8, hook: u8) {
    if newstate == TCP_ESTABLISHED || newstate == TCP_LISTEN {
        if kernel::is_tcp(sk) {
            emit_in_state(EV_SOCK_OPEN, hook, sk, 0, 0, newstate);
        }
        return;
    }
    if keepalive_state(newstate) {
        return;
    }
    if newstate == TCP_CLOSE {
        if let Some(run) = current_for(sk) {
            run.closed = 1;
            dying(ctx, sk, kernel::write_err(sk), false);
        }
        emit(EV_SOCK_CLOSE, hook, sk, 0, 0);
    }
    if let Some(sent) = unsafe { PROBING.get(&sk) } {
        let sent = *sent;
        let _ = PROBING.remove(&sk);
        emit(EV_CLOSED, hook, sk, sent, 0);
    }
}

/// A setsockopt of a keepalive option succeeded, or accept() gave the socket a file: describe
/// the socket again so the inventory has its settings and owner.
#[inline(always)]
pub fn settings_changed(sk: u64, hook: u8) {
    if kernel::is_tcp(sk) {
        emit_packed(sk, pack(EV_SETTINGS, hook, 0, 0), 0, WITH_TASK);
    }
}

/// States in which the keepalive timer probes a socket its application still holds.
#[inline(always)]
fn keepalive_state(state: u8) -> bool {
    state == TCP_ESTABLISHED || state == TCP_CLOSE_WAIT || state == TCP_FIN_WAIT2
}

/// `tcp:tcp_receive_reset`: a RST with probes outstanding answers a probe (peer rebooted, or a
/// middlebox that forgot the idle flow).
#[inline(always)]
pub fn reset_received(sk: u64, hook: u8) {
    // A RST to a socket its application already closed is not keepalive's business.
    let state = kernel::state(sk);
    if !keepalive_state(state) || kernel::read::<u64>(sk, kernel::offsets().sk_socket) == 0 {
        return;
    }
    let probes = kernel::probes_out(sk);
    let tracked = unsafe { PROBING.get(&sk) }.copied();
    if probes == 0 && tracked.is_none() {
        return;
    }
    let _ = PROBING.remove(&sk);
    let errno = if state == TCP_CLOSE_WAIT {
        EPIPE
    } else {
        ECONNRESET
    };
    emit(
        EV_RESET,
        hook,
        sk,
        if probes > 0 {
            probes
        } else {
            tracked.unwrap_or(0)
        },
        errno,
    );
}
