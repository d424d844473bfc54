//! ICMP destination-unreachable errors that quote a TCP segment, per network namespace.
//!
//! Linux drops an ICMP error quoting a keepalive probe before any socket state changes (the
//! probe's sequence `snd_una - 1` is outside the window) and no tracepoint sits on that path,
//! so no kernel hook on any rung can see it. A raw ICMP socket gets a copy of every ICMP packet
//! its namespace receives; the kernel-side ICMP_FILTER keeps only destination-unreachable, so
//! the cost is per error packet, not per packet. One IPv4 and one IPv6 socket per namespace;
//! they are closed when the namespace disappears from /proc and /run/netns, because an open
//! socket would keep a dead namespace alive.
use std::{
    collections::HashMap,
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use log::{debug, warn};
use tokio::{io::unix::AsyncFd, sync::mpsc, task::JoinHandle};

use prometheus::{IntCounter, IntGauge};

use super::{Input, decode::Flow};
use crate::kernel::{clock::monotonic_ns, netns};

/// An ICMP destination-unreachable that quoted a TCP segment of `flow`.
#[derive(Debug, Clone, Copy)]
pub struct IcmpHit {
    pub flow: Flow,
    pub mono_ns: u64,
}

/// The counters this input keeps: handles into the sinks' registry, handed in so that the
/// input does not depend on the metrics module.
#[derive(Clone)]
pub struct IcmpCounters {
    /// `keepalive_icmp_unreachable_total`
    pub unreachable: IntCounter,
    /// `keepalive_icmp_watched_namespaces`
    pub namespaces: IntGauge,
    pub namespaces_skipped: IntCounter,
    /// `keepalive_events_lost_total{stage="icmp"}`
    pub lost: IntCounter,
}

/// Two sockets per namespace; keeps well inside the 20 000 open files these hosts allow.
const MAX_NAMESPACES: usize = 4096;
const RESCAN: Duration = Duration::from_secs(1);

/// Watches every namespace, rescanning every second and whenever `rescan` is notified (the
/// pipeline does so when an event names a namespace not watched yet).
pub async fn watch(
    tx: mpsc::Sender<Input>,
    rescan: Arc<tokio::sync::Notify>,
    metrics: IcmpCounters,
) {
    let mut watched: HashMap<u32, Vec<JoinHandle<()>>> = HashMap::new();
    loop {
        let found = tokio::task::spawn_blocking(netns::discover)
            .await
            .unwrap_or_default();
        watched.retain(|ino, tasks| {
            let keep = found.contains_key(ino);
            if !keep {
                tasks.iter().for_each(JoinHandle::abort);
                debug!("netns {ino} gone: ICMP watch closed");
            }
            keep
        });
        for (ino, path) in found {
            if watched.contains_key(&ino) {
                continue;
            }
            if watched.len() >= MAX_NAMESPACES {
                metrics.namespaces_skipped.inc();
                continue;
            }
            match tokio::task::spawn_blocking(move || open_in(path)).await {
                Ok(Ok(socks)) => {
                    let tasks = socks
                        .into_iter()
                        .map(|(fd, v6)| {
                            tokio::spawn(read_loop(fd, v6, ino, tx.clone(), metrics.clone()))
                        })
                        .collect();
                    watched.insert(ino, tasks);
                }
                Ok(Err(e)) => debug!("netns {ino}: cannot open ICMP sockets: {e}"),
                Err(_) => {}
            }
        }
        metrics.namespaces.set(watched.len() as i64);
        tokio::select! {
            _ = tokio::time::sleep(RESCAN) => {}
            _ = rescan.notified() => {}
        }
    }
}

/// Creates the sockets inside the namespace from a short-lived thread: `setns` changes only
/// the calling thread, and a socket stays in the namespace it was created in.
fn open_in(path: PathBuf) -> io::Result<Vec<(OwnedFd, bool)>> {
    std::thread::spawn(move || {
        let ns = File::open(&path)?;
        // SAFETY: valid fd; CLONE_NEWNET only affects this thread, which ends right after.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = vec![(raw_socket(false)?, false)];
        match raw_socket(true) {
            Ok(fd) => out.push((fd, true)),
            Err(e) => debug!("no ICMPv6 socket in {}: {e}", path.display()),
        }
        Ok(out)
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

fn raw_socket(v6: bool) -> io::Result<OwnedFd> {
    let (family, proto) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Both filters are "bit set = drop this type"; let only destination-unreachable through.
    let rc = if v6 {
        let mut filter = [u32::MAX; 8];
        filter[0] &= !(1 << 1); // ICMP6_DST_UNREACH
        setsockopt(
            &fd,
            libc::IPPROTO_ICMPV6,
            1, /* ICMP6_FILTER */
            &filter,
        )
    } else {
        let filter: u32 = !(1 << 3); // ICMP_DEST_UNREACH
        setsockopt(&fd, libc::SOL_RAW, 1 /* ICMP_FILTER */, &filter)
    };
    rc.map(|()| fd)
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

async fn read_loop(
    fd: OwnedFd,
    v6: bool,
    netns: u32,
    tx: mpsc::Sender<Input>,
    metrics: IcmpCounters,
) {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
    // the AsyncFd's whole life.
    let Ok(afd) = (unsafe { AsyncFd::register(fd) }) else {
        return;
    };
    let mut buf = [0u8; 1500];
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(afd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            warn!("netns {netns}: ICMP socket: {e}");
            return;
        }
        let packet = &buf[..n as usize];
        let flow = if v6 {
            parse_v6(packet, netns)
        } else {
            parse_v4(packet, netns)
        };
        if let Some(flow) = flow {
            metrics.unreachable.inc();
            if tx
                .try_send(Input::Icmp(IcmpHit {
                    flow,
                    mono_ns: monotonic_ns(),
                }))
                .is_err()
            {
                metrics.lost.inc();
            }
        }
    }
}

const IPPROTO_TCP: u8 = 6;

/// IPv4 raw sockets deliver the IP header: IP | ICMP(8) | quoted IP | quoted TCP ports.
pub fn parse_v4(p: &[u8], netns: u32) -> Option<Flow> {
    let ihl = (*p.first()? & 0x0f) as usize * 4;
    let icmp = p.get(ihl..)?;
    if *icmp.first()? != 3 {
        return None;
    }
    let quoted = icmp.get(8..)?;
    let qihl = (*quoted.first()? & 0x0f) as usize * 4;
    if *quoted.get(9)? != IPPROTO_TCP || qihl < 20 {
        return None;
    }
    let src: [u8; 4] = quoted.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = quoted.get(16..20)?.try_into().ok()?;
    let tcp = quoted.get(qihl..qihl + 4)?;
    Some(Flow {
        netns,
        saddr: IpAddr::V4(Ipv4Addr::from(src)),
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        daddr: IpAddr::V4(Ipv4Addr::from(dst)),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
    })
}

/// ICMPv6 raw sockets start at the ICMPv6 header: ICMPv6(8) | quoted IPv6(40) | TCP ports.
pub fn parse_v6(p: &[u8], netns: u32) -> Option<Flow> {
    if *p.first()? != 1 {
        return None;
    }
    let quoted = p.get(8..)?;
    if *quoted.get(6)? != IPPROTO_TCP {
        return None;
    }
    let src: [u8; 16] = quoted.get(8..24)?.try_into().ok()?;
    let dst: [u8; 16] = quoted.get(24..40)?.try_into().ok()?;
    let tcp = quoted.get(40..44)?;
    Some(Flow {
        netns,
        saddr: IpAddr::V6(Ipv6Addr::from(src)),
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        daddr: IpAddr::V6(Ipv6Addr::from(dst)),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_unreachable_quoting_tcp() {
        let mut p = vec![0x45u8; 1];
        p.resize(20, 0);
        p.extend_from_slice(&[3, 1, 0, 0, 0, 0, 0, 0]); // host unreachable
        let mut q = vec![
            0x45u8, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 1, 2,
        ];
        q.extend_from_slice(&[0x9c, 0x40, 0x13, 0x88, 0, 0, 0, 1]);
        p.extend_from_slice(&q);
        let f = parse_v4(&p, 7).unwrap();
        assert_eq!(
            (
                f.saddr.to_string().as_str(),
                f.sport,
                f.daddr.to_string().as_str(),
                f.dport
            ),
            ("10.0.0.2", 40000, "10.0.1.2", 5000)
        );
        p[20] = 11; // time exceeded is not ours
        assert!(parse_v4(&p, 7).is_none());
        assert!(parse_v4(&p[..30], 7).is_none());
    }

    #[test]
    fn v6_unreachable_quoting_tcp() {
        let mut p = vec![1u8, 3, 0, 0, 0, 0, 0, 0];
        let mut q = vec![0x60u8, 0, 0, 0, 0, 20, 6, 64];
        q.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        q.extend_from_slice(&"fd00:1::2".parse::<Ipv6Addr>().unwrap().octets());
        q.extend_from_slice(&[0x9c, 0x40, 0x13, 0x88]);
        p.extend_from_slice(&q);
        let f = parse_v6(&p, 7).unwrap();
        assert_eq!(
            (f.sport, f.dport, f.daddr.to_string().as_str()),
            (40000, 5000, "fd00:1::2")
        );
        p[8 + 6] = 17; // UDP
        assert!(parse_v6(&p, 7).is_none());
    }
}
