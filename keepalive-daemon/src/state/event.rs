//! The events the daemon publishes (JSON lines on stdout and on `/events`).
use std::{fmt, net::IpAddr};

use serde::{Serialize, Serializer};

use crate::{
    ingest::decode::{Flow, Keepalive},
    state::labels::SocketLabels,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The n-th unanswered probe of the current run went out.
    Probe,
    /// The kernel counted a probe but could not send it (`reason`); it retries in 0.5 s.
    #[serde(rename = "probe_failed")]
    ProbeFailed,
    /// The peer answered after `probes` probes.
    Answered,
    /// Keepalive declared the connection dead.
    Dead,
    /// The socket's keepalive configuration changed (setsockopt, or its namespace's sysctl).
    Settings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// No answer to `cnt` probes (or TCP_USER_TIMEOUT passed): peer crashed or path silent.
    Timeout,
    /// A RST answered a probe: peer rebooted, or a middlebox forgot the idle flow.
    Reset,
    /// Probes drew ICMP destination-unreachable errors; Linux still reports ETIMEDOUT.
    Unreachable,
}

impl Cause {
    pub const ALL: [Cause; 3] = [Cause::Timeout, Cause::Reset, Cause::Unreachable];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Timeout => "timeout",
            Cause::Reset => "reset",
            Cause::Unreachable => "unreachable",
        }
    }
}

/// Why a counted probe did not leave the host. What each hook family can tell apart differs:
/// fentry and kprobe see `tcp_write_wakeup`'s return value, the tracepoint rung only the
/// kernel's reaction to it (the timer re-armed at the 0.5 s resource interval with
/// `icsk_probes_out` unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// `tcp_write_wakeup` returned NET_XMIT_DROP: a qdisc or the device dropped the probe on
    /// this host (full or zero-length queue, a veth peer whose backlog is full).
    LocalDrop,
    /// Another positive return value.
    XmitError,
    /// Tracepoint rung: the probe was counted and not sent; which drop it was is not visible.
    NotSent,
}

impl FailReason {
    pub const ALL: [FailReason; 3] = [
        FailReason::LocalDrop,
        FailReason::XmitError,
        FailReason::NotSent,
    ];

    /// From the event's hook family and the return value it carries (0 when not seen).
    pub fn classify(hook: &str, ret: i32) -> Self {
        // NET_XMIT_DROP (include/linux/netdevice.h): the only positive value the IP output path
        // passes up after net_xmit_eval() has turned NET_XMIT_CN into 0.
        const NET_XMIT_DROP: i32 = 1;
        match (hook, ret) {
            ("tracepoint", _) | (_, 0) => FailReason::NotSent,
            (_, NET_XMIT_DROP) => FailReason::LocalDrop,
            _ => FailReason::XmitError,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::LocalDrop => "local_drop",
            FailReason::XmitError => "xmit_error",
            FailReason::NotSent => "not_sent",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KeepaliveJson {
    /// SO_KEEPALIVE.
    pub enabled: bool,
    pub idle_s: u32,
    pub intvl_s: u32,
    pub cnt: u8,
    pub user_timeout_ms: u32,
}

impl From<Keepalive> for KeepaliveJson {
    fn from(k: Keepalive) -> Self {
        KeepaliveJson {
            enabled: true,
            idle_s: k.idle_s,
            intvl_s: k.intvl_s,
            cnt: k.cnt,
            user_timeout_ms: k.user_timeout_ms,
        }
    }
}

/// A wall-clock time in nanoseconds since the Unix epoch, written as RFC 3339 (UTC,
/// nanoseconds) only when shown: most events reach only counters, and formatting every one
/// took ~7 % of the daemon's CPU in a probe storm (perf, 5 000 loopback pairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WallClock(pub i64);

impl fmt::Display for WallClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dt = chrono::DateTime::from_timestamp_nanos(self.0);
        f.write_str(&dt.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
    }
}

impl Serialize for WallClock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// RFC 3339, UTC, nanoseconds.
    pub ts: WallClock,
    pub event: EventKind,
    pub family: &'static str,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Network namespace inode, as in `readlink /proc/<pid>/ns/net`.
    pub netns: u32,
    pub pid: Option<u32>,
    /// The owning process's name (as `process`).
    pub comm: Option<String>,
    /// The name of the thread that made the call, where it differs from the process's
    /// (`settings` events raised in a syscall).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// Who the socket belongs to (`state::labels`), flattened: `process`, `unit`, `slice`,
    /// `container`, `pod`, `k8s_namespace`, `role`, `port`, `peer_group`; null where unknown.
    #[serde(flatten)]
    pub labels: SocketLabels,
    pub probes: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// `probe_failed` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    /// ICMP destination-unreachable errors seen for the flow during this run (dead only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_unreachable: Option<u32>,
    pub keepalive: KeepaliveJson,
    /// `settings` only: the configuration before the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<KeepaliveJson>,
    /// `dead` only: seconds from the peer's last sign of life (idle before the first probe)
    /// to the kernel giving up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected_after_s: Option<f64>,
    /// Hook family that saw the event.
    pub hook: &'static str,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Probe => "probe",
            EventKind::ProbeFailed => "probe_failed",
            EventKind::Answered => "answered",
            EventKind::Dead => "dead",
            EventKind::Settings => "settings",
        }
    }
}

impl Event {
    pub fn new(
        kind: EventKind,
        ts: WallClock,
        flow: &Flow,
        probes: u8,
        k: Keepalive,
        hook: &'static str,
    ) -> Self {
        Event {
            ts,
            event: kind,
            family: if flow.saddr.is_ipv4() { "ipv4" } else { "ipv6" },
            saddr: flow.saddr,
            sport: flow.sport,
            daddr: flow.daddr,
            dport: flow.dport,
            netns: flow.netns,
            pid: None,
            comm: None,
            thread: None,
            labels: SocketLabels::default(),
            probes,
            cause: None,
            reason: None,
            errno: None,
            icmp_unreachable: None,
            keepalive: k.into(),
            previous: None,
            detected_after_s: None,
            hook,
        }
    }

    /// One JSON line, newline included.
    pub fn to_line(&self) -> String {
        let mut s =
            serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        s.push('\n');
        s
    }
}

impl From<crate::state::inventory::Effective> for KeepaliveJson {
    fn from(e: crate::state::inventory::Effective) -> Self {
        KeepaliveJson {
            enabled: e.on,
            idle_s: e.idle_s,
            intvl_s: e.intvl_s,
            cnt: e.cnt,
            user_timeout_ms: e.user_timeout_ms,
        }
    }
}

/// Symbolic name of the errnos a TCP connection can die with.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::ENETDOWN => "ENETDOWN",
        libc::EPROTO => "EPROTO",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}
