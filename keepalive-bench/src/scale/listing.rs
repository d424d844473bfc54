//! Listing a million sockets three ways: the daemon's `/sockets` read as a stream (never held
//! here: counted, and the rows of the bench's namespaces told apart as they pass), the daemon's
//! `sockets` command, and `ss -tieo` in each namespace.
use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::sys;

/// One streamed response.
pub struct Streamed {
    pub status: u16,
    pub first_byte: Duration,
    pub total: Duration,
    pub bytes: u64,
    /// Rows (JSON objects of the top-level array, or NDJSON lines).
    pub rows: u64,
    /// Rows whose `netns` is one of the bench's.
    pub ours: u64,
    /// Daemon RSS peak while serving, above its RSS before the request.
    pub peak_rss_growth: u64,
}

/// GET `path`, counting as it streams, while a thread samples the daemon's RSS every 10 ms.
pub fn stream(port: u16, path: &str, pid: u32, netns: &HashSet<u32>) -> Result<Streamed> {
    let rss0 = sys::rss_bytes(pid).unwrap_or(0);
    // VmHWM reset to the current RSS (clear_refs 5), so that the peak below is this request's.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(sys::rss_bytes(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let mut scan = Scanner::new(netns);
    let (mut first_byte, mut bytes) = (None, 0u64);
    loop {
        let n = s.read(&mut buf).context("reading the response")?;
        if n == 0 {
            break;
        }
        first_byte.get_or_insert_with(|| t.elapsed());
        let mut chunk = &buf[..n];
        if scan.head_done.is_none() {
            head.extend_from_slice(chunk);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            scan.head_done = Some(());
            let body = head.split_off(end + 4);
            bytes += body.len() as u64;
            scan.feed(&body);
            chunk = &[];
        }
        bytes += chunk.len() as u64;
        scan.feed(chunk);
    }
    let total = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let hwm = hwm(pid).unwrap_or(0);
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(Streamed {
        status,
        first_byte: first_byte.unwrap_or(total),
        total,
        bytes,
        rows: scan.rows,
        ours: scan.ours,
        peak_rss_growth: peak.load(Ordering::Relaxed).max(hwm).saturating_sub(rss0),
    })
}

fn hwm(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A byte-level JSON walker: rows are the objects one level below the top (an array) or at the
/// top (NDJSON); `netns` is read from each row's own keys.
struct Scanner<'a> {
    head_done: Option<()>,
    netns: &'a HashSet<u32>,
    row_depth: Option<u32>,
    depth: u32,
    in_str: bool,
    esc: bool,
    key: Vec<u8>,
    last_key: Vec<u8>,
    num: Option<u64>,
    rows: u64,
    ours: u64,
}

impl<'a> Scanner<'a> {
    fn new(netns: &'a HashSet<u32>) -> Self {
        Scanner {
            head_done: None,
            netns,
            row_depth: None,
            depth: 0,
            in_str: false,
            esc: false,
            key: Vec::new(),
            last_key: Vec::new(),
            num: None,
            rows: 0,
            ours: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.in_str {
                if self.esc {
                    self.esc = false;
                } else if b == b'\\' {
                    self.esc = true;
                } else if b == b'"' {
                    self.in_str = false;
                    self.last_key = std::mem::take(&mut self.key);
                } else if self.key.len() < 16 {
                    self.key.push(b);
                }
                continue;
            }
            if let Some(n) = self.num {
                if b.is_ascii_digit() {
                    self.num = Some(n * 10 + u64::from(b - b'0'));
                    continue;
                }
                if u32::try_from(n).is_ok_and(|n| self.netns.contains(&n)) {
                    self.ours += 1;
                }
                self.num = None;
            }
            let row = *self.row_depth.get_or_insert(if b == b'[' { 2 } else { 1 });
            match b {
                b'"' => {
                    self.in_str = true;
                    self.key.clear();
                }
                b'{' | b'[' => {
                    self.depth += 1;
                    if b == b'{' && self.depth == row {
                        self.rows += 1;
                    }
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                b'0'..=b'9' if self.depth == row && self.last_key == b"netns" => {
                    self.num = Some(u64::from(b - b'0'));
                    self.last_key.clear();
                }
                b',' => self.last_key.clear(),
                _ => {}
            }
        }
    }
}

/// One command's wall time, CPU (its rusage as a waited-for child) and output size and lines.
pub struct Ran {
    pub wall: Duration,
    pub cpu_s: f64,
    pub bytes: u64,
    pub lines: u64,
    pub ok: bool,
    pub stderr: String,
}

fn children_cpu() -> f64 {
    // SAFETY: getrusage with a valid out-pointer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `cmd` to completion; output counted, not kept. `lines` counts lines that do not start
/// with white space (ss prints a socket's details on an indented line of its own).
pub fn run_counted(cmd: &mut Command) -> Result<Ran> {
    let cpu0 = children_cpu();
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (mut bytes, mut lines, mut at_start) = (0u64, 0u64, true);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        for &b in &buf[..n] {
            if at_start && !b.is_ascii_whitespace() {
                lines += 1;
            }
            at_start = b == b'\n';
        }
    }
    let status = child.wait()?;
    Ok(Ran {
        wall: t.elapsed(),
        cpu_s: children_cpu() - cpu0,
        bytes,
        lines,
        ok: status.success(),
        stderr: err_thread.join().unwrap_or_default(),
    })
}

/// `ss -tieo` in each namespace, summed (the header line of each is not a socket).
pub fn ss(namespaces: &[&str]) -> Result<Ran> {
    let mut sum = Ran {
        wall: Duration::ZERO,
        cpu_s: 0.0,
        bytes: 0,
        lines: 0,
        ok: true,
        stderr: String::new(),
    };
    for ns in namespaces {
        let r = run_counted(Command::new("ip").args(["netns", "exec", ns, "ss", "-tieo"]))?;
        if !r.ok {
            bail!("ss -tieo in {ns}: {}", r.stderr.trim());
        }
        sum.wall += r.wall;
        sum.cpu_s += r.cpu_s;
        sum.bytes += r.bytes;
        sum.lines += r.lines.saturating_sub(1);
    }
    Ok(sum)
}

/// The daemon's own client: `keepalive-daemon sockets ARGS` against the daemon on `port`.
pub fn cli(bin: &Path, port: u16, args: &[&str]) -> Result<Ran> {
    run_counted(
        Command::new(bin)
            .arg("sockets")
            .args(["--web.listen-address", &format!("127.0.0.1:{port}")])
            .args(args),
    )
}
