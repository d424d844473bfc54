//! The daemon's `/sockets` document and the exact expectations one socket is held to.

use crate::event::{Event, KeepaliveCfg};
use crate::http;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};

/// One `/sockets` entry. Every documented field is required: a missing one fails the parse,
/// which the scenario reports.
#[derive(Clone, Debug, Deserialize)]
pub struct SockView {
    pub family: String,
    pub state: String,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub netns: u64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<u64>,
    pub keepalive: bool,
    pub idle_s: u32,
    pub idle_from: String,
    pub intvl_s: u32,
    pub intvl_from: String,
    pub cnt: u32,
    pub cnt_from: String,
    pub user_timeout_ms: u32,
    pub probes_out: u32,
    pub next_probe_ms: Option<u64>,
    pub time_to_detect_s: Option<u64>,
    pub idle_now_s: Option<f64>,
    pub last_send_s: Option<f64>,
    pub last_recv_s: Option<f64>,
    pub peer_group: Option<String>,
    pub budget_s: Option<u32>,
    pub risk: String,
    pub at_risk: bool,
}

/// A peer on the socket's own host: the daemon holds no budget against it.
pub fn local_peer(local: IpAddr, peer: IpAddr) -> bool {
    let mapped = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (local, peer) = (mapped(local), mapped(peer));
    peer.is_loopback() || peer == local
}

/// `GET /sockets?<query>`.
pub fn query(addr: SocketAddr, q: &str) -> Result<Vec<SockView>> {
    let (code, body) = http::get(addr, &format!("/sockets?{q}"))?;
    if code != 200 {
        bail!("/sockets?{q} answered HTTP {code}: {}", body.trim());
    }
    serde_json::from_str(&body)
        .with_context(|| format!("/sockets?{q}: not the documented document: {body:.300}"))
}

/// A socket as the kernel identifies it: namespace and both endpoints (for a listener the peer
/// is the unspecified address, port 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub netns: u64,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl Key {
    pub fn of(v: &SockView) -> Key {
        Key {
            netns: v.netns,
            local: SocketAddr::new(v.saddr, v.sport),
            peer: SocketAddr::new(v.daddr, v.dport),
        }
    }

    pub fn find<'a>(&self, list: &'a [SockView]) -> Vec<&'a SockView> {
        list.iter().filter(|v| Key::of(v) == *self).collect()
    }

    pub fn is_event(&self, e: &Event) -> bool {
        e.netns == self.netns && e.is_flow(self.local, self.peer)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{}@{}", self.local, self.peer, self.netns)
    }
}

/// Where a value comes from: set on the socket, or inherited from the namespace sysctl.
pub const SOCKET: &str = "socket";
pub const SYSCTL: &str = "sysctl";

/// The exact report expected for one socket.
#[derive(Clone, Debug)]
pub struct Want {
    pub state: &'static str,
    pub on: bool,
    pub idle: (u32, &'static str),
    pub intvl: (u32, &'static str),
    pub cnt: (u32, &'static str),
    pub user_timeout_ms: u32,
    /// (pid, comm) of the program holding the socket.
    pub owner: Option<(u32, String)>,
    /// The owner's cgroup v2 id, where cgroup2 is mounted at /sys/fs/cgroup to look it up.
    pub cgroup: Option<u64>,
    /// The idle the kernel armed the keepalive timer with, when it was longer than `idle`: a
    /// lowered namespace sysctl does not re-arm a pending timer, which fires at its old
    /// deadline and then probes at once.
    pub armed_s: Option<u32>,
}

impl Want {
    /// A connected socket with every value set on the socket itself.
    pub fn own(idle: u32, intvl: u32, cnt: u32, user_timeout_ms: u32) -> Want {
        Want {
            state: "ESTABLISHED",
            on: true,
            idle: (idle, SOCKET),
            intvl: (intvl, SOCKET),
            cnt: (cnt, SOCKET),
            user_timeout_ms,
            owner: None,
            cgroup: None,
            armed_s: None,
        }
    }

    /// A socket that set nothing but (maybe) SO_KEEPALIVE, in a namespace still at the kernel's
    /// compiled-in defaults (a new namespace does not copy the host's sysctls).
    pub fn inherited(state: &'static str, on: bool) -> Want {
        Want {
            state,
            on,
            idle: (7200, SYSCTL),
            intvl: (75, SYSCTL),
            cnt: (9, SYSCTL),
            user_timeout_ms: 0,
            owner: None,
            cgroup: None,
            armed_s: None,
        }
    }

    pub fn owned_by(mut self, pid: u32, comm: &str) -> Want {
        self.owner = Some((pid, comm.to_owned()));
        self.cgroup = super::proc::cgroup_of(pid);
        self
    }

    /// The configuration a `settings` event must carry for this socket.
    pub fn cfg(&self) -> KeepaliveCfg {
        KeepaliveCfg {
            enabled: Some(self.on),
            idle_s: Some(u64::from(self.idle.0)),
            intvl_s: Some(u64::from(self.intvl.0)),
            cnt: Some(u64::from(self.cnt.0)),
            user_timeout_ms: Some(u64::from(self.user_timeout_ms)),
        }
    }

    /// Not covered by keepalive, for an established socket to a peer elsewhere: listeners and
    /// local peers are never at risk.
    pub fn at_risk(&self, budget_s: u32) -> bool {
        self.state == "ESTABLISHED" && (!self.on || self.idle.0 > budget_s)
    }

    /// Every way `v` differs from this expectation, `budget_s` being the daemon's --idle-budget.
    pub fn mismatches(&self, v: &SockView, budget_s: u32) -> Vec<String> {
        let mut bad = Vec::new();
        let mut eq = |what: &str, got: String, want: String| {
            if got != want {
                bad.push(format!("{what} {got} != {want}"));
            }
        };
        eq("state", v.state.clone(), self.state.to_owned());
        eq(
            "family",
            v.family.clone(),
            if v.saddr.is_ipv4() { "ipv4" } else { "ipv6" }.to_owned(),
        );
        eq("keepalive", v.keepalive.to_string(), self.on.to_string());
        eq(
            "idle",
            format!("{}/{}", v.idle_s, v.idle_from),
            format!("{}/{}", self.idle.0, self.idle.1),
        );
        eq(
            "intvl",
            format!("{}/{}", v.intvl_s, v.intvl_from),
            format!("{}/{}", self.intvl.0, self.intvl.1),
        );
        eq(
            "cnt",
            format!("{}/{}", v.cnt, v.cnt_from),
            format!("{}/{}", self.cnt.0, self.cnt.1),
        );
        eq(
            "user_timeout_ms",
            v.user_timeout_ms.to_string(),
            self.user_timeout_ms.to_string(),
        );
        let ttd = detect_after(
            self.on,
            self.idle.0,
            self.intvl.0,
            self.cnt.0,
            self.user_timeout_ms,
        );
        eq(
            "time_to_detect_s",
            format!("{:?}", v.time_to_detect_s),
            format!("{ttd:?}"),
        );
        let risky = self.at_risk(budget_s) && !local_peer(v.saddr, v.daddr);
        eq("at_risk", v.at_risk.to_string(), risky.to_string());
        let class_ok = match v.risk.as_str() {
            "exposed" | "at_risk" => risky,
            "covered" => self.state == "ESTABLISHED" && !risky,
            "listener" => self.state == "LISTEN",
            "local" => local_peer(v.saddr, v.daddr),
            _ => self.state != "ESTABLISHED" && self.state != "LISTEN",
        };
        eq(
            "risk class fits",
            format!("{} {class_ok}", v.risk),
            format!("{} true", v.risk),
        );
        if let Some((pid, comm)) = &self.owner {
            eq(
                "owner",
                format!("{:?}/{:?}", v.comm, v.pid),
                format!("{:?}/{:?}", Some(comm), Some(pid)),
            );
        }
        if let Some(id) = self.cgroup {
            eq(
                "cgroup",
                format!("{:?}", v.cgroup),
                format!("{:?}", Some(id)),
            );
        }
        bad
    }

    /// The keepalive timer as listed: no probe out on a quiet healthy connection, and the next
    /// firing at most `idle` away (a few jiffies of slack) when keepalive is on, none when off.
    /// Checked once, not waited for: the timer does not change by itself.
    pub fn timer_mismatches(&self, v: &SockView) -> Vec<String> {
        let mut bad = Vec::new();
        if v.probes_out != 0 {
            bad.push(format!("probes_out {} != 0", v.probes_out));
        }
        let next_ok = match v.next_probe_ms {
            Some(ms) => {
                let armed = self.idle.0.max(self.armed_s.unwrap_or(0));
                self.on && ms <= u64::from(armed) * 1000 + 100
            }
            None => !self.on,
        };
        if !next_ok {
            bad.push(format!(
                "next_probe_ms {:?} with keepalive {} idle {}",
                v.next_probe_ms, self.on, self.idle.0
            ));
        }
        bad
    }
}

/// When the kernel gives up on a silent peer, seconds after its last packet, by replaying the
/// keepalive timer (net/ipv4/tcp_timer.c, tcp_keepalive_timer): it first fires at `idle`, then
/// every `intvl`. At each firing it gives up if TCP_USER_TIMEOUT is set, has passed and a probe
/// is out, or — without a user timeout — if `cnt` probes are out; otherwise it sends a probe.
/// Written independently of the daemon's closed form, so the two check each other.
pub fn detect_after(
    on: bool,
    idle: u32,
    intvl: u32,
    cnt: u32,
    user_timeout_ms: u32,
) -> Option<u64> {
    if !on {
        return None;
    }
    let (mut t, mut probes) = (u64::from(idle), 0u32);
    loop {
        let give_up = if user_timeout_ms > 0 {
            t * 1000 >= u64::from(user_timeout_ms) && probes > 0
        } else {
            probes >= cnt
        };
        if give_up {
            return Some(t);
        }
        probes += 1;
        t += u64::from(intvl.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_replays_the_timer() {
        assert_eq!(detect_after(true, 7200, 75, 9, 0), Some(7875));
        assert_eq!(detect_after(true, 11, 4, 5, 0), Some(31));
        // idle 13, intvl 6, user timeout 20 s: probes at 13 and 19, gives up at 25.
        assert_eq!(detect_after(true, 13, 6, 4, 20_000), Some(25));
        // A user timeout shorter than idle still needs one probe out.
        assert_eq!(detect_after(true, 60, 10, 9, 1_000), Some(70));
        assert_eq!(detect_after(false, 1, 1, 1, 0), None);
    }

    #[test]
    fn expectations_catch_each_difference() {
        let v: SockView = serde_json::from_str(
            r#"{"family":"ipv4","state":"ESTABLISHED","saddr":"192.0.2.2","sport":4000,"daddr":"198.51.100.2","dport":80,
            "netns":1,"pid":7,"comm":"socat","cgroup":1,"keepalive":true,"idle_s":11,"idle_from":"socket","intvl_s":4,
            "intvl_from":"socket","cnt":5,"cnt_from":"socket","user_timeout_ms":0,"probes_out":0,"next_probe_ms":10990,
            "time_to_detect_s":31,"idle_now_s":1.5,"last_send_s":1.5,"last_recv_s":1.6,
            "peer_group":"public","budget_s":350,"risk":"covered","at_risk":false}"#,
        )
        .unwrap();
        let want = Want::own(11, 4, 5, 0).owned_by(7, "socat");
        assert_eq!(want.mismatches(&v, 350), Vec::<String>::new());
        assert_eq!(want.timer_mismatches(&v), Vec::<String>::new());
        let unarmed = SockView {
            next_probe_ms: None,
            ..v.clone()
        };
        assert_eq!(
            want.timer_mismatches(&unarmed).len(),
            1,
            "keepalive on without a timer"
        );
        assert_eq!(
            want.mismatches(&v, 10).len(),
            2,
            "at_risk and the risk class follow the budget"
        );
        assert_eq!(
            Want::own(11, 4, 6, 0)
                .owned_by(7, "socat")
                .mismatches(&v, 350)
                .len(),
            2,
            "cnt and ttd"
        );
        let mut inherited = Want::own(11, 4, 5, 0);
        inherited.cnt.1 = SYSCTL;
        assert_eq!(inherited.mismatches(&v, 350).len(), 1);
        assert_eq!(
            Want::own(11, 4, 5, 0)
                .owned_by(8, "socat")
                .mismatches(&v, 350)
                .len(),
            1
        );
    }
}
