//! Every TCP socket's keepalive configuration, live: seeded by the `iter/tcp` walk at startup,
//! kept current by open/close/settings events and by namespace sysctl changes, and corrected
//! by a periodic re-walk where events were lost.
use std::time::{Duration, Instant};

// foldhash rather than SipHash: the keys are the kernel's and ours, not an attacker's.
use hashbrown::{HashMap, HashSet};

use crate::{
    ingest::decode::{Flow, KernelEvent, Kind},
    state::{labels::Attribution, owners::Owner, paths::PathLearner, peers::Peers},
};

mod defaults;
mod entry;
mod recent;
pub mod resync;
mod risk;
mod table;
mod tally;
mod view;
mod who;

pub use crate::ingest::sysctl::NsDefaults;
pub use entry::Entry;
use entry::{ON, V6};
pub use risk::{Risk, config_at_risk};
pub use tally::{Class, Tally};
pub use view::{SocketView, time_to_detect};

/// Linux's own defaults, for a namespace whose values were never read.
const LINUX_DEFAULTS: NsDefaults = NsDefaults {
    idle_s: 7200,
    intvl_s: 75,
    cnt: 9,
};

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
    sockets: table::Table,
    addrs: table::Addrs,
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
    /// Start-up's walk, with a /proc scan to follow that names them all: its sockets stay out
    /// of `ownerless` (19 + 16 bytes a socket at a million, only to wait for that scan).
    pub owners_follow: bool,
    tally: Tally,
}

impl Inventory {
    pub fn new(idle_budget: Duration) -> Self {
        Inventory {
            sockets: table::Table::default(),
            addrs: table::Addrs::default(),
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
            owners_follow: false,
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

    /// `now_ms` as entries keep it, in 32 bits: the epoch moves forward before it overflows.
    fn seen_now(&self) -> u32 {
        self.now_ms().min(u64::from(u32::MAX)) as u32
    }

    /// Moves the epoch 2^30 ms (12 days) forward once 2^31 ms have passed, so that `seen_ms`
    /// fits in 32 bits however long the daemon runs. An entry nothing refreshed for 12 days
    /// then looks refreshed at the new epoch: its ages and timer read low by the difference
    /// until the next activity walk.
    fn rebase(&mut self) {
        const SHIFT: u32 = 1 << 30;
        if self.now_ms() < 1 << 31 {
            return;
        }
        self.epoch += Duration::from_millis(SHIFT.into());
        for e in self.sockets.iter_mut() {
            e.seen_ms = e.seen_ms.saturating_sub(SHIFT);
        }
    }

    /// The socket's addresses and ports.
    pub fn flow(&self, e: &Entry) -> Flow {
        Flow {
            netns: e.netns,
            saddr: self.addrs.get(e.saddr),
            sport: e.sport,
            daddr: e.daddr(),
            dport: e.dport,
        }
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
                let now = self.seen_now();
                if let Some(e) = self.sockets.get_mut(ev.sk) {
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
                if !self.sockets.contains_key(ev.sk) && !tracked_state(ev.info.state) =>
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
                let old = self
                    .sockets
                    .get(ev.sk)
                    .map(|e| (self.effective(e), e.netns, e.pid));
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
                let pick = |set: bool, v: u32| {
                    if set {
                        v.min(u32::from(u16::MAX)) as u16
                    } else {
                        0
                    }
                };
                let (k, src) = (&ev.keepalive, &ev.info.sources);
                let mut daddr = [0u8; 16];
                let v6 = match ev.flow.daddr {
                    std::net::IpAddr::V4(a) => {
                        daddr[..4].copy_from_slice(&a.octets());
                        false
                    }
                    std::net::IpAddr::V6(a) => {
                        daddr = a.octets();
                        true
                    }
                };
                let new = Entry {
                    sk: ev.sk,
                    cgroup: ev.info.cgroup,
                    // Socket inodes are 32-bit (sockfs's get_next_ino).
                    ino: u32::try_from(ev.ino).unwrap_or(0),
                    seen_ms: self.seen_now(),
                    saddr: self.addrs.hold(ev.flow.saddr),
                    netns: ev.flow.netns,
                    daddr,
                    sport: ev.flow.sport,
                    dport: ev.flow.dport,
                    activity: ev.info.activity.since_record(ev.ts_ns),
                    next_timer_ms: timer_ms(ev.info.next_timer_ms),
                    user_timeout_ms: k.user_timeout_ms,
                    own_idle_s: pick(src.idle, k.idle_s),
                    own_intvl_s: pick(src.intvl, k.intvl_s),
                    pid,
                    class: tally::UNCOUNTED,
                    own_cnt: if src.cnt { k.cnt } else { 0 },
                    state: ev.info.state,
                    probes_out: ev.info.probes_out,
                    flags: if ev.info.keepalive_on { ON } else { 0 } | if v6 { V6 } else { 0 },
                };
                let mut new = new;
                if new.cgroup == 0 && new.pid != 0 {
                    new.cgroup = self.attribution.cgroup_of(new.pid);
                }
                let after = self.effective(&new);
                if new.pid == 0 && new.ino != 0 && !self.owners_follow {
                    self.ownerless.insert(ev.sk);
                }
                self.index(&new);
                if let Some(old) = self.sockets.insert(new) {
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
        if let Some(gone) = self.sockets.remove(sk) {
            let labels = self.labels(&gone);
            self.recent.keep(sk, labels);
            self.unindex(&gone);
            self.uncount(&gone);
            self.disown(gone.pid);
            self.leave(gone.netns);
        }
    }

    /// Room for `n` more sockets at once (the startup walk knows how many).
    pub fn reserve(&mut self, n: usize) {
        self.sockets.reserve(n);
    }

    pub fn get(&self, sk: u64) -> Option<&Entry> {
        self.sockets.get(sk)
    }

    /// Where the socket goes in `/sockets`' default order: namespace, local port, remote port.
    pub fn place(&self, sk: u64) -> Option<u64> {
        let e = self.sockets.get(sk)?;
        Some((u64::from(e.netns) << 32) | (u64::from(e.sport) << 16) | u64::from(e.dport))
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.sockets.iter()
    }
}

fn timer_ms(ms: Option<u64>) -> u32 {
    ms.map_or(NOT_ARMED, |v| v.min(u64::from(NOT_ARMED - 1)) as u32)
}

/// States a socket is inventoried in: everything between connected/listening and gone.
fn tracked_state(state: u8) -> bool {
    !matches!(state, 2 | 6 | 7 | 12)
}

#[cfg(test)]
mod tests;
