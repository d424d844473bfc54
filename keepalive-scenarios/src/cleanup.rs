//! Last-resort cleanup: namespaces, daemons and the programs scenarios start must not outlive
//! the runner.
//!
//! Drop guards cover errors and panics. A SIGINT/SIGTERM/SIGHUP would skip them, so a handler
//! forwards the signal number through a pipe to a thread that removes whatever is still
//! registered here before exiting. A handler rather than blocking the signals and sigwait():
//! a blocked mask is inherited across exec, and the daemon would then never see our SIGTERM.

use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

struct Registry {
    ip_bin: String,
    netns: Vec<String>,
    /// Daemons under test and the third-party programs the inventory scenarios run.
    pids: Vec<i32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    ip_bin: String::new(),
    netns: Vec::new(),
    pids: Vec::new(),
});

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    // A panic while holding the lock must not stop later cleanup, so ignore poisoning.
    let mut guard = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut guard)
}

pub fn register_netns(name: &str) {
    with_registry(|r| r.netns.push(name.to_owned()));
}

pub fn unregister_netns(name: &str) {
    with_registry(|r| r.netns.retain(|n| n != name));
}

/// A child to SIGTERM if the runner is interrupted; unregister it once reaped, so a recycled pid
/// is never signalled.
pub fn register_pid(pid: i32) {
    with_registry(|r| r.pids.push(pid));
}

pub fn unregister_pid(pid: i32) {
    with_registry(|r| r.pids.retain(|p| *p != pid));
}

/// Deletes a named namespace; used by the Drop guard and by the signal thread.
pub fn delete_netns(ip_bin: &str, name: &str) {
    let status = Command::new(ip_bin).args(["netns", "del", name]).status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("warning: could not delete network namespace {name}");
    }
}

static SIGNAL_PIPE_WR: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe; the fd is a pipe we own for the process lifetime.
    unsafe {
        libc::write(
            SIGNAL_PIPE_WR.load(Ordering::Relaxed),
            (&byte as *const u8).cast(),
            1,
        )
    };
}

pub fn install_signal_thread(ip_bin: &str) -> anyhow::Result<()> {
    with_registry(|r| r.ip_bin = ip_bin.to_owned());
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        anyhow::bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    SIGNAL_PIPE_WR.store(fds[1], Ordering::Relaxed);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls write(2); sigaction is zero-initialised.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        anyhow::ensure!(rc == 0, "sigaction: {}", std::io::Error::last_os_error());
    }
    let rd = fds[0];
    std::thread::spawn(move || {
        let mut byte = 0u8;
        // SAFETY: reading one byte into a live local from our own pipe.
        let n = unsafe { libc::read(rd, (&mut byte as *mut u8).cast(), 1) };
        if n != 1 {
            return;
        }
        let sig = i32::from(byte);
        eprintln!("signal {sig}: cleaning up");
        let (ip_bin, names, pids) = with_registry(|r| {
            (
                r.ip_bin.clone(),
                std::mem::take(&mut r.netns),
                std::mem::take(&mut r.pids),
            )
        });
        for pid in pids {
            // SAFETY: kill(2) on a pid we spawned ourselves and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        for name in names {
            delete_netns(&ip_bin, &name);
        }
        std::process::exit(128 + sig);
    });
    Ok(())
}
