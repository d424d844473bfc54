//! Which process holds a socket: socket inode → (pid, process name), from /proc/<pid>/fd.
//!
//! Keepalive timers fire in softirq context, where "the current process" is whoever was
//! interrupted, so the kernel side reports the socket's inode instead and this table names the
//! owner. A miss triggers a rescan of /proc, at most every `MIN_RESCAN` and never sooner than
//! `RESCAN_SPACING` times the last scan's cost after it: with a few hundred thousand sockets a
//! scan takes seconds, and misses rescanning back to back starved the event loop (it never
//! caught up, and SIGTERM waited minutes). Sockets shared by several processes are attributed
//! to the lowest pid (usually the parent).
//!
//! The name is the process's (`/proc/<pid>/comm`, the thread-group leader's), never a thread's:
//! a tokio, Go or Java server sets its sockets' options from worker threads named
//! `tokio-rt-worker` and the like. The thread's own name is kept beside it where it differs.
use std::{
    collections::HashMap,
    fs,
    time::{Duration, Instant},
};

const MIN_RESCAN: Duration = Duration::from_millis(100);
/// A miss-triggered scan waits this many times the last scan's cost: misses then cost at most
/// 5 % of one CPU, however many sockets the host holds.
const RESCAN_SPACING: u32 = 20;
/// A scan that took longer than this runs on a blocking thread next time (see `wanted`): the
/// event loop cannot wait seconds for one at a few hundred thousand sockets.
pub const INLINE_MAX: Duration = Duration::from_millis(50);
/// A process's name read for a syscall's owner is reused this long for the same thread.
const TASK_NAME_TTL: Duration = Duration::from_secs(1);
/// Processes whose read is remembered at most (a fork storm must not grow it without bound).
const TASK_READS_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// The process's name.
    pub comm: String,
    /// The name of the thread that made the call, where it differs from the process's (only
    /// for owners taken from a syscall).
    pub thread: Option<String>,
}

impl Owner {
    pub fn new(pid: u32, comm: impl Into<String>) -> Owner {
        Owner {
            pid,
            comm: comm.into(),
            thread: None,
        }
    }
}

/// Every socket of every process is listed (not only TCP ones: /proc does not say), so the
/// table holds a pid per inode and each process's name once. The pairs are a sorted vector (8
/// bytes a socket; a `HashMap` took 34 at a million): lookups are rare, since the inventory
/// keeps each socket's owner once found.
#[derive(Default)]
pub struct Owners {
    /// (inode, pid), by inode: socket inodes are 32-bit (sockfs's get_next_ino).
    by_inode: Vec<(u32, u32)>,
    comms: HashMap<u32, Box<str>>,
    /// When a miss may scan /proc again (see `RESCAN_SPACING`).
    next_scan: Option<Instant>,
    scans: u64,
    last_took: Duration,
    /// A miss wants a scan that is too slow to run inline: the event loop starts it on a
    /// blocking thread and installs its table (`install`).
    wanted: bool,
    /// Start-up left the first scan to the event loop (`defer`).
    deferred: bool,
    /// When `from_task` last read each process's name from /proc, and for which thread.
    task_reads: HashMap<u32, (Box<str>, Instant)>,
}

impl Owners {
    /// The owner if already known, without scanning /proc: for the high-volume inventory
    /// events, whose misses are resolved in batches off the hot path.
    pub fn cached(&self, ino: u64) -> Option<Owner> {
        let ino = u32::try_from(ino).ok()?;
        let at = self.by_inode.binary_search_by_key(&ino, |p| p.0).ok()?;
        let pid = self.by_inode[at].1;
        Some(Owner::new(
            pid,
            self.comms
                .get(&pid)
                .map_or_else(String::new, |c| c.to_string()),
        ))
    }

    /// The owner named by a syscall the process made: `pid` is its thread group, `thread` the
    /// calling thread's name as the kernel gave it. The process's name is read from /proc at
    /// each call (settings and accepts are rare next to probes): a name cached by an earlier
    /// /proc scan can be the parent's, taken between its fork and the child's exec. A process
    /// already gone keeps the name cached, else the thread's.
    pub fn from_task(&mut self, pid: u32, thread: &str) -> Owner {
        // The same thread of the same process named it within `TASK_NAME_TTL`: the name read
        // then still holds (an exec renames the calling thread, so it would not match). A
        // storm of setsockopt calls read /proc at each one, most of the daemon's CPU then.
        if let Some(comm) = self
            .task_reads
            .get(&pid)
            .filter(|(t, at)| **t == *thread && at.elapsed() < TASK_NAME_TTL)
            .and_then(|_| self.comms.get(&pid))
        {
            let comm = comm.to_string();
            return Owner {
                pid,
                thread: (comm != thread).then(|| thread.to_string()),
                comm,
            };
        }
        let comm = match fs::read_to_string(format!("/proc/{pid}/comm")) {
            Ok(name) => {
                let name = name.trim_end().to_string();
                if self.comms.get(&pid).is_none_or(|c| **c != *name) {
                    self.comms.insert(pid, name.as_str().into());
                }
                if self.task_reads.len() >= TASK_READS_MAX {
                    self.task_reads.clear();
                }
                self.task_reads.insert(pid, (thread.into(), Instant::now()));
                name
            }
            Err(_) => self
                .comms
                .get(&pid)
                .map_or_else(|| thread.to_string(), |c| c.to_string()),
        };
        Owner {
            pid,
            thread: (comm != thread).then(|| thread.to_string()),
            comm,
        }
    }

    /// Rescans /proc now, whatever the rate limit says, and returns how long it took: the
    /// periodic check of who holds each socket now (see `OwnerCheck`).
    pub fn rescan_now(&mut self) -> Duration {
        self.rescan()
    }

    /// Whether a miss asked for a scan to run off the event loop; asking clears it.
    pub fn take_wanted(&mut self) -> bool {
        std::mem::take(&mut self.wanted)
    }

    /// Whether the last scan was quick enough to run on the event loop.
    pub fn inline(&self) -> bool {
        self.last_took <= INLINE_MAX
    }

    /// A table from a new scan, for a blocking thread; `install` it afterwards.
    pub fn scanned() -> Owners {
        let mut o = Owners::default();
        o.rescan();
        o
    }

    /// Takes the table of a scan made elsewhere (`scanned`); returns how long it took.
    pub fn install(&mut self, new: Owners) -> Duration {
        let scans = self.scans + new.scans;
        *self = Owners { scans, ..new };
        self.last_took
    }

    /// A scan is running elsewhere (start-up's, see `pipeline::startup`): misses wait for
    /// its table (`install`) instead of starting another scan of every descriptor.
    pub fn defer(&mut self) {
        self.next_scan = Some(Instant::now() + Duration::from_secs(3600));
        self.deferred = true;
    }

    /// Whether misses wait for a scan run elsewhere (`defer`), until `install`.
    pub fn deferred(&self) -> bool {
        self.deferred
    }

    /// How many /proc scans ran since start (misses and periodic checks).
    pub fn scans(&self) -> u64 {
        self.scans
    }

    pub fn lookup(&mut self, ino: u64) -> Option<Owner> {
        if ino == 0 {
            return None;
        }
        if let Some(o) = self.cached(ino) {
            return Some(o);
        }
        if self.next_scan.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        if self.last_took > INLINE_MAX {
            self.wanted = true;
            return None;
        }
        self.rescan();
        let found = self.cached(ino);
        if found.is_none() {
            log::debug!(
                "socket inode {ino}: no process holds it ({} sockets in /proc)",
                self.by_inode.len()
            );
        }
        found
    }

    /// Rescans /proc and returns how long it took; the next miss-triggered scan waits for
    /// `RESCAN_SPACING` times that.
    fn rescan(&mut self) -> Duration {
        let started = Instant::now();
        self.scan();
        let took = started.elapsed();
        self.scans += 1;
        self.last_took = took;
        self.next_scan = Some(Instant::now() + (took * RESCAN_SPACING).max(MIN_RESCAN));
        took
    }

    fn scan(&mut self) {
        // The old tables go first: the rebuilt ones must not double the peak.
        self.by_inode = Vec::new();
        self.comms = HashMap::new();
        let (mut map, mut comms) = (Vec::new(), HashMap::new());
        let Ok(procs) = fs::read_dir("/proc") else {
            return;
        };
        let mut pids: Vec<u32> = procs
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        for pid in pids {
            let dir = format!("/proc/{pid}/fd");
            let (Ok(fds), Ok(dirfd)) = (fs::read_dir(&dir), fs::File::open(&dir)) else {
                continue;
            };
            let mut named = false;
            let mut link = [0u8; 64];
            for fd in fds.flatten() {
                let Some(ino) = read_link_at(&dirfd, &fd.file_name(), &mut link)
                    .and_then(|l| socket_inode(std::str::from_utf8(l).ok()?))
                else {
                    continue;
                };
                if !named {
                    let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    named = true;
                    comms.insert(pid, name.trim_end().into());
                }
                map.push((ino, pid));
            }
        }
        // By inode, then pid: the first of each inode is its lowest pid (usually the parent).
        map.sort_unstable();
        map.dedup_by_key(|p| p.0);
        map.shrink_to_fit();
        comms.shrink_to_fit();
        self.by_inode = map;
        self.comms = comms;
    }
}

/// When to check again who holds each socket. A socket changes hands without any event the
/// daemon sees: a server accepts, forks a worker and closes its own copy (PostgreSQL's
/// postmaster), or passes the descriptor over a Unix socket. The check is a full /proc scan,
/// so its period follows its cost: at least `OwnerCheck::MIN`, and 50 times the last scan's
/// duration (2 % of one CPU at most). A recorded owner that exits brings it forward. While no
/// process starts or exits, a scan comes only every `OwnerCheck::QUIET`: a fork is how most
/// sockets change hands, and on a quiet host the scan was most of the daemon's CPU (74 % with
/// 10 000 sockets, perf).
pub struct OwnerCheck {
    next: Instant,
    /// Before this, not even an exited owner brings a check forward.
    earliest: Instant,
    /// When the last scan ended, and the processes running then (`processes`).
    scanned: Instant,
    procs: u64,
}

impl OwnerCheck {
    pub const MIN: Duration = Duration::from_secs(10);
    /// A descriptor passed over a Unix socket between running processes changes hands with no
    /// process coming or going: found within this.
    pub const QUIET: Duration = Duration::from_secs(60);

    pub fn new() -> Self {
        OwnerCheck {
            next: Instant::now() + Self::MIN,
            earliest: Instant::now(),
            scanned: Instant::now(),
            procs: 0,
        }
    }

    /// Whether a check is due now, or earlier because one of `pids` (owners on record) exited.
    pub fn due(&mut self, pids: &[u32]) -> bool {
        let now = Instant::now();
        if now >= self.next {
            if now < self.scanned + Self::QUIET && processes() == self.procs {
                // Nothing forked or exited: look again in a while (a readdir of /proc).
                self.next = now + Self::MIN;
                return false;
            }
            return true;
        }
        now >= self.earliest
            && pids
                .iter()
                .any(|p| fs::metadata(format!("/proc/{p}")).is_err())
    }

    /// An exited owner still waits `RESCAN_SPACING` times the scan's cost: at a million
    /// sockets a scan takes 4-8 s, and on a host where processes come and go (a bench's
    /// holders) exits brought one every half minute, each taking a core from whatever else
    /// ran (a re-walk beside one took seconds longer).
    pub fn done(&mut self, took: Duration) {
        let now = Instant::now();
        self.next = now + (took * 50).max(Self::MIN);
        self.earliest = now + took * RESCAN_SPACING;
        self.scanned = now;
        self.procs = processes();
    }
}

/// The processes running, as one number: a hash of every pid /proc lists, summed, so that a
/// process started or gone changes it (0 when /proc cannot be read: then every check scans).
fn processes() -> u64 {
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .fold(0u64, |sum, pid| {
            sum.wrapping_add(pid.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        })
}

impl Default for OwnerCheck {
    fn default() -> Self {
        Self::new()
    }
}

/// `readlinkat` on the process's fd directory: each link is read without resolving
/// `/proc/<pid>/fd/<n>` from the root again (a million of them at a million sockets). Only
/// short targets matter (`socket:[N]`); longer ones come back truncated, and do not parse.
fn read_link_at<'a>(dir: &fs::File, name: &std::ffi::OsStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    use std::os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _};
    let name = std::ffi::CString::new(name.as_bytes()).ok()?;
    // SAFETY: valid directory fd, NUL-terminated name, and a buffer of the length given.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    buf.get(..usize::try_from(n).ok()?)
}

fn socket_inode(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
#[path = "owners_tests.rs"]
mod tests;
