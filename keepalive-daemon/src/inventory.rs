//! Every TCP socket's keepalive configuration, live: seeded by the `iter/tcp` walk at startup,
//! kept current by open/close/settings events and by namespace sysctl changes, and corrected
//! by a periodic re-walk where events were lost.
use std::{collections::HashMap, time::Duration};

use serde::Serialize;

use crate::{
    decode::{Flow, KernelEvent, Keepalive, Kind, SocketInfo},
    owners::Owner,
};

pub mod resync;

/// Namespace defaults in seconds / count, as `/proc/sys/net/ipv4/tcp_keepalive_*` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NsDefaults {
    pub idle_s: u32,
    pub intvl_s: u32,
    pub cnt: u8,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub flow: Flow,
    /// Socket file inode, 0 until the socket has a file (accepted sockets get one at accept).
    pub ino: u64,
    /// Values set on the socket itself (0 = use the namespace default), from the kernel.
    pub own: Keepalive,
    pub info: SocketInfo,
    pub owner: Option<Owner>,
    /// Polls since the socket appeared without an owner; lookups back off and stop so sockets
    /// no process holds (listener backlogs, kernel sockets) do not cost a /proc scan every
    /// poll forever.
    pub owner_tries: u8,
    /// When `info.next_timer_ms` was measured, to age it at query time.
    pub seen: std::time::Instant,
}

#[derive(Debug, Clone, Serialize)]
pub struct SocketView {
    pub family: &'static str,
    pub state: &'static str,
    pub saddr: std::net::IpAddr,
    pub sport: u16,
    pub daddr: std::net::IpAddr,
    pub dport: u16,
    pub netns: u32,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<u64>,
    pub keepalive: bool,
    pub idle_s: u32,
    pub idle_from: &'static str,
    pub intvl_s: u32,
    pub intvl_from: &'static str,
    pub cnt: u8,
    pub cnt_from: &'static str,
    pub user_timeout_ms: u32,
    pub probes_out: u8,
    pub next_probe_ms: Option<u64>,
    /// Predicted seconds from the peer's last sign of life to the kernel giving up.
    pub time_to_detect_s: Option<u64>,
    pub at_risk: bool,
}

/// What the config of one socket is now, after defaults are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub on: bool,
    pub idle_s: u32,
    pub intvl_s: u32,
    pub cnt: u8,
    pub user_timeout_ms: u32,
}

pub struct Inventory {
    sockets: HashMap<u64, Entry>,
    defaults: HashMap<u32, NsDefaults>,
    /// Sockets per namespace: a namespace's defaults are forgotten with its last socket, since
    /// the kernel reuses a dead namespace's inode number for a new one.
    members: HashMap<u32, usize>,
    /// A re-walk of the kernel's tables in progress (see `resync`).
    walk: Option<resync::Walk>,
    pub idle_budget: Duration,
}

impl Inventory {
    pub fn new(idle_budget: Duration) -> Self {
        Inventory { sockets: HashMap::new(), defaults: HashMap::new(), members: HashMap::new(), walk: None, idle_budget }
    }

    pub fn namespaces(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.sockets.values().map(|e| e.flow.netns).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn defaults(&self) -> &HashMap<u32, NsDefaults> {
        &self.defaults
    }

    /// Applies an inventory event; returns the socket's effective config before and after when
    /// a known socket's keepalive configuration changed.
    pub fn apply(&mut self, ev: &KernelEvent, owner: Option<Owner>) -> Option<(Effective, Effective)> {
        match ev.kind {
            Kind::Gone => {
                if let Some(w) = &mut self.walk {
                    w.gone.insert(ev.sk);
                }
                if let Some(gone) = self.sockets.remove(&ev.sk) {
                    self.leave(gone.flow.netns);
                }
                None
            }
            // Probe-path events and re-armed timers refresh what the socket is doing now.
            Kind::Probe | Kind::Answered | Kind::Rearmed => {
                if let Some(e) = self.sockets.get_mut(&ev.sk) {
                    e.info.next_timer_ms = ev.info.next_timer_ms;
                    e.info.probes_out = ev.info.probes_out;
                    e.info.state = ev.info.state;
                    e.seen = std::time::Instant::now();
                }
                None
            }
            // Sockets not connected yet (options set before connect) or already closed join
            // when they reach ESTABLISHED or LISTEN; tracking them would leak closed ones.
            Kind::Settings if !self.sockets.contains_key(&ev.sk) && !tracked_state(ev.info.state) => None,
            Kind::Open | Kind::Settings | Kind::Walked => {
                // The kernel read the namespace defaults too; they are fresh unless a sysctl
                // poll already knows better.
                // A namespace's first socket brings the kernel's own reading of its defaults;
                // later a sysctl poll may know better.
                let fresh = NsDefaults { idle_s: ev.info.ns_idle_s, intvl_s: ev.info.ns_intvl_s, cnt: ev.info.ns_cnt };
                if self.members.contains_key(&ev.flow.netns) {
                    self.defaults.entry(ev.flow.netns).or_insert(fresh);
                } else {
                    self.defaults.insert(ev.flow.netns, fresh);
                }
                let own = Keepalive {
                    idle_s: if ev.info.sources.idle { ev.keepalive.idle_s } else { 0 },
                    intvl_s: if ev.info.sources.intvl { ev.keepalive.intvl_s } else { 0 },
                    cnt: if ev.info.sources.cnt { ev.keepalive.cnt } else { 0 },
                    user_timeout_ms: ev.keepalive.user_timeout_ms,
                };
                let new = Entry { flow: ev.flow, ino: ev.ino, own, info: ev.info, owner, owner_tries: 0, seen: std::time::Instant::now() };
                let before = self.sockets.get(&ev.sk).map(|e| self.effective(e));
                let after = self.effective(&new);
                let keep_owner = new.owner.is_none();
                let old = self.sockets.insert(ev.sk, new);
                match old {
                    None => *self.members.entry(ev.flow.netns).or_default() += 1,
                    Some(old) if old.flow.netns != ev.flow.netns => {
                        // The address was reused by a socket elsewhere; the close was lost.
                        self.leave(old.flow.netns);
                        *self.members.entry(ev.flow.netns).or_default() += 1;
                    }
                    Some(old) => {
                        if let (true, Some(e)) = (keep_owner, self.sockets.get_mut(&ev.sk)) {
                            e.owner = old.owner;
                        }
                    }
                }
                match before {
                    Some(b) if b != after && ev.kind == Kind::Settings => Some((b, after)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Records a namespace's sysctl values; returns the sockets whose effective config changed.
    pub fn set_defaults(&mut self, netns: u32, d: NsDefaults) -> Vec<(u64, Effective, Effective)> {
        // A poll that raced the namespace's last close must not leave defaults behind for a
        // new namespace that reuses the inode number.
        if !self.members.contains_key(&netns) {
            return Vec::new();
        }
        let Some(old) = self.defaults.insert(netns, d) else { return Vec::new() };
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

    /// Sockets with a file but no known owner yet: (socket, inode).
    pub fn unowned(&mut self) -> Vec<(u64, u64)> {
        // Looked up at polls 1, 2, 4, … 64 after the socket appeared: quick for the common case,
        // and a host whose /proc is slow to scan is not rescanned for the same socket forever.
        const LAST_POLL: u8 = 128;
        let mut out = Vec::new();
        for (sk, e) in self.sockets.iter_mut().filter(|(_, e)| e.owner.is_none() && e.ino != 0 && e.owner_tries < LAST_POLL) {
            e.owner_tries += 1;
            if e.owner_tries.is_power_of_two() {
                out.push((*sk, e.ino));
            }
        }
        out
    }

    pub fn set_owner(&mut self, sk: u64, owner: Owner) {
        if let Some(e) = self.sockets.get_mut(&sk) {
            e.owner = Some(owner);
        }
    }

    pub fn get(&self, sk: u64) -> Option<&Entry> {
        self.sockets.get(&sk)
    }

    pub fn effective(&self, e: &Entry) -> Effective {
        let d = self.defaults.get(&e.flow.netns).copied().unwrap_or(NsDefaults {
            idle_s: e.info.ns_idle_s,
            intvl_s: e.info.ns_intvl_s,
            cnt: e.info.ns_cnt,
        });
        effective_with(e, &d)
    }

    pub fn view(&self, e: &Entry) -> SocketView {
        let eff = self.effective(e);
        let from = |own: bool| if own { "socket" } else { "sysctl" };
        let ttd = time_to_detect(&eff);
        let elapsed = e.seen.elapsed().as_millis() as u64;
        SocketView {
            family: if e.flow.saddr.is_ipv4() { "ipv4" } else { "ipv6" },
            state: state_name(e.info.state),
            saddr: e.flow.saddr,
            sport: e.flow.sport,
            daddr: e.flow.daddr,
            dport: e.flow.dport,
            netns: e.flow.netns,
            pid: e.owner.as_ref().map(|o| o.pid),
            comm: e.owner.as_ref().map(|o| o.comm.clone()),
            cgroup: (e.info.cgroup != 0).then_some(e.info.cgroup),
            keepalive: eff.on,
            idle_s: eff.idle_s,
            idle_from: from(e.own.idle_s != 0),
            intvl_s: eff.intvl_s,
            intvl_from: from(e.own.intvl_s != 0),
            cnt: eff.cnt,
            cnt_from: from(e.own.cnt != 0),
            user_timeout_ms: eff.user_timeout_ms,
            probes_out: e.info.probes_out,
            next_probe_ms: self.next_probe_ms(e, &eff, elapsed),
            time_to_detect_s: ttd,
            at_risk: self.at_risk(&eff),
        }
    }

    /// When the keepalive timer fires next. A socket whose options were set before connect
    /// reports ESTABLISHED just before the kernel arms its timer (to `idle`); until the timer
    /// first fires, that is the best estimate.
    fn next_probe_ms(&self, e: &Entry, eff: &Effective, elapsed_ms: u64) -> Option<u64> {
        if !eff.on {
            return None;
        }
        let armed = e.info.next_timer_ms.or_else(|| {
            (e.info.state == 1 && e.info.probes_out == 0).then(|| u64::from(eff.idle_s) * 1000)
        })?;
        Some(armed.saturating_sub(elapsed_ms))
    }

    /// At risk: keepalive off, or its idle longer than the budget (a middlebox on the path with
    /// that idle timeout forgets the flow before the first probe).
    pub fn at_risk(&self, eff: &Effective) -> bool {
        !eff.on || u64::from(eff.idle_s) > self.idle_budget.as_secs()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.sockets.values()
    }
}

fn effective_with(e: &Entry, d: &NsDefaults) -> Effective {
    let pick = |own: u32, def: u32| if own != 0 { own } else { def };
    Effective {
        on: e.info.keepalive_on,
        idle_s: pick(e.own.idle_s, d.idle_s),
        intvl_s: pick(e.own.intvl_s, d.intvl_s),
        cnt: if e.own.cnt != 0 { e.own.cnt } else { d.cnt },
        user_timeout_ms: e.own.user_timeout_ms,
    }
}

/// Linux gives up after `cnt` unanswered probes: idle + intvl × cnt. With TCP_USER_TIMEOUT set,
/// `cnt` is ignored: it gives up at the first timer firing (idle, idle + intvl, …) that finds
/// the user timeout passed with at least one probe out.
pub fn time_to_detect(eff: &Effective) -> Option<u64> {
    if !eff.on {
        return None;
    }
    let (idle, intvl) = (u64::from(eff.idle_s), u64::from(eff.intvl_s).max(1));
    if eff.user_timeout_ms == 0 {
        return Some(idle + intvl * u64::from(eff.cnt));
    }
    let ut = u64::from(eff.user_timeout_ms).div_ceil(1000);
    // The first firing is the first probe; it can only give up from the second one on.
    let after_first = ut.saturating_sub(idle).div_ceil(intvl).max(1);
    Some(idle + intvl * after_first)
}

/// States a socket is inventoried in: everything between connected/listening and gone.
fn tracked_state(state: u8) -> bool {
    !matches!(state, 2 | 6 | 7 | 12)
}

pub fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eff(on: bool, idle: u32, intvl: u32, cnt: u8, ut: u32) -> Effective {
        Effective { on, idle_s: idle, intvl_s: intvl, cnt, user_timeout_ms: ut }
    }

    #[test]
    fn detection_time_follows_the_kernel_rules() {
        assert_eq!(time_to_detect(&eff(true, 7200, 75, 9, 0)), Some(7875));
        assert_eq!(time_to_detect(&eff(true, 1, 1, 3, 0)), Some(4));
        assert_eq!(time_to_detect(&eff(false, 1, 1, 3, 0)), None);
        // user timeout 10 s with idle 5, intvl 2: firings at 5 (probe 1), 7, 9, 11 → gives up at 11.
        assert_eq!(time_to_detect(&eff(true, 5, 2, 9, 10_000)), Some(11));
        // A user timeout shorter than idle still needs the first probe out: idle + intvl.
        assert_eq!(time_to_detect(&eff(true, 60, 10, 9, 1_000)), Some(70));
    }

    #[test]
    fn risk_follows_the_budget() {
        let inv = Inventory::new(Duration::from_secs(350));
        assert!(inv.at_risk(&eff(false, 1, 1, 1, 0)));
        assert!(inv.at_risk(&eff(true, 7200, 75, 9, 0)));
        assert!(!inv.at_risk(&eff(true, 300, 75, 9, 0)));
    }
}
