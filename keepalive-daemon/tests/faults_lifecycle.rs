//! Never leak across the process's life: kill -9 and a restart that picks up the runs in
//! progress, SIGINT, and a start without the privileges — each leaves no program attached.
mod common;
mod faults_support;
mod netns;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use faults_support::*;
use netns::Netns;

/// kill -9 leaves nothing attached; the next daemon starts, picks up the run in progress
/// where the first left it (no probe counted twice, no death invented), and reports its end.
#[test]
fn kill9_then_restart_relearns_runs_in_progress() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let ns = Netns::new("k9");
    let conn = netns::silent_peer(&ns, 1, 1, 8);

    let mut a = start_with(&["--json"], Stdio::piped()).expect("daemon A");
    let a_lines = collect_stdout(&mut a);
    wait_for("two probes seen by A", Duration::from_secs(10), || {
        events_in(&a_lines, ns.inode, "probe").len() >= 2
    });
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(
        leftover_programs().is_empty(),
        "kill -9 left programs: {:?}",
        leftover_programs()
    );
    let a_max = events_in(&a_lines, ns.inode, "probe")
        .iter()
        .filter_map(|e| e["probes"].as_u64())
        .max()
        .unwrap();

    let mut b = start_with(&["--json"], Stdio::piped()).expect("daemon B");
    let b_lines = collect_stdout(&mut b);
    let log = std::fs::read_to_string(&b.log).unwrap_or_default();
    assert!(
        log.contains("1 in the middle of a probe run")
            || log.contains("in the middle of a probe run"),
        "{log}"
    );
    wait_for("B reports the death", Duration::from_secs(15), || {
        !events_in(&b_lines, ns.inode, "dead").is_empty()
    });
    let b_probes: Vec<u64> = events_in(&b_lines, ns.inode, "probe")
        .iter()
        .filter_map(|e| e["probes"].as_u64())
        .collect();
    assert!(
        b_probes.iter().all(|n| *n > a_max),
        "B recounted probes A had reported: A up to {a_max}, B {b_probes:?}"
    );
    assert!(
        b_probes.windows(2).all(|w| w[1] == w[0] + 1),
        "B's probes not consecutive: {b_probes:?}"
    );
    let dead = events_in(&b_lines, ns.inode, "dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["cause"], "timeout");
    assert_eq!(dead[0]["probes"].as_u64(), Some(8));
    assert_eq!(conn.app_error(), Some(libc::ETIMEDOUT));
    let total = ns.nstat("TcpExtTCPKeepAlive");
    assert_eq!(total, 8, "kernel sent {total} probes");
    let stopped = stop(b);
    assert!(stopped < Duration::from_secs(1));
}

#[test]
fn sigint_detaches_within_a_second() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let mut r = start(&[]).expect("daemon");
    let t = Instant::now();
    signal(&r, libc::SIGINT);
    let status = r.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "SIGINT took {:?}",
        t.elapsed()
    );
    assert!(leftover_programs().is_empty());
}

/// Without CAP_BPF/CAP_SYS_ADMIN — as nobody, or as root with every capability dropped — the
/// daemon says so in one line and exits 4 before touching the kernel.
#[test]
fn missing_privileges_are_named() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    for prefix in [
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ][..],
        &["setpriv", "--inh-caps=-all", "--bounding-set=-all"][..],
    ] {
        let out = Command::new(prefix[0])
            .args(&prefix[1..])
            .arg(BIN)
            .output()
            .expect("setpriv");
        assert_eq!(out.status.code(), Some(4), "{prefix:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("run as root"), "{err}");
    }
    assert!(leftover_programs().is_empty());
}
