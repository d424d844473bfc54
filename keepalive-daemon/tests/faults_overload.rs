//! Never lie, never lose under overload: a ring buffer far too small for a keepalive storm,
//! with the daemon frozen, on the real kernel. Every event that does not fit is counted, and
//! the count is checked against the kernel's own counter, read with bpftool.
mod common;
mod faults_support;
mod netns;

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use common::*;
use faults_support::*;
use netns::{Netns, Storm};

/// Sum over CPUs of the daemon's kernel-side `LOST` counter, read with bpftool, independent
/// of the daemon's own accounting. Other daemons on the host have their own `LOST` maps: the
/// one meant is among the maps the daemon process holds.
fn kernel_lost(pid: u32) -> u64 {
    let held: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("map_id:")?.trim().parse().ok())
        })
        .collect();
    let bpftool_json = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .expect("bpftool");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let id = held
        .iter()
        .find(|id| bpftool_json(&["map", "show", "id", &id.to_string()])["name"] == "LOST")
        .expect("the daemon's LOST map");
    // `dump id` lists the map's elements (with one map, `dump name` would too, but with
    // several it wraps each map: asking by id keeps one shape).
    let elements = bpftool_json(&["map", "dump", "id", &id.to_string()]);
    let le_bytes = |v: &serde_json::Value| {
        v.as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .fold(0u64, |acc, (i, b)| {
                acc | u64::from_str_radix(b.as_str().unwrap_or("0x0").trim_start_matches("0x"), 16)
                    .unwrap_or(0)
                    << (8 * i)
            })
    };
    elements[0]["values"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| le_bytes(&c["value"]))
        .sum()
}

/// A ring buffer far too small for a storm, with the daemon frozen: every event that does not
/// fit is counted, the daemon's count matches the kernel's, no death is invented, and once the
/// storm's sockets close nothing stays "probing".
#[test]
fn overload_is_counted_and_state_recovers() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let mut r =
        start_with(&["--json", "--ring-buffer-bytes", "4096"], Stdio::piped()).expect("daemon");
    let lines = collect_stdout(&mut r);
    let ns = Netns::new("ovl");
    let storm = Storm::open(&ns, 800, 1);
    thread::sleep(Duration::from_millis(1500));
    signal(&r, libc::SIGSTOP);
    thread::sleep(Duration::from_secs(3));
    signal(&r, libc::SIGCONT);
    thread::sleep(Duration::from_secs(1));

    let pid = r.child.id();
    let before = kernel_lost(pid);
    let page = body(r.port, "/metrics");
    let after = kernel_lost(pid);
    let lost =
        metric(&page, "keepalive_events_lost_total{stage=\"kernel\"}").expect("lost metric") as u64;
    assert!(
        lost > 0,
        "a frozen daemon with a 4 KiB ring lost nothing? storm too small"
    );
    assert!(
        before <= lost && lost <= after,
        "daemon says {lost} lost, kernel {before}..{after}"
    );

    drop(storm);
    // Two probe intervals and five seconds, plus margin: the sweep's bound for lost endings.
    wait_for("no socket left probing", Duration::from_secs(12), || {
        metric(&body(r.port, "/metrics"), "keepalive_probing_sockets") == Some(0.0)
    });
    assert!(
        events_in(&lines, ns.inode, "dead").is_empty(),
        "phantom deaths: {:?}",
        events_in(&lines, ns.inode, "dead")
    );
    assert!(!events_in(&lines, ns.inode, "probe").is_empty());
    stop(r);
}
