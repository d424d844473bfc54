//! The real daemon binary on the real kernel: hook-ladder choices, refusals, and that a
//! failed or finished run leaves no program attached. Needs root (CAP_BPF); the tests say so
//! and fail when run without it, rather than passing vacuously.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_keepalive-daemon");

/// Daemons attach host-wide; the leftover checks must not see another test's daemon.
static SERIAL: Mutex<()> = Mutex::new(());

fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests load eBPF programs: run them as root");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Our programs loaded in the kernel that no process holds: what a crashed or careless
/// daemon leaves attached. Programs of other daemons running on the host (a developer's, a
/// test's) are held by their process and do not count. The kernel frees released programs
/// after an RCU grace period, so this waits up to 3 s for them to go.
fn leftover_programs() -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let held = held_program_ids();
        let left: Vec<u64> = loaded_programs().into_iter().filter(|id| !held.contains(id)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Ids of our programs (names start with `ka_`) loaded now.
fn loaded_programs() -> Vec<u64> {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().expect("bpftool");
    let progs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("ka_")))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Program ids referenced by any process's program or link descriptors.
fn held_program_ids() -> Vec<u64> {
    let mut ids = Vec::new();
    for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        for fd in std::fs::read_dir(proc.path().join("fdinfo")).into_iter().flatten().flatten() {
            if let Ok(text) = std::fs::read_to_string(fd.path()) {
                ids.extend(text.lines().filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok()));
            }
        }
    }
    ids
}

fn run_to_exit(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().expect("spawn daemon");
    assert!(leftover_programs().is_empty(), "programs left behind: {:?}", leftover_programs());
    out
}

fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").to_string()
}

struct Running {
    child: Child,
    port: u16,
}

fn start(args: &[&str]) -> Result<Running, Output> {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args(args)
        .args(["--web.listen-address", &listen])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn daemon");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            return Err(child.wait_with_output().expect("output"));
        }
        if get(port, "/healthz").is_some_and(|b| b.ends_with("ok\n")) {
            return Ok(Running { child, port });
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("daemon neither became healthy nor exited within 30 s");
}

fn stop(mut r: Running) -> Duration {
    let t = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGTERM) };
    let status = r.child.wait().expect("wait");
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(leftover_programs().is_empty(), "programs left after SIGTERM: {:?}", leftover_programs());
    t.elapsed()
}

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
                let want = format!("keepalive_hook_mode{{hook=\"keepalive_timer\",mode=\"{mode}\"}} 1");
                assert!(metrics.contains(&want), "{mode}: metrics lack {want}:\n{metrics}");
                for other in ["fentry", "kprobe", "tracepoint"].iter().filter(|m| **m != mode) {
                    let wrong = format!("hook=\"keepalive_timer\",mode=\"{other}\"");
                    assert!(!metrics.contains(&wrong), "{mode}: timer hook also in {other}");
                }
                stop(r);
            }
            Err(out) => {
                assert_eq!(out.status.code(), Some(5), "{mode}: {out:?}");
                let line = last_line(&out);
                assert!(line.contains(&format!("in {mode} mode")), "{mode}: unclear refusal: {line}");
                assert!(mode != "tracepoint", "tracepoint mode must work on every kernel: {line}");
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
        "keepalive_dead_connections_total{cause=\"timeout\"}",
        "keepalive_events_lost_total{stage=\"kernel\"}",
        "keepalive_build_info",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
    assert!(metrics.contains("keepalive_hook_mode{hook=\"keepalive_timer\""));
    let landing = get(r.port, "/").expect("landing");
    assert!(landing.contains("href=\"/metrics\"") && landing.contains("href=\"/events\""));
    assert!(!loaded_programs().is_empty(), "running daemon shows no programs in bpftool");
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
    let out = run_to_exit(&["--ring-buffer-bytes", "1000"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
