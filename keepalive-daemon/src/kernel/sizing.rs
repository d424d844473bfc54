//! Sizes of the kernel maps that must hold something per socket, chosen at load from how many
//! TCP sockets the machine has then: the `PROBING` hash (one entry per socket in a probe run)
//! and, with `--ring-buffer-bytes auto`, the event ring.
//!
//! Both are sized for the worst moment, a network partition in which every socket probes at
//! once: the kernel cannot grow a BPF map after load, and an LRU map would evict sockets in the
//! middle of their run (measured: 100 000 timers firing in one second with probes unanswered
//! evicted entries of the 65 536-entry LRU, and none of the 2 002 answers that followed was
//! reported). Sockets opened after start are covered by the headroom; beyond it a failed
//! insert is counted, never silent.
use std::{fmt, fs, os::fd::AsRawFd as _, path::PathBuf};

use crate::kernel::netns;

/// `PROBING` entries never go below the size the LRU map had.
pub const PROBING_FLOOR: u32 = 65_536;
/// 4 Mi entries. The hash is preallocated (an insert in softirq context must not depend on an
/// allocation succeeding), at ≈ 64 B an element plus 16 B a bucket: ≈ 320 MiB at the cap.
/// That is ≈ 6 % of what 2.8 M TCP sockets (the most the cap covers with headroom) cost the
/// kernel themselves at ≥ 2 KiB each, and a machine with more sockets than that counts the
/// overflow in `keepalive_events_lost_total{stage="tracking"}`.
pub const PROBING_CAP: u32 = 4 << 20;
/// One 128-byte record plus the ring's 8-byte header, rounded up (a run's answer and its next
/// probe share one record, `RawEvent::answered`; a death stands for its close,
/// `FLAG_CLOSES`): per socket, so that a partition in which every keepalive socket probes in
/// the same second fits without the daemon draining.
pub const RING_BYTES_PER_SOCKET: u64 = 168;
pub const RING_MIN: u32 = 1 << 20;
pub const RING_MAX: u32 = 64 << 20;

/// A record of the run-end ring (`RUN_ENDS`) with the ring's 8-byte header.
pub const RUN_END_RECORD: u64 = keepalive_common::RawEvent::SIZE as u64 + 8;
pub const RUN_END_MIN: u32 = 256 << 10;
/// 64 MiB, the event ring's cap: the ends of ≈ 400 000 runs (a partition of 200 000
/// connections, both ends) with the daemon not draining at all — measured, a partition starves
/// it of CPU for seconds (softirq and the probes' own work take both cores). Kernel memory
/// (≈ 1 % of what the ≥ 260 000 sockets that need the cap cost the kernel), hence a cap; beyond
/// it a loss is counted apart (`keepalive_events_lost_total{stage="run_end"}`).
pub const RUN_END_MAX: u32 = 64 << 20;

/// `--ring-buffer-bytes`: a fixed size, or sized from the sockets found at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RingSize {
    #[default]
    Auto,
    Bytes(u32),
}

impl fmt::Display for RingSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingSize::Auto => f.write_str("auto"),
            RingSize::Bytes(n) => write!(f, "{n}"),
        }
    }
}

/// `PROBING` entries for `sockets` TCP sockets: all of them plus half again for sockets opened
/// after start, within [`PROBING_FLOOR`, `PROBING_CAP`].
pub fn probing_entries(sockets: u64) -> u32 {
    let want = sockets.saturating_add(sockets / 2);
    want.clamp(PROBING_FLOOR as u64, PROBING_CAP as u64) as u32
}

/// Ring bytes for `sockets` TCP sockets: one record each, a power of two within
/// [`RING_MIN`, `RING_MAX`] (the kernel wants a power-of-two number of pages).
pub fn auto_ring_bytes(sockets: u64) -> u32 {
    let want = sockets.saturating_mul(RING_BYTES_PER_SOCKET);
    let pow = want.checked_next_power_of_two().unwrap_or(u64::MAX);
    pow.clamp(RING_MIN as u64, RING_MAX as u64) as u32
}

/// Bytes of the run-end ring for `sockets` TCP sockets: at most one run ends per socket in a
/// run, so one record per socket with the same half again of headroom as `PROBING` (but not
/// its floor: 65 536 records would be 16 MiB on a host with a handful of sockets), a power of
/// two within [`RUN_END_MIN`, `RUN_END_MAX`].
pub fn run_end_ring_bytes(sockets: u64) -> u32 {
    let want = sockets
        .saturating_add(sockets / 2)
        .saturating_mul(RUN_END_RECORD);
    let pow = want.checked_next_power_of_two().unwrap_or(u64::MAX);
    pow.clamp(RUN_END_MIN as u64, RUN_END_MAX as u64) as u32
}

/// TCP sockets on the machine: the sum of `TCP: inuse` over every network namespace the
/// daemon can see (each namespace's `sockstat` counts only its own). Entered one by one from a
/// short-lived thread, as `setns` changes only the calling thread.
pub fn tcp_sockets() -> u64 {
    let namespaces: Vec<PathBuf> = netns::discover().into_values().collect();
    std::thread::spawn(move || {
        let mut total = 0u64;
        for path in namespaces {
            let Ok(ns) = fs::File::open(&path) else {
                continue;
            };
            // SAFETY: a valid namespace fd; affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                continue;
            }
            if let Ok(text) = fs::read_to_string("/proc/thread-self/net/sockstat") {
                total += tcp_inuse(&text).unwrap_or(0);
            }
        }
        total
    })
    .join()
    .unwrap_or(0)
}

/// `N` of the `TCP: inuse N orphan …` line of a `sockstat` file.
fn tcp_inuse(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "inuse")?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probing_has_floor_headroom_and_cap() {
        assert_eq!(probing_entries(0), PROBING_FLOOR);
        assert_eq!(probing_entries(40_000), PROBING_FLOOR);
        assert_eq!(probing_entries(100_000), 150_000);
        assert_eq!(probing_entries(1_000_000), 1_500_000);
        assert_eq!(probing_entries(u64::MAX), PROBING_CAP);
    }

    #[test]
    fn ring_is_a_clamped_power_of_two() {
        assert_eq!(auto_ring_bytes(0), RING_MIN);
        assert_eq!(auto_ring_bytes(6_000), RING_MIN);
        // 10 000 × 168 = 1.68 MB → 2 MiB.
        assert_eq!(auto_ring_bytes(10_000), 2 << 20);
        // 100 000 × 168 = 16.8 MB → 32 MiB: a partition of 100 000 sockets fits.
        assert_eq!(auto_ring_bytes(100_000), 32 << 20);
        assert!(auto_ring_bytes(100_000) as u64 >= 100_000 * RING_BYTES_PER_SOCKET);
        assert_eq!(auto_ring_bytes(1_000_000), RING_MAX);
        assert_eq!(auto_ring_bytes(u64::MAX), RING_MAX);
        for n in [1, 999, 12_345, 400_000] {
            assert!(auto_ring_bytes(n).is_power_of_two());
        }
    }

    #[test]
    fn run_end_ring_follows_the_sockets() {
        // 40 000 sockets (the test stage): 60 000 records.
        let small = run_end_ring_bytes(40_000);
        assert!(small.is_power_of_two());
        assert!(small as u64 >= 60_000 * RUN_END_RECORD);
        assert_eq!(run_end_ring_bytes(0), RUN_END_MIN);
        assert_eq!(run_end_ring_bytes(1_000_000), RUN_END_MAX);
        assert_eq!(run_end_ring_bytes(u64::MAX), RUN_END_MAX);
        // 200 000 sockets (a partition of 100 000 connections) dying at once fit undrained.
        assert!(run_end_ring_bytes(200_000) as u64 >= 200_000 * RUN_END_RECORD);
    }

    #[test]
    fn parses_sockstat() {
        let text =
            "sockets: used 215\nTCP: inuse 7 orphan 0 tw 2 alloc 9 mem 1\nUDP: inuse 3 mem 2\n";
        assert_eq!(tcp_inuse(text), Some(7));
        assert_eq!(tcp_inuse("UDP: inuse 3\n"), None);
    }

    /// A real count: a listening socket of this process's namespace is among them.
    #[test]
    fn counts_a_socket_of_our_own() {
        let _l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(tcp_sockets() >= 1);
    }
}
