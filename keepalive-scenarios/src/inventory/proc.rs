//! Third-party programs (python3, socat, curl, redis-server) run inside a test namespace, with
//! their output captured and their lifetime bound to the runner's.

use crate::cleanup;
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Finds an installed program. The distribution's directories come before PATH: the suite tests
/// the programs as Debian ships them, not a pyenv shim or a /usr/local build that happens to be
/// earlier on a developer's PATH. In the VM everything lives in /bin (PATH=/bin).
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .into_iter()
        .chain(path.split(':'));
    dirs.filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The name the kernel gives a process exec'd from `path`: the file name as passed to execve
/// (a symlink is not resolved: /usr/bin/python3 → python3.11 runs as "python3"), cut to
/// TASK_COMM_LEN - 1 bytes.
pub fn comm_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.as_bytes()[..name.len().min(15)]
        .iter()
        .map(|&b| b as char)
        .collect()
}

/// The cgroup v2 id of a process: the inode of its directory in the cgroup2 hierarchy, which is
/// what the kernel stores in a socket when the process creates it. None without cgroup2.
pub fn cgroup_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // "36 25 0:30 / /sys/fs/cgroup rw,… - cgroup2 cgroup2 rw": mount point is field 5.
    let root = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(str::to_owned))?
    })?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(std::fs::metadata(format!("{root}{path}")).ok()?.ino())
}

pub struct Proc {
    child: Child,
    pub pid: u32,
    pub comm: String,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    line: String,
}

impl Proc {
    /// Starts `program args…` in network namespace `ns`. The child enters the namespace itself
    /// between fork and exec, so its pid and comm are the program's own (no `ip netns exec`
    /// or shell in between), which is what the daemon must report. stdin stays open (a pipe)
    /// until `close_stdin`, for programs that run until their input ends.
    pub fn spawn(ns: &str, program: &Path, args: &[String]) -> Result<Proc> {
        Self::spawn_in(ns, None, program, args)
    }

    /// As `spawn`, and the child also joins cgroup `cgroup` (a directory of the cgroup2
    /// hierarchy) before exec, so the sockets it creates carry that cgroup.
    pub fn spawn_in(
        ns: &str,
        cgroup: Option<&Path>,
        program: &Path,
        args: &[String],
    ) -> Result<Proc> {
        let path = format!("/run/netns/{ns}");
        let nsfd = File::open(&path).with_context(|| format!("open {path}"))?;
        let fd = nsfd.as_raw_fd();
        let procs = cgroup
            .map(|c| {
                let p = c.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .with_context(|| format!("open {}", p.display()))
            })
            .transpose()?;
        let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
        let line = format!("{} {}", program.display(), args.join(" "));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe system calls between fork and exec. PDEATHSIG: the
        // program dies with the runner even on SIGKILL, when no cleanup code runs. It is tied
        // to the forking thread, and the runner spawns from its main thread only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself (cgroup v2's cgroup.procs).
                if let Some(cg) = procs_fd
                    && libc::write(cg, b"0".as_ptr().cast(), 1) != 1
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;
        drop(nsfd);
        drop(procs);
        if let Ok(pid) = i32::try_from(child.id()) {
            cleanup::register_pid(pid);
        }
        let out = capture(child.stdout.take());
        let err = capture(child.stderr.take());
        Ok(Proc {
            pid: child.id(),
            comm: comm_of(program),
            stdin: child.stdin.take(),
            child,
            out,
            err,
            line,
        })
    }

    /// Waits for a stdout line satisfying `want`; fails early if the program exits.
    pub fn wait_line(&mut self, limit: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.out.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(l) = text.lines().find(|l| want(l)) {
                return Ok(l.to_owned());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "`{}` exited ({status}) before printing what was expected: {}",
                    self.line,
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` printed nothing expected within {limit:?}: {}",
                    self.line,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails if the program has already exited: a program that died early would otherwise
    /// read as "its socket is gone".
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("`{}` exited early ({status}): {}", self.line, self.output());
        }
        Ok(())
    }

    pub fn write_stdin(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(bytes)?;
        stdin.flush()?;
        Ok(())
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits up to `limit` for the program to exit by itself (e.g. after its input ended).
    pub fn wait_exit(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait()? {
                cleanup::unregister_pid(self.pid as i32);
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then SIGKILL after 2 s; returns once the process is reaped, i.e. once the
    /// kernel has closed its sockets.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.child.try_wait()? {
            cleanup::unregister_pid(self.pid as i32);
            return Ok(s);
        }
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        if let Some(s) = self.wait_exit(Duration::from_secs(2))? {
            return Ok(s);
        }
        let _ = self.child.kill();
        let s = self.child.wait()?;
        cleanup::unregister_pid(self.pid as i32);
        Ok(s)
    }

    /// The tail of what the program printed, for failure messages.
    pub fn output(&self) -> String {
        let tail = |b: &Arc<Mutex<String>>| {
            let t = b.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let start = t.len().saturating_sub(400);
            t[t.char_indices()
                .map(|(i, _)| i)
                .find(|&i| i >= start)
                .unwrap_or(t.len())..]
                .trim()
                .to_owned()
        };
        format!("stdout {:?} stderr {:?}", tail(&self.out), tail(&self.err))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn capture(pipe: Option<impl Read + Send + 'static>) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    if let Some(pipe) = pipe {
        let sink = Arc::clone(&buf);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut b = sink.lock().unwrap_or_else(|e| e.into_inner());
                b.push_str(&line);
                b.push('\n');
            }
        });
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_the_exec_name_cut_to_15_bytes() {
        assert_eq!(comm_of(Path::new("/usr/bin/python3")), "python3");
        assert_eq!(comm_of(Path::new("/bin/redis-server")), "redis-server");
        assert_eq!(
            comm_of(Path::new("/x/keepalive-scenarios")),
            "keepalive-scena"
        );
    }
}
