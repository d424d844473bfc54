//! What every hook family shares: the run of one keepalive timer callback on this CPU, the set
//! of sockets with probes outstanding, and which events they make (written by `emit.rs`); how
//! a run ends — a death, a RST, a close — is in `ends.rs`.
//!
//! A keepalive timer callback runs in softirq context with the socket bh-locked, and timer
//! callbacks never nest on one CPU, so a single per-CPU slot describes "the keepalive timer
//! currently running here". Everything that happens to that socket between the timer's entry
//! and exit (a probe sent, the socket closed by `tcp_write_err`) is keepalive's doing.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use keepalive_common::{
    EV_ANSWERED, EV_PROBE, EV_PROBE_FAILED, EV_REARMED, EV_SETTINGS, FLAG_PROBE_VIA_WAKEUP,
};

use crate::classify::{self, Outcome, TimerRun};
use crate::emit::{WITH_TASK, emit, emit_after_answer, emit_packed, pack};
use crate::kernel;
use crate::sock::{self, Sock};

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
pub static PROBING: HashMap<u64, u8> = HashMap::with_max_entries(65536, 0);

/// Probe runs `PROBING` had no room for (map full). Exported as
/// `keepalive_events_lost_total{stage="tracking"}`: the answer, RST or close that ends such a
/// run is not reported.
#[map]
static UNTRACKED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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

/// Keepalive timer entry. A socket that had probes out and now has none was answered; the
/// event waits for the exit (see `TimerRun::answered`).
#[inline(always)]
pub fn timer_enter(sk: u64, hook: u8) {
    let Some(run) = current() else { return };
    let Some(runs) = RUNS.get_ptr_mut(0) else {
        return;
    };
    count(runs, 1);
    let o = kernel::offsets();
    let probes = kernel::read::<u8>(sk, o.icsk_probes_out);
    let mut answered = 0;
    if probes == 0 {
        if let Some(sent) = unsafe { PROBING.get(&sk) } {
            answered = sent.saturating_add(1).max(1);
            let _ = PROBING.remove(&sk);
        }
    }
    *run = TimerRun {
        sk,
        probes_before: probes,
        wakeup_pending: 0,
        wakeup_probe: 0,
        died: 0,
        hook,
        closed: 0,
        wakeup_failed: 0,
        answered,
        segs_before: kernel::read::<u32>(sk, o.tp_segs_out),
        _pad: 0,
        entry_jiffies: kernel::jiffies(),
    };
}

/// The `answered` event the entry of the current run deferred, if any (once).
#[inline(always)]
pub fn answered_in_run(run: &mut TimerRun, sock: &Sock) {
    if run.answered != 0 {
        let sent = run.answered - 1;
        run.answered = 0;
        emit(EV_ANSWERED, run.hook, sock, sent, 0);
    }
}

/// Keepalive timer exit: report the answer the entry found and what this run did.
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
    if run.answered == 0 && quiet_run(run, sk) {
        return;
    }
    // Something to report: the socket is copied once, here, and the copy serves the
    // classification and the events.
    let sock = sock::copy(sk);
    let probes = sock.get::<u8>(kernel::offsets().icsk_probes_out);
    let outcome = if kernel::flag(FLAG_PROBE_VIA_WAKEUP) {
        classify::from_wakeup(run)
    } else {
        classify::from_tracepoints(run, &sock, probes)
    };
    let (kind, errno) = match outcome {
        Outcome::Probe => {
            if PROBING.insert(&sk, &probes, 0).is_err() {
                if let Some(n) = UNTRACKED.get_ptr_mut(0) {
                    unsafe { *n += 1 };
                }
            }
            (EV_PROBE, 0)
        }
        Outcome::Failed(ret) => (EV_PROBE_FAILED, ret),
        Outcome::Rearmed => (EV_REARMED, 0),
    };
    match core::mem::take(&mut run.answered) {
        0 => emit(kind, run.hook, &sock, probes, errno),
        a => emit_after_answer(kind, run.hook, &sock, probes, errno, a - 1),
    }
}

/// A run that sent nothing and left `icsk_probes_out` as it found it: the timer only re-armed
/// (the socket had traffic within its idle time, or its owner held the lock). Nothing is
/// reported, so such runs cost the one or two reads that decide it instead of a copy of the
/// socket and an event (they were most runs on a busy host). The inventory learns the re-armed
/// timer and the traffic from its walks, which run before every read of `/sockets`, `/advice`
/// and the metrics (`ingest/activity.rs`, at most a second old; docs/metrics-and-events.md).
#[inline(always)]
fn quiet_run(run: &TimerRun, sk: u64) -> bool {
    let o = kernel::offsets();
    if kernel::flag(FLAG_PROBE_VIA_WAKEUP) {
        return run.wakeup_probe == 0
            && run.wakeup_failed == 0
            && kernel::read::<u8>(sk, o.icsk_probes_out) == run.probes_before;
    }
    // The tracepoint rung's test in `classify::from_tracepoints`: no probe counted out and no
    // segment handed to IP means no probe, sent or failed.
    kernel::read::<u8>(sk, o.icsk_probes_out) == run.probes_before
        && kernel::read::<u32>(sk, o.tp_segs_out) == run.segs_before
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

/// A setsockopt of a keepalive option succeeded, or accept() gave the socket a file: describe
/// the socket again so the inventory has its settings and owner.
#[inline(always)]
pub fn settings_changed(sk: u64, hook: u8) {
    let sock = sock::copy(sk);
    if sock::is_tcp(sk, sock.copy()) {
        emit_packed(sk, sock.copy(), pack(EV_SETTINGS, hook, 0, 0), 0, WITH_TASK);
    }
}
