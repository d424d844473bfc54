//! Real idle time per socket and the risk it stands for, judged against its peer group's
//! budget (`state::peers`).
//!
//! A socket's activity (when it last sent data, received data, received an ACK) is read by
//! the kernel programs with every record, and refreshed for every socket by the iterator walk
//! (`refresh`, fed by the rate-limited walk of `ingest::activity` when `/sockets`, `/advice` or
//! the metrics are read). Between refreshes the ages grow with the clock: exact while the
//! socket stays silent, an over-estimate after it spoke, which the next refresh corrects.
use serde::Serialize;

use super::{Effective, Entry, Inventory};
use crate::{
    ingest::decode::{Activity, KernelEvent},
    state::peers::{Group, LOOPBACK, Peers},
};

const ESTABLISHED: u8 = 1;
const LISTEN: u8 = 10;

/// What a socket's keepalive means for the path to its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Keepalive off or its idle above the budget, and silent longer than the budget now: the
    /// path has probably forgotten the flow; the next send fails (seed 004).
    Exposed,
    /// Keepalive off or its idle above the budget, not yet silent that long.
    AtRisk,
    /// Keepalive on with an idle within the budget: a probe refreshes the path in time.
    Covered,
    /// A listening socket: its setting is the policy accepted sockets inherit, not a flow.
    Listener,
    /// A peer on this host (loopback, or the socket's own address): no middlebox between.
    Local,
    /// Not established (closing, half-open): judged by nothing here.
    None,
}

impl Risk {
    pub const CLASSES: [Risk; 3] = [Risk::Exposed, Risk::AtRisk, Risk::Covered];

    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Exposed => "exposed",
            Risk::AtRisk => "at_risk",
            Risk::Covered => "covered",
            Risk::Listener => "listener",
            Risk::Local => "local",
            Risk::None => "none",
        }
    }

    /// Exposed or at risk: what `--at-risk` lists and `--advise` wants covered.
    pub fn uncovered(self) -> bool {
        matches!(self, Risk::Exposed | Risk::AtRisk)
    }
}

impl Inventory {
    /// With the config's peer groups.
    pub fn with_peers(mut self, peers: Peers) -> Self {
        self.peers = peers;
        self
    }

    /// The socket's activity ages as of now.
    pub fn activity_now(&self, e: &Entry) -> Activity {
        let elapsed = self.now_ms().saturating_sub(e.seen_ms.into());
        let age = |ms: u32| match ms {
            Activity::UNKNOWN => Activity::UNKNOWN,
            ms => (u64::from(ms) + elapsed).min(u64::from(Activity::UNKNOWN - 1)) as u32,
        };
        Activity {
            send_ms: age(e.activity.send_ms),
            recv_ms: age(e.activity.recv_ms),
            ack_ms: age(e.activity.ack_ms),
        }
    }

    /// The peer group of the socket's remote address.
    pub fn peer_group(&self, e: &Entry) -> &Group {
        self.peers.classify(e.daddr())
    }

    pub fn risk(&self, e: &Entry, eff: &Effective) -> Risk {
        if e.state == LISTEN {
            return Risk::Listener;
        }
        if e.state != ESTABLISHED {
            return Risk::None;
        }
        let group = self.peer_group(e);
        let Some(budget) = group
            .budget_s
            .filter(|_| &*group.name != LOOPBACK && e.daddr() != self.addrs.get(e.saddr))
        else {
            return Risk::Local;
        };
        if eff.on && eff.idle_s <= budget {
            return Risk::Covered;
        }
        match self.activity_now(e).path_idle_ms() {
            Some(idle) if u64::from(idle) > u64::from(budget) * 1000 => Risk::Exposed,
            _ => Risk::AtRisk,
        }
    }

    /// Takes the activity (and timer) of every listed socket from a walk's records; sockets
    /// the inventory does not hold are left to the re-walk's reconciliation.
    pub fn refresh(&mut self, walked: &[KernelEvent]) {
        let now = self.seen_now();
        self.unwalked = false;
        for ev in walked {
            let flow = self.sockets.get(ev.sk).map(|e| self.flow(e));
            if flow != Some(ev.flow) {
                continue;
            }
            if let Some(e) = self.sockets.get_mut(ev.sk) {
                e.activity = ev.info.activity.since_record(ev.ts_ns);
                e.next_timer_ms = super::timer_ms(ev.info.next_timer_ms);
                e.probes_out = ev.info.probes_out;
                e.state = ev.info.state;
                e.seen_ms = now;
                self.reclass(ev.sk);
            }
        }
    }
}

/// The configuration-only check: keepalive off or its idle above `budget_s`.
pub fn config_at_risk(eff: &Effective, budget_s: u64) -> bool {
    !eff.on || u64::from(eff.idle_s) > budget_s
}
