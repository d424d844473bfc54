//! What `/sockets` shows of one socket, and the kernel's rules it is computed with.
use serde::Serialize;

use super::{Effective, Entry, Inventory, NOT_ARMED, Risk};
use crate::{ingest::decode::Activity, state::labels::SocketLabels};

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
    /// The owning process's name (as `process`; kept for readers of earlier versions).
    pub comm: Option<String>,
    pub cgroup: Option<u64>,
    /// Who the socket belongs to (`state::labels`), flattened: `process`, `unit`, `slice`,
    /// `container`, `pod`, `k8s_namespace`, `role`, `port`, `peer_group`.
    #[serde(flatten)]
    pub labels: SocketLabels,
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
    /// Seconds since the flow last carried a segment either way (data sent, data received,
    /// ACK received): how long a middlebox on the path has seen nothing of it.
    pub idle_now_s: Option<f64>,
    /// Seconds since the last data segment sent and received (`ss -ti` lastsnd, lastrcv).
    pub last_send_s: Option<f64>,
    pub last_recv_s: Option<f64>,
    /// The idle budget of the path to the peer's group (`labels.peer_group`); none for
    /// listeners.
    pub budget_s: Option<u32>,
    pub risk: Risk,
    /// `risk` is `exposed` or `at_risk`.
    pub at_risk: bool,
}

impl Inventory {
    pub fn view(&self, e: &Entry) -> SocketView {
        let eff = self.effective(e);
        let from = |own: bool| if own { "socket" } else { "sysctl" };
        let ttd = time_to_detect(&eff);
        let elapsed = self.now_ms().saturating_sub(e.seen_ms.into());
        let risk = self.risk(e, &eff);
        // A listener never sends or receives: its ages would count from boot.
        let act = match risk {
            Risk::Listener => Activity::NONE,
            _ => self.activity_now(e),
        };
        let secs = |ms: u32| (ms != Activity::UNKNOWN).then(|| f64::from(ms) / 1000.0);
        let group = (risk != Risk::Listener).then(|| self.peer_group(e));
        SocketView {
            family: if e.daddr().is_ipv4() { "ipv4" } else { "ipv6" },
            state: state_name(e.state),
            saddr: self.addrs.get(e.saddr),
            sport: e.sport,
            daddr: e.daddr(),
            dport: e.dport,
            netns: e.netns,
            pid: (e.pid != 0).then_some(e.pid),
            comm: self.procs.get(&e.pid).map(|p| p.comm.to_string()),
            cgroup: (e.cgroup != 0).then_some(e.cgroup),
            labels: self.labels(e),
            keepalive: eff.on,
            idle_s: eff.idle_s,
            idle_from: from(e.own_idle_s != 0),
            intvl_s: eff.intvl_s,
            intvl_from: from(e.own_intvl_s != 0),
            cnt: eff.cnt,
            cnt_from: from(e.own_cnt != 0),
            user_timeout_ms: eff.user_timeout_ms,
            probes_out: e.probes_out,
            next_probe_ms: self.next_probe_ms(e, &eff, elapsed),
            time_to_detect_s: ttd,
            idle_now_s: act.path_idle_ms().and_then(secs),
            last_send_s: secs(act.send_ms),
            last_recv_s: secs(act.recv_ms),
            budget_s: group.and_then(|g| g.budget_s),
            risk,
            at_risk: risk.uncovered(),
        }
    }

    /// When the keepalive timer fires next. A socket whose options were set before connect
    /// reports ESTABLISHED just before the kernel arms its timer (to `idle`); until the timer
    /// first fires, that is the best estimate.
    fn next_probe_ms(&self, e: &Entry, eff: &Effective, elapsed_ms: u64) -> Option<u64> {
        if !eff.on {
            return None;
        }
        let armed = (e.next_timer_ms != NOT_ARMED)
            .then_some(u64::from(e.next_timer_ms))
            .or_else(|| {
                (e.state == 1 && e.probes_out == 0).then(|| u64::from(eff.idle_s) * 1000)
            })?;
        Some(armed.saturating_sub(elapsed_ms))
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
