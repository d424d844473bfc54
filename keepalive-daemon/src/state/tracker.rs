//! Per-socket keepalive state and the classification of what happened.
//!
//! Only sockets with probes outstanding are tracked: the kernel side reports nothing for
//! sockets whose keepalive timer fires without probing, so the table is as large as the number
//! of connections being probed right now.
use std::collections::HashMap;

use log::debug;

use crate::{
    ingest::{
        decode::{Flow, KernelEvent, Kind},
        icmp::IcmpHit,
    },
    state::event::{Cause, Event, EventKind, FailReason, WallClock, errno_name},
};

#[derive(Debug)]
struct Probing {
    /// When the first probe of the current run went out (CLOCK_MONOTONIC).
    run_start_ns: u64,
    /// The last event for the socket, and its probe interval: the kernel reports something at
    /// least every interval while a run lasts, so a long silence means events were lost.
    last_ns: u64,
    intvl_s: u32,
}

/// Arrival times of recent ICMP errors for one flow. They are matched against the run's start
/// by time, not by arrival order: the raw socket and the ring buffer race each other.
#[derive(Debug, Default, Clone)]
struct IcmpSeen {
    hits: Vec<u64>,
}

const MAX_HITS_PER_FLOW: usize = 64;

/// Caps the memory of ICMP errors kept for flows nobody is probing (scans, other traffic).
const MAX_ICMP_FLOWS: usize = 16_384;

pub struct Tracker {
    sockets: HashMap<u64, Probing>,
    icmp: HashMap<Flow, IcmpSeen>,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, to stamp kernel times as wall-clock times.
    realtime_offset_ns: i128,
}

/// What one kernel event turned into. Made once per event and consumed at once by the sinks,
/// so the size difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Publish(Event),
    Nothing,
}

impl Tracker {
    pub fn new(realtime_offset_ns: i128) -> Self {
        Tracker {
            sockets: HashMap::new(),
            icmp: HashMap::new(),
            realtime_offset_ns,
        }
    }

    pub fn probing(&self) -> usize {
        self.sockets.len()
    }

    pub fn icmp(&mut self, hit: IcmpHit) {
        if self.icmp.len() >= MAX_ICMP_FLOWS && !self.icmp.contains_key(&hit.flow) {
            // Forget the oldest half rather than growing: these are only hints for deaths.
            let last = |s: &IcmpSeen| s.hits.last().copied().unwrap_or(0);
            let mut times: Vec<u64> = self.icmp.values().map(last).collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            self.icmp.retain(|_, s| last(s) > cut);
        }
        let seen = self.icmp.entry(hit.flow).or_default();
        if seen.hits.len() >= MAX_HITS_PER_FLOW {
            seen.hits.remove(0);
        }
        seen.hits.push(hit.mono_ns);
    }

    pub fn handle(&mut self, ev: &KernelEvent) -> Outcome {
        let ts = self.wall_clock(ev.ts_ns);
        match ev.kind {
            Kind::Probe => {
                let run = self.sockets.entry(ev.sk).or_insert(Probing {
                    run_start_ns: ev.ts_ns,
                    last_ns: ev.ts_ns,
                    intvl_s: ev.keepalive.intvl_s,
                });
                if ev.probes <= 1 {
                    run.run_start_ns = ev.ts_ns;
                }
                run.last_ns = ev.ts_ns;
                run.intvl_s = ev.keepalive.intvl_s;
                Outcome::Publish(Event::new(
                    EventKind::Probe,
                    ts,
                    &ev.flow,
                    ev.probes,
                    ev.keepalive,
                    ev.hook,
                ))
            }
            // Not a probe out: the run, its numbering and the answer to come are unchanged.
            Kind::ProbeFailed => {
                let mut out = Event::new(
                    EventKind::ProbeFailed,
                    ts,
                    &ev.flow,
                    ev.probes,
                    ev.keepalive,
                    ev.hook,
                );
                out.reason = Some(FailReason::classify(ev.hook, ev.errno));
                Outcome::Publish(out)
            }
            Kind::Answered => {
                self.sockets.remove(&ev.sk);
                Outcome::Publish(Event::new(
                    EventKind::Answered,
                    ts,
                    &ev.flow,
                    ev.probes,
                    ev.keepalive,
                    ev.hook,
                ))
            }
            Kind::Timeout | Kind::Reset => {
                let run_start = self.sockets.remove(&ev.sk).map(|r| r.run_start_ns);
                let icmp = self.icmp_during_run(&ev.flow, run_start);
                let cause = match (ev.kind, icmp) {
                    (Kind::Reset, _) => Cause::Reset,
                    (_, n) if n > 0 => Cause::Unreachable,
                    _ => Cause::Timeout,
                };
                self.icmp.remove(&ev.flow);
                let mut out = Event::new(
                    EventKind::Dead,
                    ts,
                    &ev.flow,
                    ev.probes,
                    ev.keepalive,
                    ev.hook,
                );
                out.cause = Some(cause);
                out.errno = Some(errno_name(ev.errno));
                out.icmp_unreachable = Some(icmp);
                out.detected_after_s = run_start.map(|start| {
                    (ev.ts_ns.saturating_sub(start)) as f64 / 1e9 + f64::from(ev.keepalive.idle_s)
                });
                Outcome::Publish(out)
            }
            // The socket closed: whatever run it was in is over, even if its last event was lost.
            Kind::Gone => {
                self.sockets.remove(&ev.sk);
                Outcome::Nothing
            }
            Kind::Open | Kind::Settings | Kind::Walked | Kind::Rearmed => Outcome::Nothing,
            Kind::Closed => {
                debug!(
                    "{:?} closed with {} probes out, not by keepalive",
                    ev.flow, ev.probes
                );
                self.sockets.remove(&ev.sk);
                Outcome::Nothing
            }
        }
    }

    /// Forgets runs the kernel has said nothing about for two intervals and five seconds: their
    /// answer, death or close was lost (ring buffer full), and keeping them would leave
    /// sockets "probing" forever. Returns how many were dropped.
    pub fn sweep(&mut self, now_ns: u64) -> usize {
        let before = self.sockets.len();
        self.sockets.retain(|_, r| {
            let quiet = u64::from(r.intvl_s) * 2_000_000_000 + 5_000_000_000;
            now_ns.saturating_sub(r.last_ns) <= quiet
        });
        before - self.sockets.len()
    }

    /// ICMP errors for `flow` since its current run began (all recorded ones when the run's
    /// start was not seen, e.g. the daemon started mid-run).
    fn icmp_during_run(&self, flow: &Flow, run_start_ns: Option<u64>) -> u32 {
        let start = run_start_ns.unwrap_or(0);
        self.icmp.get(flow).map_or(0, |seen| {
            seen.hits.iter().filter(|&&t| t >= start).count() as u32
        })
    }

    pub fn wall_clock(&self, mono_ns: u64) -> WallClock {
        WallClock((mono_ns as i128 + self.realtime_offset_ns) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            netns: 1,
            saddr: "10.0.0.2".parse().unwrap(),
            sport: 40000,
            daddr: "10.0.1.2".parse().unwrap(),
            dport: 5000,
        }
    }

    fn ev(kind: Kind, ts_ns: u64, probes: u8, errno: i32) -> KernelEvent {
        KernelEvent {
            ts_ns,
            errno,
            ..crate::ingest::decode::sample(kind, 0xabc, flow(), probes)
        }
    }

    fn dead(t: &mut Tracker, e: &KernelEvent) -> (Cause, String) {
        match t.handle(e) {
            Outcome::Publish(out) => (out.cause.unwrap(), out.errno.unwrap()),
            Outcome::Nothing => panic!("no event"),
        }
    }

    #[test]
    fn a_failed_probe_is_published_with_its_reason_and_leaves_the_run_alone() {
        let mut t = Tracker::new(0);
        t.handle(&ev(Kind::Probe, 1000, 1, 0));
        let reason = |t: &mut Tracker, hook: &'static str, ret: i32| {
            let mut e = ev(Kind::ProbeFailed, 1500, 1, ret);
            e.hook = hook;
            match t.handle(&e) {
                Outcome::Publish(out) => (out.event, out.reason, out.probes),
                Outcome::Nothing => panic!("no event"),
            }
        };
        assert_eq!(
            reason(&mut t, "fentry", 1),
            (EventKind::ProbeFailed, Some(FailReason::LocalDrop), 1)
        );
        assert_eq!(reason(&mut t, "kprobe", 3).1, Some(FailReason::XmitError));
        assert_eq!(reason(&mut t, "tracepoint", 0).1, Some(FailReason::NotSent));
        assert_eq!(t.probing(), 1, "the unanswered run is still the same run");
    }

    #[test]
    fn silent_peer_is_a_timeout() {
        let mut t = Tracker::new(0);
        for n in 1..=3 {
            t.handle(&ev(Kind::Probe, n as u64 * 1000, n, 0));
        }
        assert_eq!(t.probing(), 1);
        assert_eq!(
            dead(&mut t, &ev(Kind::Timeout, 4000, 3, libc::ETIMEDOUT)),
            (Cause::Timeout, "ETIMEDOUT".into())
        );
        assert_eq!(t.probing(), 0);
    }

    #[test]
    fn icmp_during_the_run_makes_it_unreachable() {
        let mut t = Tracker::new(0);
        t.handle(&ev(Kind::Probe, 1000, 1, 0));
        t.icmp(IcmpHit {
            flow: flow(),
            mono_ns: 1100,
        });
        t.handle(&ev(Kind::Probe, 2000, 2, 0));
        assert_eq!(
            dead(&mut t, &ev(Kind::Timeout, 4000, 3, libc::ETIMEDOUT)).0,
            Cause::Unreachable
        );
    }

    #[test]
    fn icmp_from_an_earlier_run_does_not_count() {
        let mut t = Tracker::new(0);
        t.icmp(IcmpHit {
            flow: flow(),
            mono_ns: 500,
        });
        t.handle(&ev(Kind::Probe, 1000, 1, 0));
        assert_eq!(
            dead(&mut t, &ev(Kind::Timeout, 4000, 3, libc::ETIMEDOUT)).0,
            Cause::Timeout
        );
    }

    #[test]
    fn reset_wins_and_closed_is_silent() {
        let mut t = Tracker::new(0);
        t.handle(&ev(Kind::Probe, 1000, 1, 0));
        assert_eq!(
            dead(&mut t, &ev(Kind::Reset, 1100, 1, libc::ECONNRESET)),
            (Cause::Reset, "ECONNRESET".into())
        );
        t.handle(&ev(Kind::Probe, 1000, 1, 0));
        assert!(matches!(
            t.handle(&ev(Kind::Closed, 1200, 1, 0)),
            Outcome::Nothing
        ));
        assert_eq!(t.probing(), 0);
    }

    #[test]
    fn lost_endings_are_swept_and_closes_clear_runs() {
        let mut t = Tracker::new(0);
        t.handle(&ev(Kind::Probe, 1_000_000_000, 1, 0));
        assert_eq!(t.sweep(7_000_000_000), 0, "within 2 x intvl + 5 s");
        assert_eq!(t.sweep(8_000_000_001), 1);
        assert_eq!(t.probing(), 0);
        t.handle(&ev(Kind::Probe, 1000, 1, 0));
        t.handle(&ev(Kind::Gone, 2000, 0, 0));
        assert_eq!(t.probing(), 0);
    }

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds() {
        let t = Tracker::new(1_700_000_000_000_000_000);
        assert_eq!(
            t.wall_clock(123).to_string(),
            "2023-11-14T22:13:20.000000123Z"
        );
    }
}
