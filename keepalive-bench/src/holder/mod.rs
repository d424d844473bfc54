//! Socket holders: child processes that open loopback connections inside a namespace and keep
//! them until their stdin closes. One process holds at most `PER_PROCESS` connections (two
//! descriptors each) to stay under the 20 000-descriptor hard limit; 100 k sockets take six.
use std::{
    collections::VecDeque,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::sys;

pub const PER_PROCESS: usize = 9_000;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct HoldOpts {
    /// Namespace to open the connections in (a /run/netns path).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Listening port inside the namespace.
    #[arg(long, default_value_t = 20000)]
    pub port: u16,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// SO_KEEPALIVE on both ends; per-socket TCP_KEEPIDLE/KEEPINTVL/KEEPCNT only when given
    /// (otherwise the namespace's sysctls apply).
    #[arg(long)]
    pub keepalive: bool,
    #[arg(long)]
    pub idle: Option<i32>,
    #[arg(long)]
    pub intvl: Option<i32>,
    #[arg(long)]
    pub cnt: Option<i32>,
    /// Connections opened per second (0 = as fast as possible): bursts of socket events beyond
    /// the ring buffer would be counted as losses that no steady state has.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// After opening, replace this many connections per second (close the oldest, open one).
    #[arg(long, default_value_t = 0)]
    pub churn: u32,
    /// Close churned connections with a RST (SO_LINGER 0), so the peer sees tcp_receive_reset.
    #[arg(long)]
    pub rst: bool,
    /// Open the connections in this many fresh namespaces instead (each gets `connections`).
    #[arg(long, default_value_t = 0)]
    pub namespaces: usize,
    /// Listening address (127.0.0.1 by default). A different 127.x.y.z per holder spreads the
    /// local port space, which a million connections to one address would exhaust.
    #[arg(long)]
    pub addr: Option<Ipv4Addr>,
    /// Namespace of the listening (server) end when it is not `netns`: both ends then meet
    /// through whatever joins the two namespaces (the scale bench's router).
    #[arg(long)]
    pub listen_netns: Option<PathBuf>,
    /// TCP_USER_TIMEOUT in milliseconds on both ends.
    #[arg(long)]
    pub user_timeout: Option<i32>,
}

fn setopt(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: valid descriptor and a 4-byte option value.
    unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), 4) };
}

fn keepalive(s: &TcpStream, o: &HoldOpts) {
    let fd = s.as_raw_fd();
    if let Some(ms) = o.user_timeout {
        setopt(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms);
    }
    if !o.keepalive {
        return;
    }
    setopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set_timers(fd, o.idle, o.intvl, o.cnt);
}

/// Per-socket keepalive timers; `None` leaves the namespace's sysctl in force.
fn set_timers(fd: i32, idle: Option<i32>, intvl: Option<i32>, cnt: Option<i32>) {
    for (name, v) in [
        (libc::TCP_KEEPIDLE, idle),
        (libc::TCP_KEEPINTVL, intvl),
        (libc::TCP_KEEPCNT, cnt),
    ] {
        if let Some(v) = v {
            setopt(fd, libc::IPPROTO_TCP, name, v);
        }
    }
}

fn open_pair(l: &TcpListener, addr: SocketAddr, o: &HoldOpts) -> Result<(TcpStream, TcpStream)> {
    let c = TcpStream::connect(addr).context("connect")?;
    keepalive(&c, o);
    let (s, _) = l.accept().context("accept")?;
    keepalive(&s, o);
    Ok((c, s))
}

fn close_pair((c, s): (TcpStream, TcpStream), rst: bool) {
    if rst {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid descriptor and option struct.
        unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as u32,
            )
        };
    }
    drop(c);
    drop(s);
}

/// Brings `lo` up in the calling thread's (fresh) namespace.
fn lo_up() -> Result<()> {
    // SAFETY: plain socket + ioctl on an ifreq we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as i16;
        // `as _`: the request is an unsigned long in glibc, an int in musl (the VM build).
        let r = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr);
        libc::close(fd);
        if r != 0 {
            bail!("SIOCSIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The `hold` subcommand: open, report `ready N`, then hold (and churn) until stdin closes.
pub fn hold(o: HoldOpts) -> Result<()> {
    sys::raise_nofile();
    if let Some(ns) = &o.netns {
        sys::enter_netns(ns)?;
    }
    let pace = (o.rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(o.rate)));
    let start = Instant::now();
    let mut held: VecDeque<(TcpStream, TcpStream)> = VecDeque::new();
    let mut listeners = Vec::new();
    let rounds = o.namespaces.max(1);
    for r in 0..rounds {
        if o.namespaces > 0 {
            // SAFETY: unshare on this (single) thread; sockets keep the namespace alive.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            }
            lo_up()?;
        }
        let l = listen(&o)?;
        let addr = l.local_addr()?;
        for i in 0..o.connections {
            held.push_back(open_pair(&l, addr, &o)?);
            if let Some(p) = pace {
                let due = p * (r * o.connections + i + 1) as u32;
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        listeners.push((l, addr));
    }
    println!("ready {}", held.len());
    std::io::stdout().flush()?;

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Each stdin line is a command for every held socket (`keepalive IDLE INTVL CNT`): a whole
    // population's timers changed at one moment, as a partition or a restart makes them.
    let (tx, commands) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    let (l, addr) = listeners.pop().context("no listener")?;
    let mut churned = 0u64;
    let t0 = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let wait = Duration::from_millis(if o.churn == 0 { 50 } else { 5 });
        if let Ok(cmd) = commands.recv_timeout(wait) {
            command(&cmd, &held)?;
            continue;
        }
        if o.churn == 0 {
            continue;
        }
        let due = (t0.elapsed().as_secs_f64() * f64::from(o.churn)) as u64;
        while churned < due && !stop.load(Ordering::SeqCst) {
            if let Some(old) = held.pop_front() {
                close_pair(old, o.rst);
            }
            held.push_back(open_pair(&l, addr, &o)?);
            churned += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("holder: {churned} connections churned");
    Ok(())
}

/// The listening socket, in `listen_netns` when given (the thread returns to `netns`, or to
/// where it was, for the connecting ends).
fn listen(o: &HoldOpts) -> Result<TcpListener> {
    let at = (o.addr.unwrap_or(Ipv4Addr::LOCALHOST), o.port);
    let Some(ns) = &o.listen_netns else {
        return TcpListener::bind(at).with_context(|| format!("bind {at:?}"));
    };
    let back = o
        .netns
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/thread-self/ns/net"));
    let back_file = std::fs::File::open(&back).with_context(|| back.display().to_string())?;
    sys::enter_netns(ns)?;
    let l = TcpListener::bind(at).with_context(|| format!("bind {at:?} in {}", ns.display()));
    // SAFETY: a valid namespace descriptor opened above.
    if unsafe { libc::setns(back_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns back: {}", std::io::Error::last_os_error());
    }
    l
}

/// One stdin command applied to every held socket, answered with `ok N` on stdout.
fn command(cmd: &str, held: &VecDeque<(TcpStream, TcpStream)>) -> Result<()> {
    let f: Vec<&str> = cmd.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<i32>().ok());
    match f.first() {
        // Only the timers given (`-` keeps one): each setsockopt is an event for the daemon.
        Some(&"keepalive") => {
            for (c, s) in held {
                for fd in [c.as_raw_fd(), s.as_raw_fd()] {
                    set_timers(fd, n(1), n(2), n(3));
                }
            }
        }
        // One byte from the client end: both ends then hear from their peer (the data, its
        // ACK) at the same moment, so their keepalive idle restarts together.
        Some(&"touch") => {
            for (c, _) in held {
                let mut w: &TcpStream = c;
                w.write_all(b"t")?;
            }
        }
        _ => bail!("unknown holder command {cmd:?}"),
    }
    println!("ok {}", held.len());
    std::io::stdout().flush()?;
    Ok(())
}
mod process;
pub use process::{Holder, spawn_many, spawn_parallel};
