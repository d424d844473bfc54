//! Helpers shared by the integration tests: the real daemon binary, started on a free port,
//! scraped over plain HTTP, and checked for programs left in the kernel.
#![allow(dead_code)] // each test file uses its own subset

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_keepalive-daemon");

/// Daemons attach host-wide; the leftover checks must not see another test's daemon.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load eBPF programs: run them as root"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Our programs loaded in the kernel that no process holds: what a crashed or careless
/// daemon leaves attached. Programs of other daemons running on the host (a developer's, a
/// test's) are held by their process and do not count. The kernel frees released programs
/// after an RCU grace period, so this waits up to 3 s for them to go.
pub fn leftover_programs() -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let held = held_program_ids();
        let left: Vec<u64> = loaded_programs()
            .into_iter()
            .filter(|id| !held.contains(id))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Ids of our programs (names start with `ka_`) loaded now.
pub fn loaded_programs() -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool");
    let progs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("ka_")))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Program ids referenced by any process's program or link descriptors.
pub fn held_program_ids() -> Vec<u64> {
    let mut ids = Vec::new();
    for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        for fd in std::fs::read_dir(proc.path().join("fdinfo"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(text) = std::fs::read_to_string(fd.path()) {
                ids.extend(
                    text.lines()
                        .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok()),
                );
            }
        }
    }
    ids
}

pub fn run_to_exit(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().expect("spawn daemon");
    assert!(
        leftover_programs().is_empty(),
        "programs left behind: {:?}",
        leftover_programs()
    );
    out
}

pub fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

pub struct Running {
    pub child: Child,
    pub port: u16,
    /// The daemon's stderr.
    pub log: std::path::PathBuf,
}

/// A failed assertion must not leave a daemon attached for the next test to trip over.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(args: &[&str]) -> Result<Running, Output> {
    start_with(args, Stdio::null())
}

/// Starts the daemon with `stdout` (e.g. piped, for `--json`) and waits for /healthz.
pub fn start_with(args: &[&str], stdout: Stdio) -> Result<Running, Output> {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // A file, not a pipe: nobody drains a pipe while the test runs, and a full one would
    // block the daemon's logging.
    let log = std::env::temp_dir().join(format!("kat-daemon-{}-{port}.log", std::process::id()));
    let mut child = Command::new(BIN)
        .args(args)
        .args(["--web.listen-address", &listen])
        .stdout(stdout)
        .stderr(Stdio::from(
            std::fs::File::create(&log).expect("daemon log file"),
        ))
        .spawn()
        .expect("spawn daemon");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            let stderr = std::fs::read(&log).unwrap_or_default();
            return Err(Output {
                status,
                stdout: Vec::new(),
                stderr,
            });
        }
        if get(port, "/healthz").is_some_and(|b| b.ends_with("ok\n")) {
            return Ok(Running { child, port, log });
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "daemon neither became healthy nor exited within 30 s: {}",
        String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default())
    );
}

pub fn stop(r: Running) -> Duration {
    let mut r = r;
    let t = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGTERM) };
    let status = r.child.wait().expect("wait");
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(
        leftover_programs().is_empty(),
        "programs left after SIGTERM: {:?}",
        leftover_programs()
    );
    t.elapsed()
}

/// Value of the first sample line starting with `series` (name plus labels, exactly as
/// exposed) in a Prometheus text page.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Body of a GET (after the headers).
pub fn body(port: u16, path: &str) -> String {
    dechunk(&get(port, path).unwrap_or_default())
}

// One de-chunker for both test support modules (no test crate includes both).
#[path = "../service_support/http.rs"]
mod http;
pub use http::dechunk;

pub fn signal(r: &Running, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(r.child.id() as i32, sig) };
}
