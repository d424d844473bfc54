//! The daemon under test, and a minimal HTTP client for its endpoints.
//!
//! The client speaks HTTP/1.0 on purpose: the response then ends when the server closes the
//! connection, so neither Content-Length nor chunked decoding is needed, and `/events` arrives
//! as bare NDJSON lines.
use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::sys;

pub struct Daemon {
    child: Child,
    pub port: u16,
    pub command: String,
}

impl Daemon {
    /// Starts `bin` with `extra` flags and waits until /healthz answers (every hook attached).
    pub fn start(bin: &Path, extra: &[&str], log: &Path) -> Result<Self> {
        let port = sys::free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["--web.listen-address", listen.as_str()];
        // Warnings only, unless the caller asks for a level (the scale section reads the
        // start-up inventory's info line).
        if !extra.contains(&"--log.level") {
            args.extend(["--log.level", "warn"]);
        }
        args.extend_from_slice(extra);
        let command = format!("keepalive-daemon {}", args.join(" "));
        let child = sys::die_with_parent(&mut Command::new(bin))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).with_context(|| log.display().to_string())?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut d = Daemon {
            child,
            port,
            command,
        };
        // Generous: at a million sockets the start-up walk alone takes seconds on a busy host.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                bail!(
                    "daemon exited during startup ({status}); see {}",
                    log.display()
                );
            }
            if get(port, "/healthz").is_ok_and(|(_, body)| body.starts_with("ok")) {
                break;
            }
            if Instant::now() > deadline {
                bail!("daemon not healthy after 180 s; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_ns(&self) -> u64 {
        sys::cpu_ns(self.pid()).unwrap_or(0)
    }

    pub fn rss(&self) -> u64 {
        sys::rss_bytes(self.pid()).unwrap_or(0)
    }

    pub fn metrics(&self) -> Result<Metrics> {
        let (_, body) = get(self.port, "/metrics")?;
        Ok(Metrics::parse(&body))
    }

    /// Waits until the inventory holds at least `n` sockets (keepalive on + off), or stops
    /// growing for 3 s (events lost on the way never arrive), or `timeout` passes.
    pub fn wait_sockets(&self, n: f64, timeout: Duration) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        let (mut last, mut since) = (-1.0, Instant::now());
        loop {
            let m = self.metrics()?;
            let have = m.sockets();
            if have > last {
                (last, since) = (have, Instant::now());
            }
            if have >= n || Instant::now() > deadline || since.elapsed() > Duration::from_secs(3) {
                return Ok(have);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Daemon {
    /// Waits until the inventory holds at least `n` sockets or `timeout` passes, however long
    /// it stalls on the way (a re-walk, every 30 s, adds sockets whose events were lost).
    pub fn wait_count(&self, n: f64, timeout: Duration) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.metrics()?.sockets();
            if have >= n || Instant::now() > deadline {
                return Ok(have);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        sys::reap(&mut self.child, Duration::from_secs(10));
    }
}

/// Prometheus text: series (name with labels, as written) → value.
pub struct Metrics(HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut m = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((k, v)) = line.rsplit_once(' ')
                && let Ok(v) = v.parse()
            {
                m.insert(k.to_string(), v);
            }
        }
        Metrics(m)
    }

    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// Sum of every series of family `name` whose labels contain `label` (e.g.
    /// `cause="timeout"`; empty for all), whatever other labels the daemon adds.
    pub fn sum(&self, name: &str, label: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
                    && k.contains(label)
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Probe and answer events published (what the storm produces), every workload's series.
    pub fn events(&self) -> f64 {
        self.sum("keepalive_probes_total", "") + self.sum("keepalive_probes_answered_total", "")
    }

    /// Events lost at every stage.
    pub fn lost(&self) -> f64 {
        self.sum("keepalive_events_lost_total", "")
    }

    /// Sockets in the inventory, keepalive on and off, every workload's series.
    pub fn sockets(&self) -> f64 {
        self.sum("keepalive_sockets", "keepalive=")
    }
}

/// GET `path`: (time to the last byte, body).
pub fn get(port: u16, path: &str) -> Result<(Duration, String)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let elapsed = t.elapsed();
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP header end")
    };
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1).is_none_or(|c| c != "200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok((elapsed, body.to_string()))
}

/// An `/events` reader on its own thread: for each line, the delay from the kernel timestamp
/// (`ts`, CLOCK_REALTIME-converted by the daemon) to the moment the line was read here.
pub struct EventsReader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<i64>>>,
}

impl EventsReader {
    /// `quickack`: acknowledge every segment at once (TCP_QUICKACK before each read) instead of
    /// the kernel's delayed ACK, which is what decides how long a small write waits behind
    /// Nagle's algorithm on the daemon's side.
    pub fn start(port: u16, quickack: bool) -> Result<Self> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        write!(s, "GET /events HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(1 << 20, s);
            let mut lat = Vec::new();
            let mut line = String::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if quickack {
                    let one: i32 = 1;
                    // SAFETY: valid descriptor and a 4-byte option value.
                    unsafe {
                        libc::setsockopt(
                            std::os::fd::AsRawFd::as_raw_fd(r.get_ref()),
                            libc::IPPROTO_TCP,
                            libc::TCP_QUICKACK,
                            (&raw const one).cast(),
                            4,
                        )
                    };
                }
                match r.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) if line.ends_with('\n') => {
                        let now = sys::realtime_ns();
                        if let Some(ts) = ts_of(&line) {
                            lat.push((now - ts) as i64);
                        }
                        line.clear();
                    }
                    // A read timeout (which keeps the loop responsive to `stop`) leaves the
                    // partial line in `line`; the next read completes it.
                    _ => continue,
                }
            }
            lat
        });
        Ok(EventsReader {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops and returns the delays in nanoseconds.
    pub fn finish(mut self) -> Vec<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// The `ts` field of an event line (`2026-11-22T00:03:50.525773804Z`, the daemon's fixed
/// format), as nanoseconds since the epoch. Parsed by hand: at 100 k lines a second a general
/// RFC 3339 parser would make the reader, not the daemon, the bottleneck.
pub fn ts_of(line: &str) -> Option<i128> {
    let rest = line.split_once("\"ts\":\"")?.1.as_bytes();
    let n = |a: usize, b: usize| -> Option<i64> {
        std::str::from_utf8(rest.get(a..b)?).ok()?.parse().ok()
    };
    if rest.get(10) != Some(&b'T') || rest.get(19) != Some(&b'.') {
        return None;
    }
    let (y, m, d) = (n(0, 4)?, n(5, 7)?, n(8, 10)?);
    let secs = days_from_civil(y, m, d) * 86_400 + n(11, 13)? * 3600 + n(14, 16)? * 60 + n(17, 19)?;
    let end = rest[20..].iter().position(|c| !c.is_ascii_digit())? + 20;
    let frac = n(20, end)? * 10i64.pow(9 - (end - 20).min(9) as u32);
    Some(i128::from(secs) * 1_000_000_000 + i128::from(frac))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Where the bench writes daemon logs and scratch files.
pub fn scratch_dir() -> PathBuf {
    let d = PathBuf::from("target/bench");
    let _ = std::fs::create_dir_all(&d);
    d
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_daemons_timestamps() {
        let ns = super::ts_of("{\"ts\":\"2023-11-14T22:13:20.000000123Z\",\"event\":\"probe\"}")
            .unwrap();
        assert_eq!(ns, 1_700_000_000_000_000_123);
        assert_eq!(
            super::ts_of("{\"ts\":\"1970-01-01T00:00:01.5Z\"}"),
            Some(1_500_000_000)
        );
        assert_eq!(super::ts_of("{\"event\":\"probe\"}"), None);
    }
}
