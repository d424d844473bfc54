//! The daemon's privileges: the capabilities it keeps after attaching, in every thread, and
//! that the unit's capabilities are enough for an unprivileged user. Needs root (the daemon
//! loads eBPF programs) and setpriv (util-linux).
use std::{
    fs,
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};
mod service_support;

use service_support::*;

#[test]
fn capabilities_are_dropped_in_every_thread_after_attaching() {
    let _g = serial();
    let d = start(&[]);
    let tasks = caps_of(d.pid());
    assert!(tasks.len() > 1, "expected the runtime's threads: {tasks:?}");
    for (tid, eff, prm, bnd) in &tasks {
        assert_eq!(*eff, KEPT, "thread {tid}: CapEff {eff:#x}");
        assert_eq!(*prm, KEPT, "thread {tid}: CapPrm {prm:#x}");
        assert_eq!(*bnd, KEPT, "thread {tid}: CapBnd {bnd:#x}");
    }
    assert!(
        d.log().contains(
            "capabilities kept: CAP_DAC_READ_SEARCH CAP_NET_RAW CAP_SYS_PTRACE CAP_SYS_ADMIN"
        ),
        "{}",
        d.log()
    );
    // Still serving, and scraping (which reads a BPF map) still works without CAP_BPF.
    let (code, page) = http_get(d.port, "/metrics");
    assert_eq!(code, 200);
    // The value depends on what else the host is doing; that it is read at all is the point.
    let lost = page
        .lines()
        .find_map(|l| l.strip_prefix("keepalive_events_lost_total{stage=\"kernel\"} "));
    assert!(lost.is_some_and(|v| v.parse::<u64>().is_ok()), "{page}");
    d.stop();
}

/// The unit's capability set is enough: run as `nobody` with exactly AmbientCapabilities=, as
/// systemd would (DynamicUser= gives a uid of its own the same way). After the drop the daemon
/// still names the owner of a socket a root process opens later (CAP_SYS_PTRACE and
/// CAP_DAC_READ_SEARCH kept).
#[test]
fn the_units_capabilities_suffice_for_an_unprivileged_user() {
    let _g = serial();
    let ambient: Vec<String> = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("unit has AmbientCapabilities=")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding: Vec<String> = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("unit has CapabilityBoundingSet=")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert_eq!(
        ambient, bounding,
        "AmbientCapabilities= and CapabilityBoundingSet= differ"
    );
    let caps = ambient.join(",");
    // ProtectProc=invisible: a /proc where only ptrace-able processes show; and, as
    // ProtectKernelTunables= does, no /proc/kallsyms (the timer address is calibrated).
    let wrap = [
        "unshare",
        "--mount",
        "--propagation=private",
        "sh",
        "-c",
        "mount -t proc -o hidepid=invisible proc /proc && mount --bind /dev/null /proc/kallsyms && exec \"$0\" \"$@\"",
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps=-all,{caps}"),
        &format!("--ambient-caps=-all,{caps}"),
        &format!("--bounding-set=-all,{caps}"),
        "--no-new-privs",
    ];
    let d = start_full(&["--log.level=debug"], &wrap, &[])
        .unwrap_or_else(|e| panic!("with the unit's capabilities as nobody: {e}"));
    let status = fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "{status}"
    );
    for (tid, eff, prm, _) in caps_of(d.pid()) {
        assert_eq!(eff, KEPT, "thread {tid}: CapEff {eff:#x}");
        assert_eq!(prm, KEPT, "thread {tid}: CapPrm {prm:#x}");
    }
    // A keepalive socket of this (root) process, opened after the drop.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let on: libc::c_int = 1;
    // SAFETY: valid fd and option value.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&client),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of_val(&on) as u32,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        let (_, body) = http_get(d.port, &format!("/sockets?port={port}"));
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        if list.iter().any(|s| {
            s["pid"].as_u64() == Some(u64::from(std::process::id())) && s["keepalive"] == true
        }) {
            break;
        }
        last = body;
        thread::sleep(Duration::from_millis(250));
    }
    let (_, body) = http_get(d.port, &format!("/sockets?port={port}"));
    assert!(
        body.contains(&format!("\"pid\":{}", std::process::id())),
        "owner not named as nobody after the drop: {body} (earlier: {last})\n{}",
        d.log()
    );
    drop(client);
    d.stop();
}
