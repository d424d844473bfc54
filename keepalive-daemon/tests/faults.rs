//! Never leak under churn: the soak, a million short keepalive connections in a namespace the
//! test creates. `cargo xtask test --soak` runs it by this file's name (`--test faults churn`);
//! the other fault tests are in faults_overload.rs, faults_readers.rs and faults_lifecycle.rs.
mod common;
mod faults_support;
mod netns;

use std::{
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use common::*;
use faults_support::*;
use netns::Netns;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Churn soak (`cargo xtask test --soak`, about 11 minutes): a million short keepalive
/// connections in a namespace. The inventory must end at the live socket count, the daemon's
/// memory must stop growing (no per-connection leak), and nothing may be lost.
#[test]
#[ignore = "soak: run with cargo xtask test --soak"]
fn churn_soak_million_connections() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let total: usize = std::env::var("KAT_SOAK_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let min_secs: u64 = std::env::var("KAT_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let r = start(&[]).expect("daemon");
    let pid = r.child.id();
    let ns = Netns::new("soak");
    let sockets_in_ns = |port: u16| {
        let list: serde_json::Value =
            serde_json::from_str(&body(port, &format!("/sockets?netns={}", ns.inode)))
                .unwrap_or_default();
        list.as_array().map_or(0, Vec::len)
    };
    // One listener that stays: the live socket count the inventory must return to.
    let (listener, addr) = ns.within(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    });
    let start_t = Instant::now();
    let per_batch = 1000;
    let batches = total / per_batch;
    let pace = Duration::from_secs(min_secs) / batches as u32;
    let mut samples = Vec::new();
    for b in 0..batches {
        let t = Instant::now();
        let l = listener.try_clone().unwrap();
        ns.within(move || {
            for _ in 0..per_batch {
                let c = TcpStream::connect(addr).unwrap();
                netns::set_keepalive(&c, 1, 1, 3);
                let s = l.accept().unwrap().0;
                drop((c, s));
            }
        });
        if b % (batches / 20).max(1) == 0 {
            samples.push((
                start_t.elapsed().as_secs(),
                rss_kib(pid),
                sockets_in_ns(r.port),
            ));
        }
        if let Some(rest) = pace.checked_sub(t.elapsed()) {
            thread::sleep(rest);
        }
    }
    // TIME_WAIT and closing sockets drain; the inventory must follow them out.
    wait_for(
        "inventory back to the listener alone",
        Duration::from_secs(90),
        || sockets_in_ns(r.port) == 1,
    );
    let page = body(r.port, "/metrics");
    let half = samples[samples.len() / 2].1;
    let last = rss_kib(pid);
    let peak = samples.iter().map(|s| s.1).chain([last]).max().unwrap_or(0);
    eprintln!(
        "soak: {total} connections in {:?}; samples (s, RSS KiB, sockets in ns): {samples:?}; final RSS {last} KiB, peak {peak} KiB",
        start_t.elapsed()
    );
    // A burst the ring cannot hold is allowed to cost events (counted); it must not cost the
    // truth: the re-walk brings the inventory back (checked above).
    let lost = metric(&page, "keepalive_events_lost_total{stage=\"kernel\"}").expect("lost metric");
    let nested =
        metric(&page, "keepalive_events_lost_total{stage=\"nested\"}").expect("lost metric");
    let removed = metric(
        &page,
        "keepalive_inventory_resync_corrections_total{change=\"removed\"}",
    )
    .expect("resync metric");
    eprintln!(
        "soak: {lost} events lost in the kernel (ring full), {nested} hook runs skipped and not made up for, {removed} stale sockets removed by the re-walk"
    );
    for stage in ["decode", "icmp"] {
        assert_eq!(
            metric(
                &page,
                &format!("keepalive_events_lost_total{{stage=\"{stage}\"}}")
            ),
            Some(0.0),
            "{stage} losses"
        );
    }
    assert!(
        last <= half + half / 5,
        "RSS grew from {half} KiB mid-run to {last} KiB at the end: a leak"
    );
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB");
    stop(r);
}
