//! Middlebox idle timeouts learned from what the kernel already shows: a keepalive probe sent
//! after the flow was silent for `t` is a question to the path. A reset answering that first
//! probe says a middlebox forgot the flow in less than `t` (an upper bound on its idle
//! timeout); an ACK answering it says nothing forgot it in `t` (a lower bound). Kept per peer
//! group, and per /24 or /64 of the peer within a cap, as the bracket [largest idle that
//! survived, smallest idle that was reset].
//!
//! Only a run's first probe counts: after an unanswered probe the silence is no longer the
//! flow's own, and a later probe may re-create a forgotten flow's state in a loose middlebox.
//! A reset can also come from the peer itself (rebooted): the upper bound is "something on the
//! path or the peer forgot the flow", which is the operator's concern either way.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use serde::Serialize;

use crate::{
    ingest::decode::{KernelEvent, Kind},
    state::{
        event::WallClock,
        peers::{self, Group},
    },
};

/// Subnets (/24, /64) with their own bracket at most; beyond, only the group learns.
pub const MAX_SUBNETS: usize = 4096;
/// Sockets whose first probe is waiting for its answer, at most (one entry per probing socket).
const MAX_PENDING: usize = 65_536;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Bracket {
    /// Largest silence (ms) after which a first probe was answered.
    pub lower_ms: Option<u32>,
    /// Smallest silence (ms) after which a first probe drew a reset.
    pub upper_ms: Option<u32>,
    pub answered: u32,
    pub reset: u32,
}

impl Bracket {
    /// Takes a sample; true when the bracket narrowed.
    fn learn(&mut self, idle_ms: u32, survived: bool) -> bool {
        if survived {
            self.answered += 1;
            let narrowed = self.lower_ms.is_none_or(|l| idle_ms > l);
            if narrowed {
                self.lower_ms = Some(idle_ms);
            }
            narrowed
        } else {
            self.reset += 1;
            let narrowed = self.upper_ms.is_none_or(|u| idle_ms < u);
            if narrowed {
                self.upper_ms = Some(idle_ms);
            }
            narrowed
        }
    }
}

/// A bracket that narrowed: the `path_timeout` event.
#[derive(Debug, Clone, Serialize)]
pub struct PathChange {
    pub ts: WallClock,
    pub event: &'static str,
    pub peer_group: String,
    /// The peer's /24 or /64, and the peer that taught it.
    pub subnet: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
    /// The silence this probe followed, and what came back.
    pub idle_s: f64,
    pub outcome: &'static str,
    /// The group's bracket after the sample, seconds.
    pub lower_s: Option<f64>,
    pub upper_s: Option<f64>,
    pub budget_s: Option<u32>,
}

#[derive(Default)]
pub struct PathLearner {
    groups: HashMap<Arc<str>, Bracket>,
    subnets: HashMap<(Arc<str>, IpAddr), Bracket>,
    /// Socket → silence before the first probe of its current run, ms.
    first: HashMap<u64, u32>,
}

impl PathLearner {
    /// Feeds one probe-path event of a socket whose peer is in `group`; returns the change
    /// when the group's bracket narrowed. Loopback peers teach nothing.
    pub fn observe(
        &mut self,
        ev: &KernelEvent,
        group: &Group,
        ts: WallClock,
    ) -> Option<PathChange> {
        if &*group.name == peers::LOOPBACK {
            return None;
        }
        let survived = match ev.kind {
            Kind::Probe if ev.probes == 1 => {
                if self.first.len() < MAX_PENDING || self.first.contains_key(&ev.sk) {
                    self.first.insert(ev.sk, silence_ms(ev));
                }
                return None;
            }
            Kind::Probe => {
                self.first.remove(&ev.sk);
                return None;
            }
            Kind::Answered if ev.probes == 1 => true,
            Kind::Reset if ev.probes == 1 => false,
            Kind::Answered | Kind::Reset | Kind::Timeout | Kind::Closed | Kind::Gone => {
                self.first.remove(&ev.sk);
                return None;
            }
            _ => return None,
        };
        // A reset can be handled before the timer that sent the probe has finished (the RST
        // waits on the socket's lock, and the probe is reported as the timer returns): its own
        // record then tells the silence, since a RST updates none of the three ages.
        let idle_ms = self
            .first
            .remove(&ev.sk)
            .or_else(|| (!survived).then(|| silence_ms(ev)))?;
        let subnet = peers::subnet(ev.flow.daddr);
        let key = (group.name.clone(), subnet);
        if self.subnets.len() < MAX_SUBNETS || self.subnets.contains_key(&key) {
            self.subnets
                .entry(key)
                .or_default()
                .learn(idle_ms, survived);
        }
        let b = self.groups.entry(group.name.clone()).or_default();
        if !b.learn(idle_ms, survived) {
            return None;
        }
        let secs = |ms: u32| f64::from(ms) / 1000.0;
        Some(PathChange {
            ts,
            event: "path_timeout",
            peer_group: group.name.to_string(),
            subnet,
            daddr: ev.flow.daddr,
            dport: ev.flow.dport,
            idle_s: secs(idle_ms),
            outcome: if survived { "answered" } else { "reset" },
            lower_s: b.lower_ms.map(secs),
            upper_s: b.upper_ms.map(secs),
            budget_s: group.budget_s,
        })
    }

    /// The socket closed: a first probe it had out will not be answered.
    pub fn forget(&mut self, sk: u64) {
        self.first.remove(&sk);
    }

    /// Every group's bracket, by name.
    pub fn groups(&self) -> impl Iterator<Item = (&str, &Bracket)> {
        self.groups.iter().map(|(k, v)| (&**k, v))
    }

    pub fn group(&self, name: &str) -> Option<&Bracket> {
        self.groups.get(name)
    }

    pub fn group_bracket(&self, name: &str) -> Option<Bracket> {
        self.groups.get(name).copied()
    }

    /// Every subnet's bracket: (group, subnet, bracket).
    pub fn subnets(&self) -> impl Iterator<Item = (&str, IpAddr, &Bracket)> {
        self.subnets.iter().map(|((g, s), b)| (&**g, *s, b))
    }
}

/// The silence a first probe followed: since the newest segment either way. The kernel only
/// probes after `keepalive_time` of silence, so a shorter reading means the record raced the
/// answer; the setting is the better estimate then.
fn silence_ms(ev: &KernelEvent) -> u32 {
    let setting = ev.keepalive.idle_s.saturating_mul(1000);
    match ev.info.activity.path_idle_ms() {
        Some(ms) if ms + 1000 >= setting => ms,
        _ => setting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::{Activity, Flow, sample};

    fn ev(kind: Kind, sk: u64, daddr: &str, probes: u8, idle_ms: u32) -> KernelEvent {
        let flow = Flow {
            netns: 1,
            saddr: "10.0.0.2".parse().unwrap(),
            sport: 40000,
            daddr: daddr.parse().unwrap(),
            dport: 5000,
        };
        let mut e = sample(kind, sk, flow, probes);
        e.keepalive.idle_s = idle_ms / 1000;
        e.info.activity = Activity {
            send_ms: idle_ms + 50,
            recv_ms: idle_ms + 20,
            ack_ms: idle_ms,
        };
        e
    }

    fn group(name: &str) -> Group {
        Group {
            name: name.into(),
            budget_s: Some(5),
        }
    }

    #[test]
    fn answers_raise_the_floor_resets_lower_the_ceiling() {
        let mut p = PathLearner::default();
        let g = group("fw");
        let mut run = |sk, idle, answered: bool| {
            assert!(
                p.observe(&ev(Kind::Probe, sk, "10.1.0.9", 1, idle), &g, WallClock(0))
                    .is_none()
            );
            let kind = if answered {
                Kind::Answered
            } else {
                Kind::Reset
            };
            p.observe(&ev(kind, sk, "10.1.0.9", 1, idle), &g, WallClock(0))
        };
        let c = run(1, 8000, false).expect("first reset narrows");
        assert_eq!((c.lower_s, c.upper_s), (None, Some(8.0)));
        let c = run(2, 3000, true).expect("first answer narrows");
        assert_eq!((c.lower_s, c.upper_s), (Some(3.0), Some(8.0)));
        assert!(
            run(3, 2000, true).is_none(),
            "a shorter survivor says nothing new"
        );
        let c = run(4, 6000, false).unwrap();
        assert_eq!((c.lower_s, c.upper_s), (Some(3.0), Some(6.0)));
        let c = run(5, 4000, true).unwrap();
        assert_eq!((c.lower_s, c.upper_s), (Some(4.0), Some(6.0)));
        let b = p.group("fw").unwrap();
        assert_eq!((b.answered, b.reset), (3, 2));
        assert_eq!(p.subnets().count(), 1);
    }

    #[test]
    fn a_reset_seen_before_its_probe_still_teaches() {
        let mut p = PathLearner::default();
        let g = group("fw");
        let c = p
            .observe(&ev(Kind::Reset, 7, "10.1.0.9", 1, 3000), &g, WallClock(0))
            .expect("the reset's own record tells the silence");
        assert_eq!(c.upper_s, Some(3.0));
        // The late probe record leaves an entry that the close clears.
        p.observe(&ev(Kind::Probe, 7, "10.1.0.9", 1, 3000), &g, WallClock(0));
        p.forget(7);
        assert!(p.first.is_empty());
    }

    #[test]
    fn only_first_probes_and_non_loopback_teach() {
        let mut p = PathLearner::default();
        let g = group("fw");
        p.observe(&ev(Kind::Probe, 1, "10.1.0.9", 1, 3000), &g, WallClock(0));
        p.observe(&ev(Kind::Probe, 1, "10.1.0.9", 2, 4000), &g, WallClock(0));
        assert!(
            p.observe(&ev(Kind::Reset, 1, "10.1.0.9", 2, 4000), &g, WallClock(0))
                .is_none()
        );
        let lo = group(peers::LOOPBACK);
        p.observe(&ev(Kind::Probe, 2, "127.0.0.1", 1, 3000), &lo, WallClock(0));
        assert!(
            p.observe(
                &ev(Kind::Answered, 2, "127.0.0.1", 1, 3000),
                &lo,
                WallClock(0)
            )
            .is_none()
        );
        assert_eq!(p.groups().count(), 0);
        // A record that raced the answer (silence below the setting) counts as the setting.
        let mut raced = ev(Kind::Probe, 3, "10.1.0.9", 1, 5000);
        raced.info.activity.ack_ms = 3;
        p.observe(&raced, &g, WallClock(0));
        let c = p
            .observe(&ev(Kind::Answered, 3, "10.1.0.9", 1, 0), &g, WallClock(0))
            .unwrap();
        assert_eq!(c.lower_s, Some(5.0));
    }
}
