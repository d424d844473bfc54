//! How a probe run ends, and the socket's state changes: keepalive giving up (inside the
//! timer run `state.rs` tracks, or in one the kernel did not call our timer programs for), a
//! RST with probes out, a close mid-run; and the inventory's births and closes. Each run's end
//! goes to the run-end ring (`emit.rs`), and at the CLOSE transition stands for the close too.
use aya_ebpf::EbpfContext;
use aya_log_ebpf::debug;
use keepalive_common::{
    EV_CLOSED, EV_RESET, EV_SOCK_CLOSE, EV_SOCK_OPEN, EV_TIMEOUT, FLAG_DEATH_VIA_DONE,
};

use crate::emit::{emit, emit_in_state, run_end, run_end_closing};
use crate::kernel::{
    self, ECONNREFUSED, ECONNRESET, EPIPE, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED,
    TCP_FIN_WAIT2, TCP_LISTEN,
};
use crate::sock::{self, Sock};
use crate::state::{PROBING, answered_in_run, current_for};

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
        let err = if reported {
            0
        } else {
            sock.get::<i32>(o.sk_err)
        };
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
