//! Every TCP socket's keepalive configuration, live: seeded by the `iter/tcp` walk at startup,
//! kept current by open/close/settings events and by namespace sysctl changes, and corrected
//! by a periodic re-walk where events were lost.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use crate::{
    ingest::decode::{Activity, Flow, Keepalive, KernelEvent, Kind},
    state::{labels::Attribution, owners::Owner, paths::PathLearner, peers::Peers},
};

mod recent;
pub mod resync;
mod risk;
mod tally;
mod view;
mod who;

pub use crate::ingest::sysctl::NsDefaults;
pub use risk::{Risk, config_at_risk};
pub use tally::{Class, Tally};
pub use view::{SocketView, time_to_detect};

/// Linux's own defaults, for a namespace whose values were never read.
const LINUX_DEFAULTS: NsDefaults = NsDefaults {
    idle_s: 7200,
    intvl_s: 75,
    cnt: 9,
};

/// One socket. Kept small on purpose (about 100 bytes): a host holds hundreds of thousands of
/// sockets and the table is most of the daemon's memory. The owner's name is kept once per
/// process in `Inventory::procs`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub flow: Flow,
    /// Socket file inode, 0 until the socket has a file (accepted sockets get one at accept).
    pub ino: u64,
    /// Values set on the socket itself (0 = use the namespace default), from the kernel.
    pub own: Keepalive,
    pub cgroup: u64,
    /// When the entry was last refreshed, in ms since `Inventory::epoch`: ages
    /// `next_timer_ms` at query time.
    seen_ms: u64,
    /// Keepalive timer due this many ms after `seen_ms`; `NOT_ARMED` when not pending.
    next_timer_ms: u32,
    /// Ages of the last segments at `seen_ms` (see `risk`).
    activity: Activity,
    /// Owning process, 0 while unknown.
    pub pid: u32,
    pub state: u8,
    pub probes_out: u8,
    pub keepalive_on: bool,
    /// Polls since the socket appeared without an owner; lookups back off and stop so sockets
    /// no process holds (listener backlogs, kernel sockets) do not cost a /proc scan every
    /// poll forever.
    owner_tries: u8,
    /// What the metric families count it under (`tally`).
    class: u32,
}

const NOT_ARMED: u32 = u32::MAX;

/// TCP_LISTEN.
const LISTEN: u8 = 10;

/// Sockets configured but not yet connected, at most: a connect that never completes is
/// removed by its close, so this only bounds a flood of them.
const MAX_PENDING: usize = 65_536;

/// What the config of one socket is now, after defaults are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub on: bool,
    pub idle_s: u32,
    pub intvl_s: u32,
    pub cnt: u8,
    pub user_timeout_ms: u32,
}

/// A process that owns sockets: its name once, however many sockets it holds.
struct Proc {
    comm: std::sync::Arc<str>,
    sockets: u32,
}

pub struct Inventory {
    sockets: HashMap<u64, Entry>,
    defaults: HashMap<u32, NsDefaults>,
    /// Sockets per namespace: a namespace's defaults are forgotten with its last socket, since
    /// the kernel reuses a dead namespace's inode number for a new one.
    members: HashMap<u32, usize>,
    procs: HashMap<u32, Proc>,
    /// Owners seen in setsockopt calls on sockets not yet connected or listening.
    pending: HashMap<u64, Owner>,
    /// Sockets that had a file but no owner when last written: the candidates `unowned` looks
    /// at, so that a poll does not walk every socket (it was most of a quiet daemon's CPU).
    ownerless: HashSet<u64>,
    epoch: Instant,
    /// A re-walk of the kernel's tables in progress (see `resync`).
    walk: Option<resync::Walk>,
    /// The default budget (`--idle-budget`), what `peers` gives groups without their own.
    pub idle_budget: Duration,
    /// Listening sockets per (namespace, port): a socket with a listener's local port was
    /// accepted from it.
    listeners: HashMap<(u32, u16), u32>,
    pub attribution: Attribution,
    /// Labels of sockets just closed, for the events that arrive after the close.
    recent: recent::Recent,
    pub peers: Peers,
    pub paths: PathLearner,
    /// A socket joined since the last activity walk (`risk::refresh`).
    pub unwalked: bool,
    tally: Tally,
}

impl Inventory {
    pub fn new(idle_budget: Duration) -> Self {
        Inventory {
            sockets: HashMap::new(),
            defaults: HashMap::new(),
            members: HashMap::new(),
            procs: HashMap::new(),
            pending: HashMap::new(),
            ownerless: HashSet::new(),
            epoch: Instant::now(),
            walk: None,
            idle_budget,
            listeners: HashMap::new(),
            attribution: Attribution::new(None),
            recent: recent::Recent::default(),
            peers: Peers::new(idle_budget.as_secs().try_into().unwrap_or(u32::MAX), &[]),
            paths: PathLearner::default(),
            unwalked: false,
            tally: Tally::default(),
        }
    }

    /// Resolves workloads and peer groups with these (the default knows no cgroups and only
    /// the built-in peer groups). Set before the first socket is applied.
    pub fn set_attribution(&mut self, attribution: Attribution) {
        self.attribution = attribution;
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn namespaces(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.members.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn defaults(&self) -> &HashMap<u32, NsDefaults> {
        &self.defaults
    }

    /// Applies an inventory event; returns the socket's effective config before and after when
    /// a known socket's keepalive configuration changed.
    pub fn apply(
        &mut self,
        ev: &KernelEvent,
        owner: Option<Owner>,
    ) -> Option<(Effective, Effective)> {
        match ev.kind {
            Kind::Gone => {
                if let Some(w) = &mut self.walk {
                    w.gone.insert(ev.sk);
                }
                self.pending.remove(&ev.sk);
                self.remove(ev.sk);
                None
            }
            // Probe-path events and re-armed timers refresh what the socket is doing now.
            Kind::Probe | Kind::ProbeFailed | Kind::Answered | Kind::Rearmed => {
                let now = self.now_ms();
                if let Some(e) = self.sockets.get_mut(&ev.sk) {
                    e.next_timer_ms = timer_ms(ev.info.next_timer_ms);
                    e.probes_out = ev.info.probes_out;
                    e.state = ev.info.state;
                    e.activity = ev.info.activity.since_record(ev.ts_ns);
                    e.seen_ms = now;
                }
                self.reclass(ev.sk);
                None
            }
            // Sockets not connected yet (options set before connect) or already closed join
            // when they reach ESTABLISHED or LISTEN; tracking them would leak closed ones. The
            // caller of setsockopt is the owner, which the later state change (softirq: no
            // caller) cannot tell: kept until then, so no /proc scan is needed to name it.
            Kind::Settings
                if !self.sockets.contains_key(&ev.sk) && !tracked_state(ev.info.state) =>
            {
                if let Some(o) = owner.filter(|_| self.pending.len() < MAX_PENDING) {
                    self.pending.insert(ev.sk, o);
                }
                None
            }
            Kind::Open | Kind::Settings | Kind::Walked => {
                // A namespace's first socket brings the kernel's own reading of its defaults;
                // later a sysctl poll may know better.
                let fresh = NsDefaults {
                    idle_s: ev.info.ns_idle_s,
                    intvl_s: ev.info.ns_intvl_s,
                    cnt: ev.info.ns_cnt,
                };
                if self.members.contains_key(&ev.flow.netns) {
                    self.defaults.entry(ev.flow.netns).or_insert(fresh);
                } else {
                    self.defaults.insert(ev.flow.netns, fresh);
                }
                let own = Keepalive {
                    idle_s: if ev.info.sources.idle {
                        ev.keepalive.idle_s
                    } else {
                        0
                    },
                    intvl_s: if ev.info.sources.intvl {
                        ev.keepalive.intvl_s
                    } else {
                        0
                    },
                    cnt: if ev.info.sources.cnt {
                        ev.keepalive.cnt
                    } else {
                        0
                    },
                    user_timeout_ms: ev.keepalive.user_timeout_ms,
                };
                let old = self
                    .sockets
                    .get(&ev.sk)
                    .map(|e| (self.effective(e), e.flow.netns, e.pid));
                let before = old.map(|(eff, _, _)| eff);
                // Same socket (same address, same namespace): it keeps its owner unless the
                // event names one. Otherwise the address was reused and the close was lost.
                let mut pid = match old {
                    Some((_, netns, pid)) if netns == ev.flow.netns => pid,
                    _ => {
                        self.remove(ev.sk);
                        *self.members.entry(ev.flow.netns).or_default() += 1;
                        self.unwalked = true;
                        0
                    }
                };
                if let Some(o) = owner.or_else(|| self.pending.remove(&ev.sk)) {
                    self.disown(pid);
                    pid = self.adopt(&o);
                }
                let new = Entry {
                    flow: ev.flow,
                    ino: ev.ino,
                    own,
                    cgroup: ev.info.cgroup,
                    seen_ms: self.now_ms(),
                    next_timer_ms: timer_ms(ev.info.next_timer_ms),
                    activity: ev.info.activity.since_record(ev.ts_ns),
                    pid,
                    state: ev.info.state,
                    probes_out: ev.info.probes_out,
                    keepalive_on: ev.info.keepalive_on,
                    owner_tries: 0,
                    class: tally::UNCOUNTED,
                };
                let mut new = new;
                if new.cgroup == 0 && new.pid != 0 {
                    new.cgroup = self.attribution.cgroup_of(new.pid);
                }
                let after = self.effective(&new);
                if new.pid == 0 && new.ino != 0 {
                    self.ownerless.insert(ev.sk);
                }
                self.index(&new);
                if let Some(old) = self.sockets.insert(ev.sk, new) {
                    self.unindex(&old);
                    self.uncount(&old);
                }
                self.reclass(ev.sk);
                match before {
                    Some(b) if b != after && ev.kind == Kind::Settings => Some((b, after)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn remove(&mut self, sk: u64) {
        if let Some(gone) = self.sockets.remove(&sk) {
            let labels = self.labels(&gone);
            self.recent.keep(sk, labels);
            self.unindex(&gone);
            self.uncount(&gone);
            self.disown(gone.pid);
            self.leave(gone.flow.netns);
        }
    }

    /// Records a namespace's sysctl values; returns the sockets whose effective config changed.
    pub fn set_defaults(&mut self, netns: u32, d: NsDefaults) -> Vec<(u64, Effective, Effective)> {
        // A poll that raced the namespace's last close must not leave defaults behind for a
        // new namespace that reuses the inode number.
        if !self.members.contains_key(&netns) {
            return Vec::new();
        }
        let Some(old) = self.defaults.insert(netns, d) else {
            return Vec::new();
        };
        if old == d {
            return Vec::new();
        }
        let mut changed = Vec::new();
        for (sk, e) in self.sockets.iter().filter(|(_, e)| e.flow.netns == netns) {
            let after = self.effective(e);
            let before = effective_with(e, &old);
            if before != after {
                changed.push((*sk, before, after));
            }
        }
        for (sk, _, _) in &changed {
            self.reclass(*sk);
        }
        changed
    }

    fn leave(&mut self, netns: u32) {
        if let Some(n) = self.members.get_mut(&netns) {
            *n -= 1;
            if *n == 0 {
                self.members.remove(&netns);
                self.defaults.remove(&netns);
            }
        }
    }

    pub fn get(&self, sk: u64) -> Option<&Entry> {
        self.sockets.get(&sk)
    }

    pub fn effective(&self, e: &Entry) -> Effective {
        effective_with(
            e,
            self.defaults.get(&e.flow.netns).unwrap_or(&LINUX_DEFAULTS),
        )
    }

    /// Where the socket goes in `/sockets`' default order: namespace, local port, remote port.
    pub fn place(&self, sk: u64) -> Option<u64> {
        let f = &self.sockets.get(&sk)?.flow;
        Some((u64::from(f.netns) << 32) | (u64::from(f.sport) << 16) | u64::from(f.dport))
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.sockets.values()
    }
}

fn timer_ms(ms: Option<u64>) -> u32 {
    ms.map_or(NOT_ARMED, |v| v.min(u64::from(NOT_ARMED - 1)) as u32)
}

fn effective_with(e: &Entry, d: &NsDefaults) -> Effective {
    let pick = |own: u32, def: u32| if own != 0 { own } else { def };
    Effective {
        on: e.keepalive_on,
        idle_s: pick(e.own.idle_s, d.idle_s),
        intvl_s: pick(e.own.intvl_s, d.intvl_s),
        cnt: if e.own.cnt != 0 { e.own.cnt } else { d.cnt },
        user_timeout_ms: e.own.user_timeout_ms,
    }
}

/// States a socket is inventoried in: everything between connected/listening and gone.
fn tracked_state(state: u8) -> bool {
    !matches!(state, 2 | 6 | 7 | 12)
}

#[cfg(test)]
mod tests;
