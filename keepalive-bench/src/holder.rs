//! Socket holders: child processes that open loopback connections inside a namespace and keep
//! them until their stdin closes. One process holds at most `PER_PROCESS` connections (two
//! descriptors each) to stay under the 20 000-descriptor hard limit; 100 k sockets take six.
use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, Ordering},
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
}

fn setopt(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: valid descriptor and a 4-byte option value.
    unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), 4) };
}

fn keepalive(s: &TcpStream, o: &HoldOpts) {
    if !o.keepalive {
        return;
    }
    let fd = s.as_raw_fd();
    setopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    for (name, v) in [
        (libc::TCP_KEEPIDLE, o.idle),
        (libc::TCP_KEEPINTVL, o.intvl),
        (libc::TCP_KEEPCNT, o.cnt),
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
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, o.port))
            .with_context(|| format!("bind port {}", o.port))?;
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
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        flag.store(true, Ordering::SeqCst);
    });
    let (l, addr) = listeners.pop().context("no listener")?;
    let mut churned = 0u64;
    let t0 = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if o.churn == 0 {
            std::thread::sleep(Duration::from_millis(50));
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

/// A running holder process; killed (stdin closed, then SIGKILL) on drop.
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    pub command: String,
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(20000);

impl Holder {
    pub fn spawn(o: &HoldOpts) -> Result<Self> {
        let exe = crate::sys::self_exe()?;
        let mut args: Vec<String> = vec![
            "hold".into(),
            "--connections".into(),
            o.connections.to_string(),
        ];
        let port = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        args.extend(["--port".into(), port.to_string()]);
        if let Some(ns) = &o.netns {
            args.extend(["--netns".into(), ns.display().to_string()]);
        }
        if o.keepalive {
            args.push("--keepalive".into());
        }
        for (flag, v) in [("--idle", o.idle), ("--intvl", o.intvl), ("--cnt", o.cnt)] {
            if let Some(v) = v {
                args.extend([flag.into(), v.to_string()]);
            }
        }
        for (flag, v) in [("--rate", o.rate), ("--churn", o.churn)] {
            if v > 0 {
                args.extend([flag.into(), v.to_string()]);
            }
        }
        if o.rst {
            args.push("--rst".into());
        }
        if o.namespaces > 0 {
            args.extend(["--namespaces".into(), o.namespaces.to_string()]);
        }
        let command = format!("keepalive-bench {}", args.join(" "));
        let mut child = Command::new(exe)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("holder stdout")?).read_line(&mut line)?;
        if !line.starts_with("ready ") {
            let _ = child.kill();
            bail!("holder failed to start: {command}");
        }
        Ok(Holder {
            child,
            stdin,
            command,
        })
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `connections` connections spread over as many holders as the descriptor limit needs.
pub fn spawn_many(base: &HoldOpts, connections: usize) -> Result<Vec<Holder>> {
    let mut out = Vec::new();
    let mut left = connections;
    while left > 0 {
        let n = left.min(PER_PROCESS);
        out.push(Holder::spawn(&HoldOpts {
            connections: n,
            ..base.clone()
        })?);
        left -= n;
    }
    Ok(out)
}
