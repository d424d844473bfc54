//! The `noise` subcommand: work that crosses our hooks without concerning keepalive, to measure
//! the common path of each filter — the path almost every call takes on a real machine.
//!
//! * Non-keepalive timer expirations: threads blocked in recv() on a UDP socket with a 1 ms
//!   SO_RCVTIMEO. The wait is `schedule_timeout`, a timer-wheel timer (`process_timeout`), so
//!   each timeout is one `timer_expire_entry`/`exit` pair for a callback that is not
//!   `tcp_keepalive_timer` (hrtimer-based sleeps like nanosleep would not cross the hook).
//! * setsockopt calls of an option the daemon ignores (TCP_NODELAY), paced.
use std::{
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::sys;

#[derive(clap::Args, Debug, Clone)]
pub struct NoiseOpts {
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Threads each expiring one timer per jiffy (≈ 250/s each at HZ 250).
    #[arg(long, default_value_t = 24)]
    pub timer_threads: usize,
    /// TCP_NODELAY setsockopt calls per second.
    #[arg(long, default_value_t = 10_000)]
    pub setsockopts: u32,
}

pub fn noise(o: NoiseOpts) -> Result<()> {
    if let Some(ns) = &o.netns {
        sys::enter_netns(ns)?;
    }
    for _ in 0..o.timer_threads {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        sock.set_read_timeout(Some(Duration::from_millis(1)))?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            loop {
                let _ = sock.recv(&mut buf);
            }
        });
    }
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let c = TcpStream::connect(l.local_addr()?)?;
    let fd = c.as_raw_fd();
    let start = Instant::now();
    let mut done: u64 = 0;
    println!("ready");
    // Runs until killed by the parent (NoiseProc's drop).
    loop {
        let due = (start.elapsed().as_secs_f64() * f64::from(o.setsockopts)) as u64;
        while done < due {
            let one: i32 = (done & 1) as i32;
            // SAFETY: valid descriptor and a 4-byte option value.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&raw const one).cast(),
                    4,
                )
            };
            done += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A running `noise` child, killed on drop.
pub struct NoiseProc {
    child: std::process::Child,
    pub command: String,
}

impl NoiseProc {
    pub fn spawn(o: &NoiseOpts) -> Result<Self> {
        let mut args = vec![
            "noise".to_string(),
            "--timer-threads".into(),
            o.timer_threads.to_string(),
        ];
        args.extend(["--setsockopts".into(), o.setsockopts.to_string()]);
        if let Some(ns) = &o.netns {
            args.extend(["--netns".into(), ns.display().to_string()]);
        }
        let mut child =
            sys::die_with_parent(&mut std::process::Command::new(crate::sys::self_exe()?))
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
        }
        Ok(NoiseProc {
            child,
            command: format!("keepalive-bench {}", args.join(" ")),
        })
    }
}

impl Drop for NoiseProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
