//! What one keepalive timer run did: sent a probe, counted one it could not send, or only
//! re-armed. fentry/kprobe see `tcp_write_wakeup`'s return value; the tracepoint rung has only
//! what it can read around the callback.
use crate::{
    kernel,
    sock::{self, Sock},
};

/// One keepalive timer run on a CPU, from entry to exit: what the hooks saw of it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TimerRun {
    /// Socket whose keepalive timer is running on this CPU, 0 when none.
    pub sk: u64,
    pub probes_before: u8,
    /// `tcp_write_wakeup` entered for the keepalive mib (kprobe mode: awaiting its return).
    pub wakeup_pending: u8,
    /// `tcp_write_wakeup` sent a keepalive probe (returned <= 0).
    pub wakeup_probe: u8,
    /// The socket died in this run (1); its death was reported (2, `ends.rs` `DIED_REPORTED`).
    pub died: u8,
    pub hook: u8,
    /// The socket reached CLOSE in this run (keepalive death, or an orphan's FIN_WAIT2
    /// timeout): it may be freed by the time the timer returns, so nothing is read at exit.
    pub closed: u8,
    /// `tcp_write_wakeup` returned this positive value for the keepalive mib (fentry/kprobe):
    /// the probe was counted but not sent.
    pub wakeup_failed: u8,
    /// The entry found the socket's probes answered: 1 + the probes the run had sent. The
    /// `answered` event is written at exit, from the one copy of the socket the exit takes
    /// anyway, when the kernel's callback has brought its cache lines in (a copy at entry
    /// paid for them cold: 0.9 µs against 0.4 µs at exit, measured on 6.18).
    pub answered: u8,
    /// `tcp_sock.segs_out` and `jiffies` at entry (tracepoint rung, see `timer_exit`).
    pub segs_before: u32,
    pub _pad: u32,
    pub entry_jiffies: u64,
}

pub enum Outcome {
    Probe,
    /// Counted by the kernel (`TcpExtTCPKeepAlive`), not sent; the positive return value of
    /// `tcp_write_wakeup` when the hook saw it, else 0.
    Failed(i32),
    Rearmed,
}

/// fentry/kprobe: the return value recorded by [`record_wakeup`] decides.
#[inline(always)]
pub fn from_wakeup(run: &TimerRun) -> Outcome {
    if run.wakeup_probe != 0 {
        Outcome::Probe
    } else if run.wakeup_failed != 0 {
        Outcome::Failed(run.wakeup_failed as i32)
    } else {
        Outcome::Rearmed
    }
}

/// What a run did, from what the tracepoint rung can read after it: the callback has already
/// dropped the socket lock, so another CPU may have changed the socket in between.
///
/// - `icsk_probes_out` rose: only the keepalive branch increments it, after a send that did not
///   fail. A probe.
/// - It did not rise, but the run handed a segment to IP (`segs_out` moved; the keepalive timer
///   sends nothing else, and a give-up closes the socket and is reported elsewhere) and re-armed
///   the timer at exactly `TCP_RESOURCE_PROBE_INTERVAL`: the kernel's "send failed, retry in
///   0.5 s" branch, taken only when `tcp_write_wakeup` returned > 0. A failed probe (the
///   return value itself is not visible here).
/// - It did not rise, the run sent, and the timer was re-armed at exactly the probe interval:
///   a probe whose answer was processed on another CPU between the unlock and this read, which
///   reset `icsk_probes_out` to 0 (measured on the 6.18 host under an 18 000 runs/s storm: a few
///   hundred per 450 000 runs, which the `probes_out` test alone lost).
/// - Anything else re-armed without probing (idle not reached yet, socket owned by the user).
#[inline(always)]
pub fn from_tracepoints(run: &TimerRun, sock: &Sock, probes: u8) -> Outcome {
    if probes > run.probes_before {
        return Outcome::Probe;
    }
    if sock.get::<u32>(kernel::offsets().tp_segs_out) == run.segs_before {
        return Outcome::Rearmed;
    }
    let Some(expires) = sock::keepalive_expires(sock.addr, sock.copy()) else {
        return Outcome::Rearmed;
    };
    // jiffies may tick once between the callback's re-arm and the entry reading.
    let delay = expires.wrapping_sub(run.entry_jiffies);
    let near = |want: u64| want != 0 && delay >= want && delay <= want + 1;
    if near(kernel::settings().resource_probe_jiffies as u64) {
        Outcome::Failed(0)
    } else if near(kernel::intvl_jiffies(sock) as u64) {
        Outcome::Probe
    } else {
        Outcome::Rearmed
    }
}

/// The keepalive branch's `tcp_write_wakeup` returned `ret`: <= 0 is a probe out (the kernel
/// increments `icsk_probes_out`), > 0 a probe counted but dropped before leaving the host.
#[inline(always)]
pub fn record_wakeup(run: &mut TimerRun, ret: i32) {
    if ret <= 0 {
        run.wakeup_probe = 1;
    } else {
        run.wakeup_failed = ret.min(255) as u8;
    }
}
