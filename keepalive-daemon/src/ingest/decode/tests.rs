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
        answered: 0,
        _pad: [0; 5],
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

#[test]
fn folded_events_are_kept() {
    let r = raw();
    let ev = decode(&bytes(&r), 250).unwrap();
    assert_eq!((ev.answered, ev.closes), (None, false));
    // An answered run of 0 probes is still an answer: the kernel writes probes + 1.
    let mut r = raw();
    r.answered = 1;
    r.flags |= FLAG_CLOSES;
    let ev = decode(&bytes(&r), 250).unwrap();
    assert_eq!((ev.answered, ev.closes), (Some(0), true));
    assert!(ev.info.keepalive_on && ev.info.next_timer_ms.is_some());
}
