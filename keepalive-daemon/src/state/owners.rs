//! Which process holds a socket: socket inode → (pid, comm), from /proc/<pid>/fd.
//!
//! Keepalive timers fire in softirq context, where "the current process" is whoever was
//! interrupted, so the kernel side reports the socket's inode instead and this table names the
//! owner. A miss triggers a rescan of /proc, at most every `MIN_RESCAN`; sockets shared by
//! several processes are attributed to the lowest pid (usually the parent).
use std::{
    collections::HashMap,
    fs,
    time::{Duration, Instant},
};

const MIN_RESCAN: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
}

/// Every socket of every process is listed (not only TCP ones: /proc does not say), so the
/// table holds a pid per inode and each process's name once.
#[derive(Default)]
pub struct Owners {
    by_inode: HashMap<u64, u32>,
    comms: HashMap<u32, Box<str>>,
    last_scan: Option<Instant>,
}

impl Owners {
    /// The owner if already known, without scanning /proc: for the high-volume inventory
    /// events, whose misses are resolved in batches off the hot path.
    pub fn cached(&self, ino: u64) -> Option<Owner> {
        let pid = *self.by_inode.get(&ino)?;
        Some(Owner {
            pid,
            comm: self
                .comms
                .get(&pid)
                .map_or_else(String::new, |c| c.to_string()),
        })
    }

    pub fn lookup(&mut self, ino: u64) -> Option<Owner> {
        if ino == 0 {
            return None;
        }
        if let Some(o) = self.cached(ino) {
            return Some(o);
        }
        if self.last_scan.is_some_and(|t| t.elapsed() < MIN_RESCAN) {
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

    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        // The old tables go first: the rebuilt ones must not double the peak.
        self.by_inode = HashMap::new();
        self.comms = HashMap::new();
        let (mut map, mut comms) = (HashMap::new(), HashMap::new());
        let Ok(procs) = fs::read_dir("/proc") else {
            return;
        };
        let mut pids: Vec<u32> = procs
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        for pid in pids {
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            let mut named = false;
            for fd in fds.flatten() {
                let Some(ino) = fs::read_link(fd.path())
                    .ok()
                    .and_then(|l| socket_inode(l.to_str()?))
                else {
                    continue;
                };
                if map.contains_key(&ino) {
                    continue;
                }
                if !named {
                    let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    named = true;
                    comms.insert(pid, name.trim_end().into());
                }
                map.insert(ino, pid);
            }
        }
        map.shrink_to_fit();
        comms.shrink_to_fit();
        self.by_inode = map;
        self.comms = comms;
    }
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn finds_our_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&listener)
        ))
        .unwrap()
        .ino();
        let owner = Owners::default().lookup(ino).expect("owner found");
        assert_eq!(owner.pid, std::process::id());
        assert!(!owner.comm.is_empty());
        assert_eq!(Owners::default().lookup(0), None);
    }

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }
}
