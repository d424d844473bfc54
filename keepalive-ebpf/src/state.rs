//! What every hook family shares: the run of one keepalive timer callback on this CPU, the set
//! of sockets with probes outstanding, and which events they make (written by `emit.rs`).
//!
//! A keepalive timer callback runs in softirq context with the socket bh-locked, and timer
//! callbacks never nest on one CPU, so a single per-CPU slot describes "the keepalive timer
//! currently running here". Everything that happens to that socket between the timer's entry
//! and exit (a probe sent, the socket closed by `tcp_write_err`) is keepalive's doing.
use aya_ebpf::{
    EbpfContext,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use aya_log_ebpf::debug;
use keepalive_common::{
    EV_ANSWERED, EV_CLOSED, EV_PROBE, EV_PROBE_FAILED, EV_REARMED, EV_RESET, EV_SETTINGS,
    EV_SOCK_CLOSE, EV_SOCK_OPEN, EV_TIMEOUT, FLAG_DEATH_VIA_DONE, FLAG_PROBE_VIA_WAKEUP,
};

use crate::classify::{self, Outcome, TimerRun};
use crate::emit::{
    WITH_TASK, emit, emit_after_answer, emit_in_state, emit_packed, pack, run_end, run_end_closing,
};
use crate::kernel::{
    self, ECONNREFUSED, ECONNRESET, EPIPE, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED,
    TCP_FIN_WAIT2, TCP_LISTEN,
};
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
static PROBING: HashMap<u64, u8> = HashMap::with_max_entries(65536, 0);

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
fn answered_in_run(run: &mut TimerRun, sock: &Sock) {
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

/// `tcp_done_with_error(sk, err)`: inside the keepalive timer that is keepalive giving up.
#[inline(always)]
pub fn dying<C: EbpfContext>(ctx: &C, sk: u64, err: i32, from_done: bool) {
    if current_for(sk).is_some() {
        died(ctx, &sock::copy(sk), err, from_done);
    }
}

/// The socket is being closed with `err` (from `tcp_done_with_error`, or `sk_err` read at the
/// CLOSE transition). Inside the keepalive timer that is keepalive giving up. True when the
/// death's record, written at the CLOSE transition, stands for the close too.
#[inline(always)]
fn died<C: EbpfContext>(ctx: &C, sock: &Sock, err: i32, from_done: bool) -> bool {
    let sk = sock.addr;
    if let Some(run) = current_for(sk) {
        if run.died != 0 || from_done != kernel::flag(FLAG_DEATH_VIA_DONE) {
            return false;
        }
        run.died = DIED;
        // The exit reports nothing for a run that ended the socket.
        answered_in_run(run, sock);
        // Keepalive only gives up with probes out; the same timer also ends orphaned
        // FIN_WAIT2 sockets (tcp_fin_timeout), which is no keepalive death.
        let probes = sock.get::<u8>(kernel::offsets().icsk_probes_out);
        if probes == 0 {
            return false;
        }
        let _ = PROBING.remove(&sk);
        debug!(ctx, "keepalive gave up on sk {:x}: errno {}", sk, err);
        let written = if from_done {
            run_end(EV_TIMEOUT, run.hook, sock, probes, err)
        } else {
            run_end_closing(EV_TIMEOUT, run.hook, sock, probes, err)
        };
        if written {
            run.died = DIED_REPORTED;
        }
        return written && !from_done;
    }
    false
}

/// `TimerRun::died`: the run ended its socket (the exit reports nothing) …
const DIED: u8 = 1;
/// … and a death was reported for it (the close then carries no error, see `state_changed`).
const DIED_REPORTED: u8 = 2;

/// `sock:inet_sock_set_state`: the inventory's births and deaths, keepalive deaths in
/// tracepoint mode (CLOSE inside the keepalive timer), and cleanup of sockets that leave the
/// keepalive states mid-probe for any other reason (the application closed them,
/// retransmission gave up).
#[inline(always)]
pub fn state_changed<C: EbpfContext>(ctx: &C, sk: u64, newstate: u8, hook: u8) {
    if newstate == TCP_ESTABLISHED || newstate == TCP_LISTEN {
        let sock = sock::copy(sk);
        if sock::is_tcp(sk, sock.copy()) {
            emit_in_state(EV_SOCK_OPEN, hook, &sock, newstate);
        }
        return;
    }
    if keepalive_state(newstate) {
        return;
    }
    if newstate == TCP_CLOSE {
        let sock = sock::copy(sk);
        let o = kernel::offsets();
        // `ended`: a run's end written here stands for the close too (`FLAG_CLOSES`: one
        // record per death, not two, when a partition ends every probing socket at once);
        // `reported`: the socket's keepalive death was reported, here or by `dying`.
        let (ended, reported) = if let Some(run) = current_for(sk) {
            run.closed = 1;
            answered_in_run(run, &sock);
            let ended = died(ctx, &sock, kernel::write_err(&sock), false);
            let reported = current_for(sk).is_some_and(|run| run.died == DIED_REPORTED);
            (ended, reported)
        } else {
            let ended = died_unseen(&sock, hook);
            (ended, ended)
        };
        if ended || closed_mid_run(&sock, hook, true) {
            return;
        }
        // The daemon audits TcpExtTCPAbortOnTimeout against the deaths reported plus the
        // closes that carry an error a timeout leaves (ingest/unseen.rs), so that a death the
        // kernel called none of our programs for is still counted. A reported death's close
        // carries none: it would count twice, and closes share the ring that overflows.
        let err = if reported { 0 } else { sock.get::<i32>(o.sk_err) };
        emit(EV_SOCK_CLOSE, hook, &sock, 0, err);
        return;
    }
    if unsafe { PROBING.get(&sk) }.is_some() {
        closed_mid_run(&sock::copy(sk), hook, false);
    }
}

/// A socket closing outside any keepalive timer run this program saw, with keepalive on and
/// exactly as many probes out as its keepalive limit, and the error `tcp_write_err` leaves:
/// keepalive gave up in a timer run the entry hook was not called for (the kernel skips the
/// daemon's timer programs for some runs under load, docs/unseen-probes.md — 2.2 % of a
/// 200 000-socket partition's deaths went unreported so, and their earlier runs can be
/// unseen too, so `PROBING` may not know the socket). Not a death: a RST (it sets
/// ECONNRESET/EPIPE/ECONNREFUSED, and `reset_received` reported the run's end), the zero-window
/// probe timer giving up (its count passes `tcp_retries2`, 15, not the keepalive limit unless
/// the two are set equal), `TCP_USER_TIMEOUT` with fewer probes out (a close mid-run). A death
/// the timer hooks saw happened inside their run, so it is never reported twice.
/// Returns whether it reported one.
#[inline(always)]
fn died_unseen(sock: &Sock, hook: u8) -> bool {
    let o = kernel::offsets();
    let probes = sock.get::<u8>(o.icsk_probes_out);
    if probes == 0 {
        return false;
    }
    let flags = sock.get::<u64>(o.sk_flags);
    if o.sock_keepopen_bit >= 64 || flags & (1u64 << o.sock_keepopen_bit) == 0 {
        return false;
    }
    let cnt = match sock.get::<u8>(o.tp_keepalive_probes) {
        0 => {
            let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
            sock::net_info(sock.get::<u64>(o.skc_net), now).3
        }
        c => c,
    };
    let err = sock.get::<i32>(o.sk_err);
    if probes != cnt || err == 0 || err == ECONNRESET || err == EPIPE || err == ECONNREFUSED {
        return false;
    }
    let _ = PROBING.remove(&sock.addr);
    run_end_closing(EV_TIMEOUT, hook, sock, probes, kernel::write_err(sock))
}

/// A socket leaving the keepalive states: the end of its probe run, if it was in one.
/// `closing`: it leaves for CLOSE, and the record written stands for the close too (then
/// true is returned; its errno is the close's `sk_err`); otherwise it moves on to FIN_WAIT1,
/// LAST_ACK …, which closes nothing.
#[inline(always)]
fn closed_mid_run(sock: &Sock, hook: u8, closing: bool) -> bool {
    let Some(sent) = (unsafe { PROBING.get(&sock.addr) }).copied() else {
        return false;
    };
    let _ = PROBING.remove(&sock.addr);
    if closing {
        // The error travels with the record for the close it stands for (see the audit in
        // `state_changed`): a retransmission timeout's ETIMEDOUT is a close the kernel counts.
        let err = sock.get::<i32>(kernel::offsets().sk_err);
        return run_end_closing(EV_CLOSED, hook, sock, sent, err);
    }
    run_end(EV_CLOSED, hook, sock, sent, 0);
    false
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

/// States in which the keepalive timer probes a socket its application still holds.
#[inline(always)]
fn keepalive_state(state: u8) -> bool {
    state == TCP_ESTABLISHED || state == TCP_CLOSE_WAIT || state == TCP_FIN_WAIT2
}

/// `tcp:tcp_receive_reset`: a RST with probes outstanding answers a probe (peer rebooted, or a
/// middlebox that forgot the idle flow).
#[inline(always)]
pub fn reset_received(sk: u64, hook: u8) {
    // Most RSTs are for sockets not in a probe run: two cheap checks before copying it.
    let o = kernel::offsets();
    let probes = kernel::read::<u8>(sk, o.icsk_probes_out);
    let tracked = unsafe { PROBING.get(&sk) }.copied();
    if probes == 0 && tracked.is_none() {
        return;
    }
    // A RST to a socket its application already closed is not keepalive's business.
    let sock = sock::copy(sk);
    let state = sock.get::<u8>(o.skc_state);
    if !keepalive_state(state) || sock.get::<u64>(o.sk_socket) == 0 {
        return;
    }
    let _ = PROBING.remove(&sk);
    let errno = if state == TCP_CLOSE_WAIT {
        EPIPE
    } else {
        ECONNRESET
    };
    let sent = if probes > 0 {
        probes
    } else {
        tracked.unwrap_or(0)
    };
    run_end(EV_RESET, hook, &sock, sent, errno);
}
