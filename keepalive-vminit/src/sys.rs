//! The few system calls PID 1 needs, over libc.

use std::{
    ffi::CString,
    fs::File,
    io::{Error, Result},
    os::fd::AsRawFd as _,
};

fn check(ret: libc::c_int) -> Result<()> {
    if ret < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn mount(fstype: &str, target: &str) -> Result<()> {
    std::fs::create_dir_all(target)?;
    let (src, fs, dst) = (cstr(fstype), cstr(fstype), cstr(target));
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let ret = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    match check(ret) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        other => other,
    }
}

/// Loads a plain .ko; a module that is already there (pulled in earlier) is fine.
pub fn load_module(path: &str) -> Result<()> {
    let file = File::open(path)?;
    let params = cstr("");
    // SAFETY: fd is open for the duration of the call; params is a valid empty C string.
    let ret =
        unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    match check(ret as libc::c_int) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// A fresh namespace starts with lo down; the suite's own namespaces bring up their own.
pub fn loopback_up() -> Result<()> {
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq for the duration of both ioctls.
    let result = unsafe {
        check(libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req)).and_then(|()| {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            check(libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req))
        })
    };
    // SAFETY: fd came from socket() above.
    unsafe { libc::close(fd) };
    result
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, whose 64 KiB default is far too small
/// for the daemon's maps; children inherit the raised limit.
pub fn unlimit_memlock() -> Result<()> {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: lim is a valid rlimit.
    check(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) })
}

pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data and uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is valid for writing.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".to_owned();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; as PID 1 we may power off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Only reached if poweroff failed: the host's watchdog ends the VM.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in fixed strings")
}
