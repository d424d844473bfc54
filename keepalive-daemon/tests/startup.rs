//! The real daemon binary on the real kernel: hook-ladder choices, refusals, and that a
//! failed or finished run leaves no program attached. Needs root (CAP_BPF); the tests say so
//! and fail when run without it, rather than passing vacuously.
mod common;

use std::{net::TcpListener, time::Duration};

use common::*;

/// Each forced mode either runs with every ladder hook on that family (or on tracepoints
/// where the kernel lacks the function, which the metrics then show), or is refused with exit 5
/// and one line naming the mode — never a silent downgrade.
#[test]
fn forced_modes_run_or_are_refused_clearly() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    for mode in ["fentry", "kprobe", "tracepoint"] {
        match start(&["--hook-mode", mode]) {
            Ok(r) => {
                let metrics = get(r.port, "/metrics").expect("metrics");
                let want =
                    format!("keepalive_hook_mode{{hook=\"keepalive_timer\",mode=\"{mode}\"}} 1");
                assert!(
                    metrics.contains(&want),
                    "{mode}: metrics lack {want}:\n{metrics}"
                );
                for other in ["fentry", "kprobe", "tracepoint"]
                    .iter()
                    .filter(|m| **m != mode)
                {
                    let wrong = format!("hook=\"keepalive_timer\",mode=\"{other}\"");
                    assert!(
                        !metrics.contains(&wrong),
                        "{mode}: timer hook also in {other}"
                    );
                }
                stop(r);
            }
            Err(out) => {
                assert_eq!(out.status.code(), Some(5), "{mode}: {out:?}");
                let line = last_line(&out);
                assert!(
                    line.contains(&format!("in {mode} mode")),
                    "{mode}: unclear refusal: {line}"
                );
                assert!(
                    mode != "tracepoint",
                    "tracepoint mode must work on every kernel: {line}"
                );
                assert!(leftover_programs().is_empty());
            }
        }
    }
}

#[test]
fn auto_mode_attaches_serves_and_detaches_on_sigterm() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let r = start(&[]).unwrap_or_else(|out| panic!("auto mode failed: {}", last_line(&out)));
    let metrics = get(r.port, "/metrics").expect("metrics");
    for name in [
        "keepalive_probes_total",
        "keepalive_probes_answered_total",
        "keepalive_dead_connections_total{cause=\"timeout\",",
        "keepalive_events_lost_total{stage=\"kernel\"}",
        "keepalive_build_info",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
    assert!(metrics.contains("keepalive_hook_mode{hook=\"keepalive_timer\""));
    let landing = get(r.port, "/").expect("landing");
    assert!(landing.contains("href=\"/metrics\"") && landing.contains("href=\"/events\""));
    assert!(
        !loaded_programs().is_empty(),
        "running daemon shows no programs in bpftool"
    );
    let took = stop(r);
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
}

#[test]
fn bad_inputs_fail_with_one_line_and_leave_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();

    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = run_to_exit(&["--web.listen-address", &addr]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(last_line(&out).contains(&addr), "{}", last_line(&out));

    let garbage = std::env::temp_dir().join(format!("kat-garbage-btf-{}", std::process::id()));
    std::fs::write(&garbage, b"this is not BTF").unwrap();
    let out = run_to_exit(&["--btf.path", garbage.to_str().unwrap()]);
    let _ = std::fs::remove_file(&garbage);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(last_line(&out).contains("BTF"), "{}", last_line(&out));

    let out = run_to_exit(&["--btf.path", "/nonexistent/vmlinux"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(last_line(&out).contains("/nonexistent/vmlinux"));

    let out = run_to_exit(&["--hook-mode", "sideways"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    for bad in ["1000", "Auto", "64MiB"] {
        let out = run_to_exit(&["--ring-buffer-bytes", bad]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        // The error is the first line (clap adds a usage hint after it).
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().next().unwrap_or("");
        assert!(
            line.contains("--ring-buffer-bytes")
                && (line.contains("`auto` or a power of two")
                    || line.contains("not a number or `auto`")),
            "{err}"
        );
    }
}

/// `--ring-buffer-bytes auto` is the default and sizes the ring from the host's TCP sockets
/// (a power of two, 1–64 MiB), an explicit size wins, the config file takes `"auto"` too, and
/// the PROBING map is sized at load with its floor. The sizes are in the log and the ring's in
/// `keepalive_ring_buffer_bytes`.
#[test]
fn ring_buffer_is_sized_automatically_or_as_told() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let r = start(&[]).unwrap_or_else(|out| panic!("default start: {}", last_line(&out)));
    let page = get(r.port, "/metrics").expect("metrics");
    let log = std::fs::read_to_string(&r.log).unwrap_or_default();
    stop(r);
    let bytes = metric(&page, "keepalive_ring_buffer_bytes").expect("ring gauge") as u64;
    assert!(
        bytes.is_power_of_two() && (1 << 20..=64 << 20).contains(&bytes),
        "{bytes}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("TCP sockets at start"))
        .unwrap_or_else(|| panic!("no sizing line in:\n{log}"));
    assert!(
        line.contains(&format!("ring buffer {bytes} bytes (auto")),
        "{line}"
    );
    let room: u64 = line
        .split("room for ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(room >= 65_536, "{line}");

    let r = start(&["--ring-buffer-bytes", "4194304"]).expect("explicit size");
    let page = get(r.port, "/metrics").expect("metrics");
    stop(r);
    assert_eq!(
        metric(&page, "keepalive_ring_buffer_bytes"),
        Some(4194304.0)
    );

    let dir = std::env::temp_dir().join(format!("kat-ring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("auto.toml");
    std::fs::write(&good, "ring-buffer-bytes = \"auto\"\n").unwrap();
    let r = start(&["--config.file", good.to_str().unwrap()]).expect("config auto");
    let page = get(r.port, "/metrics").expect("metrics");
    stop(r);
    assert_eq!(
        metric(&page, "keepalive_ring_buffer_bytes").map(|b| b as u64),
        Some(bytes)
    );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "ring-buffer-bytes = \"8MiB\"\n").unwrap();
    let out = run_to_exit(&["--config.file", bad.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("ring-buffer-bytes: not a number or `auto`"),
        "{err}"
    );
}
