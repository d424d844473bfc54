//! The parent's side of a holder: the child process, its command pipe, and many of them.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{HoldOpts, PER_PROCESS};

static NEXT_PORT: AtomicU16 = AtomicU16::new(20000);

/// A running holder process; killed (stdin closed, then SIGKILL) on drop.
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    pub command: String,
    /// Connections it holds.
    pub connections: usize,
}

impl Holder {
    pub fn spawn(o: &HoldOpts) -> Result<Self> {
        let mut h = Self::start(o)?;
        h.ready()?;
        Ok(h)
    }

    /// Sends one command line (see `command`) without waiting for its answer.
    pub fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("holder stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the answer to a command sent with `send`.
    pub fn answered(&mut self) -> Result<()> {
        let mut line = String::new();
        self.stdout
            .as_mut()
            .context("holder stdout")?
            .read_line(&mut line)?;
        if !line.starts_with("ok ") {
            bail!("holder did not apply the command: {:?}", line.trim());
        }
        Ok(())
    }

    /// Waits for `ready` (every connection open).
    pub fn ready(&mut self) -> Result<()> {
        let mut line = String::new();
        self.stdout
            .as_mut()
            .context("holder stdout")?
            .read_line(&mut line)?;
        if !line.starts_with("ready ") {
            let _ = self.child.kill();
            bail!("holder failed to start: {}", self.command);
        }
        Ok(())
    }

    /// Starts the process; `ready` waits for its connections.
    pub fn start(o: &HoldOpts) -> Result<Self> {
        let exe = crate::sys::self_exe()?;
        let mut args: Vec<String> = vec![
            "hold".into(),
            "--connections".into(),
            o.connections.to_string(),
        ];
        // Port 0 (HoldOpts::default()): the next free one of the run's sequence.
        let port = if o.port != 0 {
            o.port
        } else {
            NEXT_PORT.fetch_add(1, Ordering::SeqCst)
        };
        args.extend(["--port".into(), port.to_string()]);
        if let Some(ns) = &o.netns {
            args.extend(["--netns".into(), ns.display().to_string()]);
        }
        if o.keepalive {
            args.push("--keepalive".into());
        }
        for (flag, v) in [("--idle", o.idle), ("--intvl", o.intvl), ("--cnt", o.cnt)] {
            if let Some(v) = v {
                args.extend([flag.into(), v.to_string()]);
            }
        }
        for (flag, v) in [("--rate", o.rate), ("--churn", o.churn)] {
            if v > 0 {
                args.extend([flag.into(), v.to_string()]);
            }
        }
        if o.rst {
            args.push("--rst".into());
        }
        if o.namespaces > 0 {
            args.extend(["--namespaces".into(), o.namespaces.to_string()]);
        }
        if let Some(a) = o.addr {
            args.extend(["--addr".into(), a.to_string()]);
        }
        if let Some(ns) = &o.listen_netns {
            args.extend(["--listen-netns".into(), ns.display().to_string()]);
        }
        if let Some(ms) = o.user_timeout {
            args.extend(["--user-timeout".into(), ms.to_string()]);
        }
        let command = format!("keepalive-bench {}", args.join(" "));
        let mut child = Command::new(exe)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = Some(BufReader::new(
            child.stdout.take().context("holder stdout")?,
        ));
        Ok(Holder {
            child,
            stdin,
            stdout,
            command,
            connections: o.connections,
        })
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.stdin.take());
        drop(self.stdout.take());
        crate::sys::reap(&mut self.child, Duration::from_secs(5));
    }
}

/// `connections` connections spread over as many holders as the descriptor limit needs.
pub fn spawn_many(base: &HoldOpts, connections: usize) -> Result<Vec<Holder>> {
    let mut out = Vec::new();
    let mut left = connections;
    while left > 0 {
        let n = left.min(PER_PROCESS);
        out.push(Holder::spawn(&HoldOpts {
            connections: n,
            ..base.clone()
        })?);
        left -= n;
    }
    Ok(out)
}

/// Holders started `parallel` at a time (each opens its connections while the others do),
/// in the order given; stops at the first that fails.
pub fn spawn_parallel(opts: &[HoldOpts], parallel: usize) -> Result<Vec<Holder>> {
    let mut out = Vec::new();
    for chunk in opts.chunks(parallel.max(1)) {
        let mut started = chunk
            .iter()
            .map(Holder::start)
            .collect::<Result<Vec<_>>>()?;
        for h in &mut started {
            h.ready()?;
        }
        out.extend(started);
    }
    Ok(out)
}
