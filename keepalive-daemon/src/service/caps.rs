//! Capabilities: what the daemon needs before attaching, what it keeps afterwards, and the drop.
//!
//! Loading and attaching the programs needs CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN before
//! 5.8); the keepalive timer's address is measured with a program of our own rather than read
//! from kallsyms, so no CAP_SYSLOG. Once attached, the daemon keeps only:
//!
//! - CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: `/proc/<pid>/fd` and `/proc/<pid>/ns/net` of
//!   processes of other users (socket owners, namespaces to watch);
//! - CAP_SYS_ADMIN: `setns` into network namespaces that appear later (ICMP sockets, sysctl
//!   reads); on kernels before 6.5 it is also what lets the daemon read its BPF maps;
//! - CAP_NET_RAW: the raw ICMP sockets in each namespace.
//!
//! Capabilities are per thread in Linux, and the async runtime's threads exist before the drop,
//! so the drop runs in every thread: the calling one directly, the others from a signal
//! handler, as libcap's psx and Go's AllThreadsSyscall do. The drop is checked afterwards in
//! `/proc/self/task/*/status`, and threads started later inherit the reduced sets.
use std::{
    fs,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use crate::error::{Error, Result};

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_NET_RAW: u32 = 13;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Kept after attaching; see the module documentation for why each.
pub const KEPT: &[u32] = &[
    CAP_DAC_READ_SEARCH,
    CAP_NET_RAW,
    CAP_SYS_PTRACE,
    CAP_SYS_ADMIN,
];

pub fn name(cap: u32) -> String {
    const NAMES: &[&str] = &[
        "chown",
        "dac_override",
        "dac_read_search",
        "fowner",
        "fsetid",
        "kill",
        "setgid",
        "setuid",
        "setpcap",
        "linux_immutable",
        "net_bind_service",
        "net_broadcast",
        "net_admin",
        "net_raw",
        "ipc_lock",
        "ipc_owner",
        "sys_module",
        "sys_rawio",
        "sys_chroot",
        "sys_ptrace",
        "sys_pacct",
        "sys_admin",
        "sys_boot",
        "sys_nice",
        "sys_resource",
        "sys_time",
        "sys_tty_config",
        "mknod",
        "lease",
        "audit_write",
        "audit_control",
        "setfcap",
        "mac_override",
        "mac_admin",
        "syslog",
        "wake_alarm",
        "block_suspend",
        "audit_read",
        "perfmon",
        "bpf",
        "checkpoint_restore",
    ];
    NAMES.get(cap as usize).map_or_else(
        || format!("CAP_{cap}"),
        |n| format!("CAP_{}", n.to_uppercase()),
    )
}

pub fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1u64 << c))
}

pub fn names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|c| mask & (1u64 << c) != 0)
        .map(name)
        .collect()
}

/// One of a task's capability sets, from its `status` file.
pub fn read_set(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// This thread's effective set.
pub fn effective() -> u64 {
    fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| read_set(&s, "CapEff"))
        .unwrap_or(0)
}

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The sets every thread ends with: effective = permitted = `TARGET`, nothing inheritable.
static TARGET: AtomicU64 = AtomicU64::new(0);
/// Highest capability the kernel knows, for the bounding-set loop.
static LAST_CAP: AtomicU32 = AtomicU32::new(40);
static FAILED: AtomicU32 = AtomicU32::new(0);

/// Drops this thread's capabilities to `TARGET`: bounding set (when CAP_SETPCAP allows), ambient
/// set, then effective/permitted/inheritable. Only raw system calls: this also runs in a signal
/// handler.
fn drop_this_thread() -> bool {
    let keep = TARGET.load(Ordering::SeqCst);
    let last = LAST_CAP.load(Ordering::SeqCst);
    for cap in 0..=last.min(63) {
        if keep & (1u64 << cap) == 0 {
            // Fails without CAP_SETPCAP (a unit's CapabilityBoundingSet= already did this).
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let lo = keep as u32;
    let hi = (keep >> 32) as u32;
    let data = [
        Data {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        Data {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: capset with a version-3 header and two data structs, as the ABI requires.
    unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) == 0 }
}

extern "C" fn on_signal(_: libc::c_int) {
    // SAFETY: errno is thread-local; saved and restored around the handler's system calls.
    let errno = unsafe { *libc::__errno_location() };
    if !drop_this_thread() {
        FAILED.fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Drops every capability but `KEPT` (and those the process does not have anyway) in every
/// thread of the process. Returns the kept set.
pub fn drop_after_attach() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::Caps(format!("/proc/self/status: {e}")))?;
    let permitted = read_set(&status, "CapPrm").unwrap_or(0);
    let keep = permitted & mask(KEPT);
    TARGET.store(keep, Ordering::SeqCst);
    if let Some(last) = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        LAST_CAP.store(last, Ordering::SeqCst);
    }
    let signal = libc::SIGRTMIN() + 5;
    // SAFETY: installs a handler that only makes raw system calls and touches atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(signal, &sa, std::ptr::null_mut()) != 0 {
            return Err(Error::Caps(format!(
                "sigaction: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    if !drop_this_thread() {
        return Err(Error::Caps(format!(
            "capset: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: no preconditions.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let behind = threads_behind(keep, me);
        if behind.is_empty() {
            return Ok(keep);
        }
        if FAILED.load(Ordering::SeqCst) > 0 {
            return Err(Error::Caps("capset failed in a runtime thread".into()));
        }
        if Instant::now() > deadline {
            return Err(Error::Caps(format!(
                "threads {behind:?} still hold capabilities after 5 s"
            )));
        }
        for tid in behind {
            // A thread that exits meanwhile gives ESRCH, which is fine.
            // SAFETY: signals a thread of our own process.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Threads (other than `me`) whose effective or permitted set is not `keep` yet.
fn threads_behind(keep: u64, me: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
        .filter(|tid| *tid != me)
        .filter(|tid| {
            let Ok(s) = fs::read_to_string(format!("/proc/self/task/{tid}/status")) else {
                return false;
            };
            read_set(&s, "CapEff") != Some(keep) || read_set(&s, "CapPrm") != Some(keep)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_masks() {
        assert_eq!(name(CAP_SYS_ADMIN), "CAP_SYS_ADMIN");
        assert_eq!(name(CAP_BPF), "CAP_BPF");
        assert_eq!(name(CAP_DAC_READ_SEARCH), "CAP_DAC_READ_SEARCH");
        assert_eq!(name(34), "CAP_SYSLOG");
        assert_eq!(name(CAP_PERFMON), "CAP_PERFMON");
        assert_eq!(
            names(mask(KEPT)),
            [
                "CAP_DAC_READ_SEARCH",
                "CAP_NET_RAW",
                "CAP_SYS_PTRACE",
                "CAP_SYS_ADMIN"
            ]
        );
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert_eq!(read_set(status, "CapEff"), Some(0x1fffeffffff));
        assert_eq!(read_set(status, "CapPrm"), None);
    }
}
