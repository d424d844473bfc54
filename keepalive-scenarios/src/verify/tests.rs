//! The daemon-side checks must catch each kind of wrong report; these feed them synthetic
//! event streams, so a check that could never fail shows up here.

use super::{Me, check_metrics, flow::check as check_flow};
use crate::event::{Event, Metrics};
use crate::flow::{Expect, Flow};
use crate::sock::{FAST, Stamp};
use std::time::{Duration, Instant, UNIX_EPOCH};

const NETNS: u64 = 4026532281;

fn me() -> Me {
    Me {
        pid: 1234,
        comm: "keepalive-scena".into(),
    }
}

/// Last packet received at 2026-11-21T23:59:00Z.
fn flow(expect: Expect) -> Flow {
    Flow {
        label: "main",
        local: "192.0.2.2:40000".parse().unwrap(),
        peer: "198.51.100.2:5000".parse().unwrap(),
        ka: Some(FAST),
        last_recv: Stamp {
            wall: UNIX_EPOCH + Duration::from_secs(1_795_305_540),
            mono: Instant::now(),
        },
        expect,
    }
}

fn ev(kind: &str, probes: u32, at_s: u32, extra: &str) -> Event {
    let line = format!(
        r#"{{"ts":"2026-11-21T23:59:{at_s:02}.100000000Z","event":"{kind}","family":"ipv4","saddr":"192.0.2.2","sport":40000,"daddr":"198.51.100.2","dport":5000,"netns":{NETNS},"pid":1234,"comm":"keepalive-scena","probes":{probes},"keepalive":{{"idle_s":1,"intvl_s":1,"cnt":3,"user_timeout_ms":0}}{extra}}}"#
    );
    serde_json::from_str(&line).unwrap()
}

fn dead(probes: u32, at_s: u32, cause: &str, errno: &str) -> Event {
    ev(
        "dead",
        probes,
        at_s,
        &format!(r#","cause":"{cause}","errno":"{errno}""#),
    )
}

const CRASHED: Expect = Expect::Dead {
    probes: 3,
    cause: "timeout",
    errno: "ETIMEDOUT",
    detect: (3.0, 5.0),
};

fn run(f: &Flow, evs: &[Event]) -> (Option<f64>, Vec<String>) {
    let mut failures = Vec::new();
    let refs: Vec<&Event> = evs.iter().collect();
    let d = check_flow(f, &refs, NETNS, &me(), &mut failures);
    (d, failures)
}

#[test]
fn correct_crash_passes_and_measures_detection() {
    let evs = [
        ev("probe", 1, 1, ""),
        ev("probe", 2, 2, ""),
        ev("probe", 3, 3, ""),
        dead(3, 4, "timeout", "ETIMEDOUT"),
    ];
    let (d, failures) = run(&flow(CRASHED), &evs);
    assert!(failures.is_empty(), "{failures:?}");
    assert!((d.unwrap() - 4.1).abs() < 1e-6);
}

#[test]
fn wrong_cause_count_timing_and_numbering_fail() {
    let f = flow(CRASHED);
    let wrong_cause = [
        ev("probe", 1, 1, ""),
        ev("probe", 2, 2, ""),
        ev("probe", 3, 3, ""),
        dead(3, 4, "reset", "ETIMEDOUT"),
    ];
    assert!(!run(&f, &wrong_cause).1.is_empty());
    let too_few = [
        ev("probe", 1, 1, ""),
        ev("probe", 2, 2, ""),
        dead(2, 4, "timeout", "ETIMEDOUT"),
    ];
    assert!(!run(&f, &too_few).1.is_empty());
    let too_late = [
        ev("probe", 1, 1, ""),
        ev("probe", 2, 2, ""),
        ev("probe", 3, 3, ""),
        dead(3, 9, "timeout", "ETIMEDOUT"),
    ];
    assert!(!run(&f, &too_late).1.is_empty());
    let renumbered = [
        ev("probe", 1, 1, ""),
        ev("probe", 1, 2, ""),
        ev("probe", 3, 3, ""),
        dead(3, 4, "timeout", "ETIMEDOUT"),
    ];
    assert!(!run(&f, &renumbered).1.is_empty());
    let missing_dead = [
        ev("probe", 1, 1, ""),
        ev("probe", 2, 2, ""),
        ev("probe", 3, 3, ""),
    ];
    assert!(!run(&f, &missing_dead).1.is_empty());
}

#[test]
fn identity_fields_are_checked() {
    let f = flow(Expect::Alive {
        min_probes: 1,
        min_answered: 1,
    });
    let mut e = ev("probe", 1, 1, "");
    e.pid = Some(99);
    assert!(!run(&f, &[e.clone(), ev("answered", 1, 1, "")]).1.is_empty());
    e.pid = None;
    assert!(
        run(&f, &[e.clone(), ev("answered", 1, 1, "")]).1.is_empty(),
        "null pid is allowed"
    );
    e.netns += 1;
    assert!(!run(&f, &[e.clone(), ev("answered", 1, 1, "")]).1.is_empty());
    let mut e = ev("probe", 1, 1, "");
    e.keepalive.as_mut().unwrap().cnt = Some(9);
    assert!(!run(&f, &[e, ev("answered", 1, 1, "")]).1.is_empty());
}

#[test]
fn port_zero_does_not_count_for_the_flow() {
    let mut d = dead(3, 4, "timeout", "ETIMEDOUT");
    d.sport = 0;
    assert!(!d.is_flow(flow(CRASHED).local, flow(CRASHED).peer));
}

#[test]
fn alive_and_silent_expectations() {
    let alive = flow(Expect::Alive {
        min_probes: 2,
        min_answered: 2,
    });
    let ok = [
        ev("probe", 1, 1, ""),
        ev("answered", 1, 2, ""),
        ev("probe", 1, 2, ""),
        ev("answered", 1, 3, ""),
    ];
    assert!(run(&alive, &ok).1.is_empty());
    assert!(!run(&alive, &ok[..3]).1.is_empty(), "one answer is too few");
    let died = [
        ev("probe", 1, 1, ""),
        ev("answered", 1, 2, ""),
        ev("probe", 1, 2, ""),
        dead(1, 3, "reset", "ECONNRESET"),
    ];
    assert!(!run(&alive, &died).1.is_empty());
    assert!(!run(&flow(Expect::Silent), &ok[..1]).1.is_empty());
    assert!(run(&flow(Expect::Silent), &[]).1.is_empty());
}

#[test]
fn metrics_must_match_the_json_stream() {
    let evs = [
        ev("probe", 1, 1, ""),
        ev("probe", 2, 2, ""),
        dead(2, 3, "timeout", "ETIMEDOUT"),
    ];
    let m0 = Metrics {
        probes: 10.0,
        ..Metrics::default()
    };
    let good = Metrics {
        probes: 12.0,
        dead_timeout: 1.0,
        ..m0
    };
    let mut failures = Vec::new();
    check_metrics(&evs, &m0, &good, false, &mut failures);
    assert!(failures.is_empty(), "{failures:?}");
    // Skipped hook runs pass only where the caller checks them against the probe count.
    let skipped = Metrics {
        lost: 4.0,
        lost_nested: 4.0,
        ..good
    };
    let mut failures = Vec::new();
    check_metrics(&evs, &m0, &skipped, true, &mut failures);
    assert!(failures.is_empty(), "{failures:?}");
    check_metrics(&evs, &m0, &skipped, false, &mut failures);
    assert_eq!(failures.len(), 1, "{failures:?}");
    for bad in [
        Metrics {
            probes: 13.0,
            ..good
        },
        Metrics {
            dead_timeout: 0.0,
            dead_unreachable: 1.0,
            ..good
        },
        Metrics { lost: 1.0, ..good },
        // A ring-buffer loss beside skipped runs is never explained by them.
        Metrics {
            lost: 5.0,
            lost_nested: 4.0,
            ..good
        },
    ] {
        let mut failures = Vec::new();
        check_metrics(&evs, &m0, &bad, true, &mut failures);
        assert!(!failures.is_empty(), "{bad:?} passed");
    }
}
