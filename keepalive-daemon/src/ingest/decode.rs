//! Ring-buffer records → typed kernel events.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use super::ages::Activity;

use keepalive_common::{
    EV_ANSWERED, EV_CLOSED, EV_INVENTORY, EV_PROBE, EV_PROBE_FAILED, EV_REARMED, EV_RESET,
    EV_SETTINGS, EV_SOCK_CLOSE, EV_SOCK_OPEN, EV_TIMEOUT, FLAG_CLOSES, FLAG_KEEPALIVE_ON,
    FLAG_TIMER_PENDING, HOOK_FENTRY, HOOK_KPROBE, RawEvent,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Probe,
    /// A probe the kernel counted but could not send (`errno`: the positive return value of
    /// `tcp_write_wakeup` where the hook sees it, else 0).
    ProbeFailed,
    Answered,
    Timeout,
    Reset,
    Closed,
    /// Inventory: the socket entered ESTABLISHED or LISTEN.
    Open,
    /// Inventory: the socket entered CLOSE.
    Gone,
    /// Inventory: a keepalive option was set, or accept() gave the socket its file.
    Settings,
    /// Inventory: a record of the startup walk over every TCP socket.
    Walked,
    /// The keepalive timer fired without probing and re-armed: when it fires next.
    Rearmed,
}

/// A connection as the daemon names it: addresses are the socket's own (local = `saddr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

/// Effective keepalive settings: the socket's own, or its namespace's where the socket says 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle_s: u32,
    pub intvl_s: u32,
    pub cnt: u8,
    pub user_timeout_ms: u32,
}

/// Where each effective value comes from: `true` = set on the socket, `false` = namespace sysctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sources {
    pub idle: bool,
    pub intvl: bool,
    pub cnt: bool,
}

/// What the inventory needs beyond the probe path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketInfo {
    pub keepalive_on: bool,
    pub state: u8,
    pub probes_out: u8,
    pub sources: Sources,
    /// Namespace defaults, seconds / count.
    pub ns_idle_s: u32,
    pub ns_intvl_s: u32,
    pub ns_cnt: u8,
    /// Milliseconds until the keepalive timer fires, when it is pending.
    pub next_timer_ms: Option<u64>,
    pub cgroup: u64,
    pub activity: Activity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    pub ts_ns: u64,
    pub sk: u64,
    pub ino: u64,
    pub kind: Kind,
    pub hook: &'static str,
    pub probes: u8,
    pub errno: i32,
    pub flow: Flow,
    pub keepalive: Keepalive,
    pub info: SocketInfo,
    /// The process that made the call, for events raised in its syscall (pid, comm).
    pub task: Option<(u32, String)>,
    /// Events the kernel folded into this record to save ring space (`pipeline::event_loop`
    /// unfolds them): the answer its timer run found first, with that run's probe count …
    pub answered: Option<u8>,
    /// … and the socket's close, right after the event.
    pub closes: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Length(usize),
    Kind(u8),
    Family(u16),
}

pub fn decode(bytes: &[u8], hz: u32) -> Result<KernelEvent, DecodeError> {
    if bytes.len() != RawEvent::SIZE {
        return Err(DecodeError::Length(bytes.len()));
    }
    // SAFETY: length checked; RawEvent is plain integers, valid for any bit pattern.
    let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = match raw.kind {
        EV_PROBE => Kind::Probe,
        EV_PROBE_FAILED => Kind::ProbeFailed,
        EV_ANSWERED => Kind::Answered,
        EV_TIMEOUT => Kind::Timeout,
        EV_RESET => Kind::Reset,
        EV_CLOSED => Kind::Closed,
        EV_SOCK_OPEN => Kind::Open,
        EV_SOCK_CLOSE => Kind::Gone,
        EV_SETTINGS => Kind::Settings,
        EV_INVENTORY => Kind::Walked,
        EV_REARMED => Kind::Rearmed,
        other => return Err(DecodeError::Kind(other)),
    };
    let (saddr, daddr) = match raw.family {
        AF_INET => (v4(&raw.saddr), v4(&raw.daddr)),
        AF_INET6 => (v6(raw.saddr), v6(raw.daddr)),
        other => return Err(DecodeError::Family(other)),
    };
    let hz = hz.max(1);
    let pick = |own: u32, ns: u32| if own != 0 { own } else { ns };
    Ok(KernelEvent {
        ts_ns: raw.ts_ns,
        sk: raw.sk,
        ino: raw.ino,
        kind,
        hook: match raw.hook {
            HOOK_FENTRY => "fentry",
            HOOK_KPROBE => "kprobe",
            _ => "tracepoint",
        },
        probes: raw.probes,
        errno: raw.errno,
        flow: Flow {
            netns: raw.netns,
            saddr,
            sport: raw.sport,
            daddr,
            dport: raw.dport,
        },
        keepalive: Keepalive {
            idle_s: pick(raw.idle_jiffies, raw.ns_idle_jiffies) / hz,
            intvl_s: pick(raw.intvl_jiffies, raw.ns_intvl_jiffies) / hz,
            cnt: if raw.cnt != 0 { raw.cnt } else { raw.ns_cnt },
            user_timeout_ms: raw.user_timeout_ms,
        },
        info: SocketInfo {
            keepalive_on: raw.flags & FLAG_KEEPALIVE_ON != 0,
            state: raw.state,
            probes_out: raw.probes_out,
            sources: Sources {
                idle: raw.idle_jiffies != 0,
                intvl: raw.intvl_jiffies != 0,
                cnt: raw.cnt != 0,
            },
            ns_idle_s: raw.ns_idle_jiffies / hz,
            ns_intvl_s: raw.ns_intvl_jiffies / hz,
            ns_cnt: raw.ns_cnt,
            // Wrapping: jiffies start near the top of the 32-bit range on purpose.
            next_timer_ms: (raw.flags & FLAG_TIMER_PENDING != 0).then(|| {
                (raw.timer_expires.wrapping_sub(raw.jiffies) as i64).max(0) as u64 * 1000
                    / hz as u64
            }),
            cgroup: raw.cgroup,
            activity: Activity::from_jiffies(
                [raw.since_send, raw.since_recv, raw.since_ack],
                raw.jiffies as u32,
                hz,
            ),
        },
        task: (raw.pid != 0).then(|| {
            let end = raw
                .comm
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(raw.comm.len());
            (
                raw.pid,
                String::from_utf8_lossy(&raw.comm[..end]).into_owned(),
            )
        }),
        answered: raw.answered.checked_sub(1),
        closes: raw.flags & FLAG_CLOSES != 0,
    })
}

/// Splits a buffer of back-to-back records (the iterator's output).
pub fn records(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.chunks_exact(RawEvent::SIZE)
}

fn v4(b: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// IPv4-mapped addresses of dual-stack sockets are shown as the IPv4 address they carry.
fn v6(b: [u8; 16]) -> IpAddr {
    let a = Ipv6Addr::from(b);
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

/// A decoded event as unit tests of the later stages need one: an established IPv4 socket with
/// keepalive on (idle 1, intvl 1, cnt 3 of its own; Linux defaults in its namespace).
#[cfg(test)]
pub fn sample(kind: Kind, sk: u64, flow: Flow, probes: u8) -> KernelEvent {
    KernelEvent {
        ts_ns: 0,
        sk,
        ino: 0,
        kind,
        hook: "tracepoint",
        probes,
        errno: 0,
        flow,
        keepalive: Keepalive {
            idle_s: 1,
            intvl_s: 1,
            cnt: 3,
            user_timeout_ms: 0,
        },
        info: SocketInfo {
            keepalive_on: true,
            state: 1,
            probes_out: probes,
            sources: Sources::default(),
            ns_idle_s: 7200,
            ns_intvl_s: 75,
            ns_cnt: 9,
            next_timer_ms: None,
            cgroup: 0,
            activity: Activity::NONE,
        },
        task: None,
        answered: None,
        closes: false,
    }
}

#[cfg(test)]
mod tests;
