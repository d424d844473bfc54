//! The owner table's tests: real sockets of this process, found through /proc.
use std::os::unix::fs::MetadataExt as _;

use super::*;

/// The inode of one of our own sockets, as /proc shows it.
fn inode(socket: &impl std::os::fd::AsRawFd) -> u64 {
    fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
        .unwrap()
        .ino()
}

#[test]
fn finds_our_own_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ino = inode(&listener);
    let mut owners = Owners::default();
    let owner = owners.lookup(ino).expect("owner found");
    assert_eq!(owner.pid, std::process::id());
    assert!(!owner.comm.is_empty());
    assert_eq!(Owners::default().lookup(0), None);
    // A miss right after a scan does not scan again: the spacing follows the scan's cost.
    let scans = owners.scans();
    assert_eq!(owners.lookup(u64::MAX), None);
    assert_eq!(owners.scans(), scans);
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_ino = inode(&other);
    assert_eq!(
        owners.lookup(other_ino),
        None,
        "rate-limited, not rescanned"
    );
    assert_eq!(owners.scans(), scans);
    // Once the spacing has passed (not waited for: a busy host's scan takes seconds), a
    // slow scan is wanted off the event loop rather than run in the lookup…
    owners.next_scan = Some(Instant::now());
    owners.last_took = INLINE_MAX * 2;
    assert_eq!(owners.lookup(other_ino), None);
    assert!(owners.take_wanted() && !owners.take_wanted());
    assert_eq!(owners.scans(), scans);
    let took = owners.install(Owners::scanned());
    assert_eq!(owners.scans(), scans + 1);
    assert_eq!(owners.last_took, took);
    assert_eq!(
        owners.cached(other_ino).map(|o| o.pid),
        Some(std::process::id())
    );
    // …and a quick one runs in it.
    let third = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let third_ino = fs::metadata(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&third)
    ))
    .unwrap()
    .ino();
    owners.next_scan = Some(Instant::now());
    owners.last_took = Duration::ZERO;
    assert_eq!(
        owners.lookup(third_ino).map(|o| o.pid),
        Some(std::process::id())
    );
    assert_eq!(owners.scans(), scans + 2);
}

/// A thread with a name of its own sets an option: the owner is the process, by name.
#[test]
fn task_owner_is_the_process_with_its_thread() {
    let own = fs::read_to_string("/proc/self/comm").unwrap();
    let own = own.trim_end();
    let o = Owners::default().from_task(std::process::id(), "worker-7");
    assert_eq!(o.comm, own);
    assert_eq!(o.thread.as_deref(), Some("worker-7"));
    let o = Owners::default().from_task(std::process::id(), own);
    assert_eq!(o.thread, None);
}

/// A process's name is read once for a run of calls from the same thread, and again for
/// another thread or once the read is a second old.
#[test]
fn task_names_are_reused_briefly() {
    let pid = std::process::id();
    let own = fs::read_to_string("/proc/self/comm").unwrap();
    let own = own.trim_end();
    let mut owners = Owners::default();
    owners.from_task(pid, "worker-1");
    // A name the cache would give back where /proc would not: reused only while fresh.
    owners.comms.insert(pid, "stale".into());
    assert_eq!(owners.from_task(pid, "worker-1").comm, "stale");
    assert_eq!(
        owners.from_task(pid, "worker-2").comm,
        own,
        "another thread reads"
    );
    owners.comms.insert(pid, "stale".into());
    if let Some(read) = owners.task_reads.get_mut(&pid) {
        read.1 -= TASK_NAME_TTL;
    }
    assert_eq!(
        owners.from_task(pid, "worker-2").comm,
        own,
        "an old read is redone"
    );
}

#[test]
fn parses_socket_links_only() {
    assert_eq!(socket_inode("socket:[12345]"), Some(12345));
    assert_eq!(socket_inode("pipe:[12345]"), None);
    assert_eq!(socket_inode("/dev/null"), None);
}

#[test]
fn a_quiet_host_skips_the_periodic_scan_until_a_process_comes_or_goes() {
    let long_ago = Instant::now() - Duration::from_secs(3600);
    let mut check = OwnerCheck::new();
    // Due by the clock, but no process started or exited since the scan (tried a few times:
    // another process on the host may come or go in between).
    let skipped = (0..5).any(|_| {
        check.done(Duration::from_millis(1));
        check.next = long_ago;
        !check.due(&[])
    });
    assert!(skipped && check.next > Instant::now());
    // A process started (this child) or exited since: the scan runs.
    check.next = long_ago;
    let mut child = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    assert!(check.due(&[]));
    child.kill().unwrap();
    child.wait().unwrap();
    // However quiet, at most `QUIET` apart.
    check.done(Duration::from_millis(1));
    (check.next, check.scanned) = (long_ago, long_ago);
    assert!(check.due(&[]));
}
