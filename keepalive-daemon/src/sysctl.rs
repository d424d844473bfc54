//! Namespace keepalive defaults (`net.ipv4.tcp_keepalive_{time,intvl,probes}`), read where they
//! live: in /proc/sys of a thread that entered the namespace.
//!
//! No tracepoint fires on a sysctl write, and the cgroup sysctl hook would need a cgroup v2
//! root the daemon may not have; three small reads per namespace every half second reflect a
//! change within the one second operators expect, at a cost that does not grow with sockets.
use std::{collections::HashMap, fs, fs::File, io, os::fd::AsRawFd as _, path::PathBuf, time::Duration};

use crate::inventory::NsDefaults;

pub const POLL: Duration = Duration::from_millis(500);

fn read_one(name: &str) -> io::Result<u32> {
    let text = fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))?;
    text.trim().parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_here() -> io::Result<NsDefaults> {
    Ok(NsDefaults {
        idle_s: read_one("tcp_keepalive_time")?,
        intvl_s: read_one("tcp_keepalive_intvl")?,
        cnt: read_one("tcp_keepalive_probes")?.min(255) as u8,
    })
}

/// Reads the defaults of each namespace, from one short-lived thread that enters them in turn
/// (`setns` changes only the calling thread).
pub fn read_all(namespaces: Vec<(u32, PathBuf)>) -> HashMap<u32, NsDefaults> {
    std::thread::spawn(move || {
        let mut out = HashMap::new();
        for (ino, path) in namespaces {
            let Ok(ns) = File::open(&path) else { continue };
            // SAFETY: valid fd; affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                continue;
            }
            if let Ok(d) = read_here() {
                out.insert(ino, d);
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
        let ino: u32 = link.to_str().unwrap().trim_start_matches("net:[").trim_end_matches(']').parse().unwrap();
        let got = read_all(vec![(ino, PathBuf::from("/proc/self/ns/net"))]);
        assert_eq!(got.get(&ino), Some(&read_here().unwrap()));
    }
}
