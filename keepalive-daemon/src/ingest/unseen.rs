//! Probes the kernel sent that no event reported, found by comparing each namespace's own count
//! of keepalive probes (`TcpExtTCPKeepAlive` in its /proc/net/netstat) with the probe events the
//! daemon received for that namespace; and the same for connections ended on a timeout
//! (`TcpExtTCPAbortOnTimeout` against the keepalive deaths reported plus the other closes with
//! a timeout's error, [`timeout_aborts`]).
//!
//! Why: a program that is not called cannot count its own miss. On the 6.18 development host,
//! under load from other work on the machine, the kernel sometimes does not call the daemon's
//! `timer_expire_entry` program for the tail of a long timer softirq, while an ftrace probe on
//! the same tracepoint records those runs, and counts no recursion miss: in an 18 000 runs/s
//! storm, 3 604 of 399 374 runs, exactly the probe shortfall (docs/unseen-probes.md). So the
//! count comes from the kernel's own bookkeeping. `probe_failed` events count too: the kernel
//! counts a probe before sending it.
//!
//! The comparison lags one poll: the kernel's count from the previous poll against the events
//! received by now, so a probe whose event is still on its way (the counter moves inside the
//! timer, the event after it) is never taken for a lost one; and the event loop calls the
//! audit only once it has dispatched every record committed before the previous poll's counts
//! arrived (`pipeline/inputs.rs` `audit`), since under a flood it falls seconds behind. Losses
//! in the ring buffer (`keepalive_events_lost_total{stage="kernel"}`) show up here too; that
//! is the one overlap (for timeout closes also `stage="run_end"`: a death lost there).
use std::collections::{HashMap, HashSet};

#[derive(Debug)]
struct Namespace {
    /// Kernel count and events received when the namespace was first audited.
    base_kernel: u64,
    base_seen: u64,
    /// Kernel count at the previous poll.
    last_kernel: u64,
    /// Unseen probes already reported.
    reported: u64,
}

impl Namespace {
    fn starting(kernel: u64, seen: u64) -> Self {
        Namespace {
            base_kernel: kernel,
            base_seen: seen,
            last_kernel: kernel,
            reported: 0,
        }
    }
}

/// One kernel counter audited per namespace against the events that stand for it: the
/// probes (`TcpExtTCPKeepAlive`), or the timeout closes (`TcpExtTCPAbortOnTimeout`).
#[derive(Default)]
pub struct CounterAudit {
    seen: HashMap<u32, u64>,
    namespaces: HashMap<u32, Namespace>,
}

impl CounterAudit {
    /// An event the audited counter counts (a probe, or a close by a timeout) for a socket
    /// in `netns` reached the daemon.
    pub fn saw(&mut self, netns: u32) {
        *self.seen.entry(netns).or_default() += 1;
    }

    /// Takes one poll of the kernel counters (namespace → `TcpExtTCPKeepAlive`); returns the
    /// probes newly found unseen, per namespace. Namespaces missing from `counts` are forgotten
    /// (no socket of ours left there, or it could not be entered).
    pub fn audit(&mut self, counts: &HashMap<u32, u64>) -> Vec<(u32, u64)> {
        let mut found = Vec::new();
        for (&netns, &kernel) in counts {
            let seen = self.seen.get(&netns).copied().unwrap_or(0);
            let ns = self
                .namespaces
                .entry(netns)
                .or_insert_with(|| Namespace::starting(kernel, seen));
            let previous = ns.last_kernel;
            let unseen =
                (previous - ns.base_kernel).saturating_sub(seen.saturating_sub(ns.base_seen));
            if unseen > ns.reported {
                found.push((netns, unseen - ns.reported));
                ns.reported = unseen;
            }
            ns.last_kernel = kernel;
            // A smaller count is a new namespace with a recycled inode number.
            if kernel < previous {
                *ns = Namespace::starting(kernel, seen);
            }
        }
        let live: HashSet<u32> = counts.keys().copied().collect();
        self.namespaces.retain(|ns, _| live.contains(ns));
        self.seen.retain(|ns, _| live.contains(ns));
        found
    }
}

/// `TcpExtTCPKeepAlive` from the text of a /proc/net/netstat.
pub fn keepalive_probes(netstat: &str) -> Option<u64> {
    tcp_ext(netstat, "TCPKeepAlive")
}

/// `TcpExtTCPAbortOnTimeout` from the text of a /proc/net/netstat: connections `tcp_write_err`
/// ended (keepalive, retransmission, zero-window probes or `TCP_USER_TIMEOUT` giving up).
///
/// Why it is audited: in a partition of 200 000 sockets on the 6.18 host the kernel called
/// none of the daemon's programs (timer entry, state change; no recursion miss counted) for
/// about 13 % of the deaths, while an ftrace probe on the same tracepoints recorded them all
/// (docs/unseen-probes.md). Those deaths cannot be reported; this makes them counted.
pub fn timeout_aborts(netstat: &str) -> Option<u64> {
    tcp_ext(netstat, "TCPAbortOnTimeout")
}

/// Whether a close's `sk_err` is one `tcp_write_err` leaves (`sk_err_soft`, or ETIMEDOUT): not
/// none, and not a RST's (ECONNRESET, EPIPE, ECONNREFUSED, as `died_unseen` in the kernel
/// programs) nor `SOCK_DESTROY`'s (ECONNABORTED). The close of a keepalive death the programs
/// reported carries 0: the death event is what counts. A hard ICMP error ending a connect also
/// passes, so the audit it feeds errs low, never high, while connects fail that way.
pub fn is_timeout_abort(errno: i32) -> bool {
    !matches!(
        errno,
        0 | libc::ECONNRESET | libc::EPIPE | libc::ECONNREFUSED | libc::ECONNABORTED
    )
}

/// One `TcpExt` counter from the text of a /proc/net/netstat (a header line of names and a
/// line of values per group).
fn tcp_ext(netstat: &str, name: &str) -> Option<u64> {
    let mut lines = netstat.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some(("TcpExt:", names)), Some(("TcpExt:", values))) =
            (names.split_once(' '), values.split_once(' '))
        else {
            continue;
        };
        let at = names.split_whitespace().position(|n| n == name)?;
        return values.split_whitespace().nth(at)?.parse().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(a: &mut CounterAudit, ns: u32, kernel: u64) -> u64 {
        a.audit(&HashMap::from([(ns, kernel)]))
            .iter()
            .map(|f| f.1)
            .sum()
    }

    #[test]
    fn every_probe_seen_is_never_reported() {
        let mut a = CounterAudit::default();
        assert_eq!(poll(&mut a, 7, 100), 0);
        for _ in 0..5 {
            a.saw(7);
        }
        // The kernel moved first; its events arrive before the next poll.
        assert_eq!(poll(&mut a, 7, 105), 0);
        assert_eq!(poll(&mut a, 7, 105), 0);
    }

    #[test]
    fn a_probe_in_flight_at_the_poll_is_not_a_loss() {
        let mut a = CounterAudit::default();
        poll(&mut a, 7, 0);
        // Counted by the kernel, event not received yet.
        assert_eq!(poll(&mut a, 7, 1), 0);
        a.saw(7);
        assert_eq!(poll(&mut a, 7, 1), 0);
    }

    #[test]
    fn unseen_probes_are_reported_once_a_poll_later() {
        let mut a = CounterAudit::default();
        poll(&mut a, 7, 10);
        a.saw(7);
        assert_eq!(poll(&mut a, 7, 13), 0, "lagged: compared at the next poll");
        assert_eq!(poll(&mut a, 7, 13), 2);
        assert_eq!(poll(&mut a, 7, 13), 0, "reported once");
        a.saw(7);
        a.saw(7);
        assert_eq!(poll(&mut a, 7, 15), 0);
    }

    #[test]
    fn a_recycled_namespace_starts_over() {
        let mut a = CounterAudit::default();
        poll(&mut a, 7, 50);
        poll(&mut a, 7, 60);
        assert_eq!(
            poll(&mut a, 7, 3),
            10,
            "the old namespace's ten, found at its last poll"
        );
        assert_eq!(poll(&mut a, 7, 4), 0);
    }

    #[test]
    fn only_errors_a_timeout_leaves_count_as_aborts() {
        assert!(is_timeout_abort(libc::ETIMEDOUT));
        assert!(
            is_timeout_abort(libc::EHOSTUNREACH),
            "sk_err_soft of an ICMP error"
        );
        for plain in [
            0,
            libc::ECONNRESET,
            libc::EPIPE,
            libc::ECONNREFUSED,
            libc::ECONNABORTED,
        ] {
            assert!(!is_timeout_abort(plain), "{plain}");
        }
    }

    #[test]
    fn reads_the_counter_from_netstat() {
        let text = "TcpExt: SyncookiesSent TCPKeepAlive TCPAbortOnTimeout\n\
                    TcpExt: 0 42 1\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(keepalive_probes(text), Some(42));
        assert_eq!(timeout_aborts(text), Some(1));
        assert_eq!(keepalive_probes("IpExt: A\nIpExt: 1\n"), None);
    }
}
