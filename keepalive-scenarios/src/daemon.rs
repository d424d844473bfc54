//! The daemon under test as a child process: start, readiness, its JSON stream, /metrics, stop.

use crate::event::{Event, Metrics};
use crate::{cleanup, http};
use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One stdout line, kept even when it does not parse: a malformed line is itself a finding.
#[derive(Clone, Debug)]
pub struct Received {
    pub line: String,
    pub event: Result<Event, String>,
}

pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    stderr_path: PathBuf,
    received: Arc<Mutex<Vec<Received>>>,
    reader: Option<JoinHandle<()>>,
}

fn free_port() -> Result<u16> {
    // Bind-and-release: a small race with other programs, acceptable on a test host.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Daemon {
    /// `tag` names the captured output files (`$TMPDIR/kat<pid>-<tag>.stderr|stdout`), so a
    /// second daemon started by a scenario does not overwrite the shared one's.
    pub fn start(path: &Path, hook_mode: &str, extra: &[String], tag: &str) -> Result<Daemon> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let stderr_path =
            std::env::temp_dir().join(format!("kat{}-{tag}.stderr", std::process::id()));
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("create {}", stderr_path.display()))?;
        let mut child = Command::new(path)
            .args([
                "--json",
                "--hook-mode",
                hook_mode,
                "--web.listen-address",
                &addr.to_string(),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start daemon {}", path.display()))?;
        if let Ok(pid) = i32::try_from(child.id()) {
            cleanup::register_pid(pid);
        }
        let stdout = child.stdout.take().context("daemon stdout")?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        // A raw copy of the stream, for reading what the daemon really said after a failure.
        let stdout_path = stderr_path.with_extension("stdout");
        let mut copy = std::fs::File::create(&stdout_path)
            .with_context(|| format!("create {}", stdout_path.display()))?;
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(copy, "{line}");
                let event = serde_json::from_str::<Event>(&line).map_err(|e| e.to_string());
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Received { line, event });
            }
        });
        let mut d = Daemon {
            child,
            addr,
            stderr_path,
            received,
            reader: Some(reader),
        };
        d.wait_ready(Duration::from_secs(60))?;
        Ok(d)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "daemon exited before becoming ready ({status}); stderr tail:\n{}",
                    self.stderr_tail(30)
                );
            }
            match http::get(self.addr, "/healthz") {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("HTTP {code}: {}", body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "daemon not ready after {limit:?} (/healthz: {last}); stderr tail:\n{}",
            self.stderr_tail(30)
        )
    }

    pub fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    pub fn received_len(&self) -> usize {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn received(&self, range: std::ops::Range<usize>) -> Vec<Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())[range].to_vec()
    }

    pub fn metrics(&self) -> Result<Metrics> {
        let (code, body) = http::get(self.addr, "/metrics")?;
        if code != 200 {
            bail!("/metrics answered HTTP {code}");
        }
        Metrics::from_samples(&http::parse_prometheus(&body)).map_err(|e| anyhow!("/metrics: {e}"))
    }

    /// The rung each logical hook runs on (`keepalive_hook_mode`) as `hooks: hook=rung …`, then
    /// one `refused: hook=H rung=R reason="…"` line per rung the kernel refused
    /// (`keepalive_hook_rung_refused`): the VM harness puts both in the matrix.
    pub fn rung_lines(&self) -> Result<Vec<String>> {
        let (code, body) = http::get(self.addr, "/metrics")?;
        if code != 200 {
            bail!("/metrics answered HTTP {code}");
        }
        let samples = http::parse_prometheus(&body);
        let label = |s: &http::Sample, k: &str| {
            s.labels
                .iter()
                .find(|(n, _)| n == k)
                .map_or(String::new(), |(_, v)| v.clone())
        };
        let on = |name: &'static str| {
            samples
                .iter()
                .filter(move |s| s.name == name && s.value == 1.0)
        };
        let hooks: Vec<String> = on("keepalive_hook_mode")
            .map(|s| format!("{}={}", label(s, "hook"), label(s, "mode")))
            .collect();
        let mut lines = vec![format!("hooks: {}", hooks.join(" "))];
        for s in on("keepalive_hook_rung_refused") {
            // Quotes would end the reason early for the harness's parser.
            let reason = label(s, "reason").replace('"', "'");
            lines.push(format!(
                "refused: hook={} rung={} reason=\"{reason}\"",
                label(s, "hook"),
                label(s, "rung")
            ));
        }
        Ok(lines)
    }

    /// Metrics and JSON line count taken at a moment when neither is changing. Reading them
    /// one after the other while an event is being published could count it on one side only;
    /// requiring two identical reads 150 ms apart rules that out. Returns `settled = false` if
    /// the daemon never went quiet for 3 s (busy host), which the caller reports.
    pub fn snapshot(&self) -> Result<(Metrics, usize, bool)> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let (m1, n1) = (self.metrics()?, self.received_len());
            std::thread::sleep(Duration::from_millis(150));
            let (m2, n2) = (self.metrics()?, self.received_len());
            if m1 == m2 && n1 == n2 {
                return Ok((m2, n2, true));
            }
            if Instant::now() >= deadline {
                return Ok((m2, n2, false));
            }
        }
    }

    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }
}

fn secs_left(deadline: Instant) -> f64 {
    deadline
        .saturating_duration_since(Instant::now())
        .as_secs_f64()
}

impl Drop for Daemon {
    /// SIGTERM, then SIGKILL after 5 s: a daemon that ignores SIGTERM must not hang the suite.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: kill(2) on our own child, which has not been reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            match self.child.try_wait().ok().flatten() {
                Some(status) => eprintln!(
                    "daemon stopped {:.2}s after SIGTERM ({status})",
                    5.0 - secs_left(deadline)
                ),
                None => {
                    eprintln!("daemon ignored SIGTERM for 5 s; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                }
            }
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            cleanup::unregister_pid(pid);
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
