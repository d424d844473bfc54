//! Ring-buffer records → typed kernel events.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use super::ages::Activity;

use keepalive_common::{
    EV_ANSWERED, EV_CLOSED, EV_INVENTORY, EV_PROBE, EV_PROBE_FAILED, EV_REARMED, EV_RESET,
    EV_SETTINGS, EV_SOCK_CLOSE, EV_SOCK_OPEN, EV_TIMEOUT, FLAG_KEEPALIVE_ON, FLAG_TIMER_PENDING,
    HOOK_FENTRY, HOOK_KPROBE, RawEvent,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawEvent {
        RawEvent {
            ts_ns: 5,
            sk: 0xffff_8880_0000_1000,
            ino: 77,
            kind: EV_PROBE,
            hook: 0,
            state: 1,
            probes: 2,
            family: AF_INET,
            sport: 40000,
            dport: 5000,
            cnt: 0,
            ns_cnt: 9,
            netns: 4026531840,
            errno: 0,
            idle_jiffies: 250,
            intvl_jiffies: 0,
            ns_idle_jiffies: 7200 * 250,
            ns_intvl_jiffies: 75 * 250,
            user_timeout_ms: 0,
            saddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            flags: FLAG_KEEPALIVE_ON | FLAG_TIMER_PENDING,
            probes_out: 2,
            _pad: [0; 6],
            timer_expires: 4_294_967_290u64.wrapping_add(500),
            jiffies: 4_294_967_290,
            cgroup: 0,
            pid: 0,
            comm: [0; 16],
            since_send: 250,
            since_recv: 500,
            since_ack: u32::MAX,
        }
    }

    fn bytes(r: &RawEvent) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) value.
        unsafe { std::slice::from_raw_parts((r as *const RawEvent).cast::<u8>(), RawEvent::SIZE) }
            .to_vec()
    }

    #[test]
    fn socket_values_win_and_zero_means_namespace_default() {
        let ev = decode(&bytes(&raw()), 250).unwrap();
        assert_eq!(ev.kind, Kind::Probe);
        assert_eq!(
            ev.keepalive,
            Keepalive {
                idle_s: 1,
                intvl_s: 75,
                cnt: 9,
                user_timeout_ms: 0
            }
        );
        assert_eq!(ev.flow.saddr.to_string(), "10.0.0.2");
        assert_eq!(ev.flow.dport, 5000);
        assert!(ev.info.keepalive_on);
        assert_eq!(
            ev.info.sources,
            Sources {
                idle: true,
                intvl: false,
                cnt: false
            }
        );
        assert_eq!(ev.info.next_timer_ms, Some(2000));
        assert_eq!(ev.info.ns_idle_s, 7200);
        // Ages in jiffies become ms; a field the kernel lacks stays unknown.
        assert_eq!(
            (ev.info.activity.send_ms, ev.info.activity.recv_ms),
            (1000, 2000)
        );
        assert_eq!(ev.info.activity.ack_ms, Activity::UNKNOWN);
        assert_eq!(ev.info.activity.path_idle_ms(), Some(1000));
        // A stamp the kernel had not set yet (0) reads as an age of `jiffies`: unknown.
        let mut r = raw();
        r.since_recv = r.jiffies as u32;
        let ev = decode(&bytes(&r), 250).unwrap();
        assert_eq!(ev.info.activity.recv_ms, Activity::UNKNOWN);
    }

    #[test]
    fn mapped_v6_is_shown_as_v4() {
        let mut r = raw();
        r.family = AF_INET6;
        r.saddr = Ipv4Addr::new(10, 9, 8, 7).to_ipv6_mapped().octets();
        r.daddr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        let ev = decode(&bytes(&r), 250).unwrap();
        assert_eq!(ev.flow.saddr.to_string(), "10.9.8.7");
        assert_eq!(ev.flow.daddr.to_string(), "fd00::1");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        /// Whatever the kernel (or a corrupted buffer) hands over, decoding returns, never
        /// panics, and rejects every length but the record size.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let r = decode(&bytes, 250);
            if bytes.len() != RawEvent::SIZE {
                proptest::prop_assert_eq!(r, Err(DecodeError::Length(bytes.len())));
            }
        }

        /// Records with a known kind and family always decode, and the flow comes back as sent.
        #[test]
        fn valid_records_round_trip(kind in 1u8..=11, v6 in proptest::bool::ANY, sport: u16, dport: u16,
                                    addr: [u8; 16], hz in 1u32..2000, idle: u32, ns_idle: u32) {
            let mut r = raw();
            r.kind = kind;
            r.family = if v6 { AF_INET6 } else { AF_INET };
            r.sport = sport;
            r.dport = dport;
            r.saddr = addr;
            r.idle_jiffies = idle;
            r.ns_idle_jiffies = ns_idle;
            let ev = decode(&bytes(&r), hz).expect("valid record");
            proptest::prop_assert_eq!((ev.flow.sport, ev.flow.dport), (sport, dport));
            proptest::prop_assert_eq!(ev.keepalive.idle_s, if idle != 0 { idle } else { ns_idle } / hz);
            if !v6 {
                proptest::prop_assert_eq!(ev.flow.saddr, IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])));
            }
        }
    }

    #[test]
    fn a_failed_probe_keeps_its_return_value() {
        let mut r = raw();
        r.kind = keepalive_common::EV_PROBE_FAILED;
        r.errno = 1;
        let ev = decode(&bytes(&r), 250).unwrap();
        assert_eq!((ev.kind, ev.errno), (Kind::ProbeFailed, 1));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode(&[0u8; 3], 250), Err(DecodeError::Length(3)));
        let mut r = raw();
        r.kind = 99;
        assert_eq!(decode(&bytes(&r), 250), Err(DecodeError::Kind(99)));
        let mut r = raw();
        r.family = 1;
        assert_eq!(decode(&bytes(&r), 250), Err(DecodeError::Family(1)));
    }
}
