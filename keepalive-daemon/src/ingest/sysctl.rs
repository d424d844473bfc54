//! Namespace keepalive defaults (`net.ipv4.tcp_keepalive_{time,intvl,probes}`), read where they
//! live: in /proc/sys of a thread that entered the namespace.
//!
//! No tracepoint fires on a sysctl write, and the cgroup sysctl hook would need a cgroup v2
//! root the daemon may not have; three small reads per namespace every half second reflect a
//! change within the one second operators expect, at a cost that does not grow with sockets.
use std::{
    collections::HashMap, fs, fs::File, io, os::fd::AsRawFd as _, path::PathBuf, time::Duration,
};

use std::collections::HashSet;

use tokio::sync::mpsc;

use serde::Serialize;

use super::Input;
use crate::kernel::netns;

/// Namespace defaults in seconds / count, as `/proc/sys/net/ipv4/tcp_keepalive_*` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NsDefaults {
    pub idle_s: u32,
    pub intvl_s: u32,
    pub cnt: u8,
}

pub const POLL: Duration = Duration::from_millis(500);

fn read_one(name: &str) -> io::Result<u32> {
    let text = fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_here() -> io::Result<NsDefaults> {
    Ok(NsDefaults {
        idle_s: read_one("tcp_keepalive_time")?,
        intvl_s: read_one("tcp_keepalive_intvl")?,
        cnt: read_one("tcp_keepalive_probes")?.min(255) as u8,
    })
}

/// The kernel's count of keepalive probes sent and of connections ended on a timeout in this
/// thread's namespace (`/proc/self/net` would be the process's namespace, not the one this
/// thread entered).
fn counts_here() -> Option<(Option<u64>, Option<u64>)> {
    let text = fs::read_to_string("/proc/thread-self/net/netstat").ok()?;
    Some((
        super::unseen::keepalive_probes(&text),
        super::unseen::timeout_aborts(&text),
    ))
}

/// One poll: each namespace's defaults, and its kernel count of keepalive probes sent.
#[derive(Default)]
pub struct Reading {
    pub defaults: HashMap<u32, NsDefaults>,
    pub probes_sent: HashMap<u32, u64>,
    /// `TcpExtTCPAbortOnTimeout` per namespace.
    pub timeout_aborts: HashMap<u32, u64>,
}

/// Reads each namespace, from one short-lived thread that enters them in turn (`setns` changes
/// only the calling thread).
pub fn read_all(namespaces: Vec<(u32, PathBuf)>) -> Reading {
    std::thread::spawn(move || {
        let mut out = Reading::default();
        for (ino, path) in namespaces {
            let Ok(ns) = File::open(&path) else { continue };
            // SAFETY: valid fd; affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                continue;
            }
            if let Ok(d) = read_here() {
                out.defaults.insert(ino, d);
            }
            if let Some((probes, aborts)) = counts_here() {
                if let Some(n) = probes {
                    out.probes_sent.insert(ino, n);
                }
                if let Some(n) = aborts {
                    out.timeout_aborts.insert(ino, n);
                }
            }
        }
        out
    })
    .join()
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's own namespace read through setns matches a plain read.
    #[test]
    fn reads_own_namespace() {
        let link = fs::read_link("/proc/self/ns/net").unwrap();
        let ino: u32 = link
            .to_str()
            .unwrap()
            .trim_start_matches("net:[")
            .trim_end_matches(']')
            .parse()
            .unwrap();
        let got = read_all(vec![(ino, PathBuf::from("/proc/self/ns/net"))]);
        assert_eq!(got.defaults.get(&ino), Some(&read_here().unwrap()));
        assert!(
            got.probes_sent.contains_key(&ino),
            "TcpExtTCPKeepAlive read"
        );
    }
}

/// Re-reads the keepalive sysctls of every namespace that has sockets (`wanted`: the
/// inventory's namespaces, asked at each poll), twice a second.
pub async fn poll_defaults(
    wanted: impl Fn() -> Vec<u32> + Send + 'static,
    tx: mpsc::Sender<Input>,
) {
    let mut paths = NsPaths::default();
    loop {
        tokio::time::sleep(POLL).await;
        let wanted = wanted();
        let mut p = std::mem::take(&mut paths);
        let read = tokio::task::spawn_blocking(move || {
            let list = p.resolve(wanted);
            (read_all(list), p)
        })
        .await;
        let Ok((read, p)) = read else { continue };
        paths = p;
        if read.defaults.is_empty() && read.probes_sent.is_empty() {
            continue;
        }
        if tx.send(Input::Defaults(read)).await.is_err() {
            return;
        }
    }
}

/// How often the namespace paths are looked for again although none is missing: only catches
/// a namespace whose cached path went stale while another path to it appeared.
const PATHS_RESCAN: std::time::Duration = std::time::Duration::from_secs(10);

/// Paths to enter the namespaces with, kept between polls. Finding them is a scan of every
/// /proc/<pid>/ns/net (`netns::discover`), which cost more than the sysctl reads themselves
/// when it ran every poll; now it runs when a namespace has no valid path and was not already
/// missing after the last scan (a new namespace, or its process exited), and every
/// `PATHS_RESCAN`.
#[derive(Default)]
struct NsPaths {
    paths: HashMap<u32, std::path::PathBuf>,
    /// Wanted namespaces the last scan did not find (no process left in them): not a reason
    /// to scan again before `PATHS_RESCAN`.
    unfindable: HashSet<u32>,
    scanned: Option<std::time::Instant>,
}

impl NsPaths {
    fn resolve(&mut self, wanted: impl IntoIterator<Item = u32>) -> Vec<(u32, std::path::PathBuf)> {
        let wanted: Vec<u32> = wanted.into_iter().collect();
        let stale = self.scanned.is_none_or(|t| t.elapsed() >= PATHS_RESCAN);
        let missing = wanted
            .iter()
            .any(|ns| !self.unfindable.contains(ns) && !self.valid(*ns));
        if stale || missing {
            self.paths = netns::discover();
            self.scanned = Some(std::time::Instant::now());
            self.unfindable.clear();
        }
        let mut list = Vec::new();
        for ns in wanted {
            if self.valid(ns) {
                list.push((ns, self.paths[&ns].clone()));
            } else if stale || missing {
                self.unfindable.insert(ns);
            }
        }
        list
    }

    /// The cached path still opens `ns`: a /proc/<pid>/ns/net path follows its process, which
    /// may have exited, or its pid been reused by a process elsewhere.
    fn valid(&self, ns: u32) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        self.paths
            .get(&ns)
            .is_some_and(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() as u32 == ns))
    }
}
