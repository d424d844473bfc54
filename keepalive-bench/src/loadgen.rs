//! The `load` subcommand: loopback TCP traffic over many connections, one thread per
//! connection end, counted on the receiving side after a warm-up.
//!
//! `bulk`: every client writes 64 KiB blocks as fast as it can. `rr`: every client sends a
//! request and waits for the echoed response (transactions per second: the per-packet path,
//! softirq and wake-ups, rather than copying).
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::sys;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadOpts {
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// bulk or rr.
    #[arg(long, default_value = "bulk")]
    pub mode: String,
    #[arg(long, default_value_t = 16)]
    pub conns: usize,
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Request and response size in rr mode.
    #[arg(long, default_value_t = 64)]
    pub msg: usize,
    /// SO_KEEPALIVE (idle = intvl = 1 s) on every connection, so their keepalive timers fire
    /// while traffic flows, as on a server that enables it everywhere.
    #[arg(long)]
    pub keepalive: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LoadResult {
    pub bytes: u64,
    pub transactions: u64,
    pub secs: f64,
}

const BLOCK: usize = 64 * 1024;
const WARMUP: Duration = Duration::from_millis(500);

fn set_keepalive(s: &TcpStream) {
    let fd = s.as_raw_fd();
    for (level, name) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    ] {
        let one: i32 = 1;
        // SAFETY: valid descriptor and a 4-byte option value.
        unsafe { libc::setsockopt(fd, level, name, (&raw const one).cast(), 4) };
    }
}

pub fn load(o: LoadOpts) -> Result<()> {
    if let Some(ns) = &o.netns {
        sys::enter_netns(ns)?;
    }
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = l.local_addr()?;
    let mut pairs = Vec::new();
    for _ in 0..o.conns {
        let c = TcpStream::connect(addr)?;
        let (s, _) = l.accept()?;
        c.set_nodelay(true)?;
        s.set_nodelay(true)?;
        if o.keepalive {
            set_keepalive(&c);
            set_keepalive(&s);
        }
        pairs.push((c, s));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let trans = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(2 * o.conns + 1));
    let mut threads = Vec::new();
    for (mut c, mut s) in pairs {
        let bulk = o.mode == "bulk";
        let msg = o.msg;
        // Server end: counts bulk bytes, or echoes requests.
        let (counting_s, bytes_s, start_s) = (counting.clone(), bytes.clone(), start.clone());
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; BLOCK.max(msg)];
            start_s.wait();
            loop {
                let want = if bulk { BLOCK } else { msg };
                let n = match s.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if bulk {
                    if counting_s.load(Ordering::Relaxed) {
                        bytes_s.fetch_add(n as u64, Ordering::Relaxed);
                    }
                } else if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }));
        // Client end: writes blocks, or sends requests and counts the answered ones.
        let (stop_c, counting_c, trans_c, start_c) =
            (stop.clone(), counting.clone(), trans.clone(), start.clone());
        threads.push(std::thread::spawn(move || {
            let block = vec![7u8; BLOCK.max(msg)];
            let mut back = vec![0u8; msg];
            start_c.wait();
            while !stop_c.load(Ordering::Relaxed) {
                if bulk {
                    if c.write_all(&block[..BLOCK]).is_err() {
                        break;
                    }
                } else {
                    if c.write_all(&block[..msg]).is_err() || c.read_exact(&mut back).is_err() {
                        break;
                    }
                    if counting_c.load(Ordering::Relaxed) {
                        trans_c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Closing the client ends the server's read loop.
            let _ = c.shutdown(std::net::Shutdown::Both);
        }));
    }
    start.wait();
    std::thread::sleep(WARMUP);
    counting.store(true, Ordering::SeqCst);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(o.secs));
    counting.store(false, Ordering::SeqCst);
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let result = LoadResult {
        bytes: bytes.load(Ordering::SeqCst),
        transactions: trans.load(Ordering::SeqCst),
        secs,
    };
    for t in threads {
        let _ = t.join();
    }
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// Runs one `load` child and returns its result.
pub fn run_child(o: &LoadOpts) -> Result<(LoadResult, String)> {
    let mut args = vec![
        "load".to_string(),
        "--mode".into(),
        o.mode.clone(),
        "--conns".into(),
        o.conns.to_string(),
    ];
    args.extend([
        "--secs".into(),
        o.secs.to_string(),
        "--msg".into(),
        o.msg.to_string(),
    ]);
    if let Some(ns) = &o.netns {
        args.extend(["--netns".into(), ns.display().to_string()]);
    }
    if o.keepalive {
        args.push("--keepalive".into());
    }
    let out = sys::output(std::process::Command::new(crate::sys::self_exe()?).args(&args))?;
    Ok((
        serde_json::from_str(out.trim())?,
        format!("keepalive-bench {}", args.join(" ")),
    ))
}
