//! Small views of the running system: process CPU and memory, clocks, network namespaces the
//! bench owns, BPF object ids held by a process, and the kernel.bpf_stats_enabled switch.
use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// CPU time (user + system) a process has used, all threads, from /proc/<pid>/stat.
/// Resolution is one clock tick (10 ms at USER_HZ 100), so windows are seconds long.
pub fn cpu_ns(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields count from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

/// Resident set size in bytes, from /proc/<pid>/status.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

fn clock(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

pub fn realtime_ns() -> i128 {
    clock(libc::CLOCK_REALTIME)
}

pub fn monotonic_ns() -> i128 {
    clock(libc::CLOCK_MONOTONIC)
}

/// Ids of the BPF programs (`key` = "prog_id") or maps ("map_id") a process holds descriptors
/// for. bpftool's own `pids` column needs a helper program Debian's build may lack; fdinfo
/// always says which object a descriptor is.
pub fn bpf_ids(pid: u32, key: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in dir.flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix(':'))
                && let Ok(id) = v.trim().parse()
            {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// `sysctl kernel.bpf_stats_enabled=1` for the life of the guard; the previous value after.
pub struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let previous = fs::read_to_string(BPF_STATS)
            .context(BPF_STATS)?
            .trim()
            .to_string();
        fs::write(BPF_STATS, "1").context("sysctl kernel.bpf_stats_enabled=1")?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.previous);
    }
}

/// Keepalive sysctls of a storm namespace: idle = intvl = 1 s, so every socket with SO_KEEPALIVE
/// probes each second (nine unanswered probes before the kernel gives up).
pub const STORM_KEEPALIVE: [(&str, &str); 3] = [
    ("net.ipv4.tcp_keepalive_time", "1"),
    ("net.ipv4.tcp_keepalive_intvl", "1"),
    ("net.ipv4.tcp_keepalive_probes", "9"),
];

/// A network namespace made with `ip netns add`, so that the daemon finds it under /run/netns
/// (and reads its sysctls) like any operator's namespace; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `sysctls`: (name, value) pairs set inside, e.g. the keepalive defaults of a storm.
    pub fn create(name: &str, sysctls: &[(&str, &str)]) -> Result<Self> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns {
            name: name.to_string(),
        };
        run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        for (k, v) in sysctls {
            let (path, value) = (format!("/proc/sys/{}", k.replace('.', "/")), v.to_string());
            in_netns(&ns.path(), move || fs::write(path, value))
                .with_context(|| format!("sysctl {k}={v} in {name}"))??;
        }
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(self.path()).map(|m| m.ino()).unwrap_or(0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves the calling thread into the namespace at `path` (setns changes only this thread).
pub fn enter_netns(path: &Path) -> Result<()> {
    let f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: a valid namespace descriptor; CLONE_NEWNET checks its type.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Runs `f` on a short-lived thread inside the namespace, leaving the caller where it was.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let path = path.to_path_buf();
    std::thread::spawn(move || -> Result<T> {
        enter_netns(&path)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// The child gets SIGTERM when the bench dies, however it dies: daemons, bpftrace and noise
/// generators must not outlive an interrupted run.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        })
    }
}

/// Deletes `kab-*-<pid>` namespaces left by an earlier run that was killed (no such pid now).
pub fn remove_stale_netns() {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("kab-")
            .and_then(|r| r.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// Waits up to `grace` for a child asked to end (its stdin closed, or SIGTERM), then kills it:
/// a bench child that ignores the request must not outlive the bench.
pub fn reap(child: &mut std::process::Child, grace: std::time::Duration) {
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("{cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?}: {status}");
    }
    Ok(())
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Address of a kernel symbol from /proc/kallsyms (root sees real addresses).
pub fn kallsyms(name: &str) -> Result<u64> {
    let text = fs::read_to_string("/proc/kallsyms")?;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(_), Some(sym)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if sym == name {
            let a = u64::from_str_radix(addr, 16)?;
            if a == 0 {
                bail!("{name} has address 0 in /proc/kallsyms (kptr_restrict?)");
            }
            return Ok(a);
        }
    }
    bail!("{name} not in /proc/kallsyms")
}

/// RLIMIT_NOFILE soft limit raised to the hard limit (20 000 on these hosts).
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer; setrlimit with cur <= max is always allowed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    r.rlim_cur
}

/// (idle, total) jiffies of all CPUs from /proc/stat; two readings give the idle share between.
pub fn cpu_idle() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total = v.iter().take(8).sum();
    (
        v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0),
        total,
    )
}

pub fn idle_share(a: (u64, u64), b: (u64, u64)) -> f64 {
    (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn sleep_s(s: f64) {
    std::thread::sleep(Duration::from_secs_f64(s));
}

/// This binary, copied once per run: children (holders, load and noise generators) start from
/// the copy, so a rebuild of target/release during a run cannot pull the file from under them.
pub fn self_exe() -> Result<PathBuf> {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = COPY.get() {
        return Ok(p.clone());
    }
    let dir = std::env::temp_dir().join(format!("keepalive-bench-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let copy = dir.join("keepalive-bench");
    fs::copy(std::env::current_exe()?, &copy).context("copying the bench binary")?;
    Ok(COPY.get_or_init(|| copy).clone())
}

/// Removes the copy made by `self_exe`.
pub fn remove_self_copy() {
    let _ = fs::remove_dir_all(
        std::env::temp_dir().join(format!("keepalive-bench-{}", std::process::id())),
    );
}

/// A free TCP port on 127.0.0.1 in the host namespace (for the daemon's web listener).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
