//! Real TCP sockets in the test namespaces, and what the application sees on them.

use crate::topology::in_netns;
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: u32,
    pub intvl: u32,
    pub cnt: u32,
}

impl Keepalive {
    /// Worst-case time from the last received packet to the kernel giving up.
    pub fn deadline_s(self) -> f64 {
        f64::from(self.idle + self.intvl * self.cnt)
    }
}

pub const FAST: Keepalive = Keepalive {
    idle: 1,
    intvl: 1,
    cnt: 3,
};

/// A moment on both clocks: the monotonic one for our own waits, the wall clock to compare with
/// the daemon's RFC 3339 timestamps.
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    pub wall: SystemTime,
    pub mono: Instant,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    pub fn secs_until(self, later: Stamp) -> f64 {
        later
            .mono
            .saturating_duration_since(self.mono)
            .as_secs_f64()
    }
}

pub fn listen(ns: &str, addr: IpAddr) -> Result<TcpListener> {
    in_netns(ns, || {
        TcpListener::bind(SocketAddr::new(addr, 0)).context("bind listener")
    })
}

/// Connects from namespace `ns`. Keepalive is set after the handshake, as most applications do;
/// the kernel re-arms the keepalive timer from each setsockopt, so the idle clock is unaffected.
pub fn connect(ns: &str, dst: SocketAddr, ka: Option<Keepalive>) -> Result<TcpStream> {
    let stream = in_netns(ns, || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(5))
            .with_context(|| format!("connect to {dst}"))
    })?;
    stream.set_nodelay(true)?;
    if let Some(ka) = ka {
        set_keepalive(&stream, ka)?;
    }
    Ok(stream)
}

/// SO_KEEPALIVE on, with `ka`'s idle, interval and count.
pub fn set_keepalive(stream: &TcpStream, ka: Keepalive) -> Result<()> {
    let fd = stream.as_raw_fd();
    setopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    setopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, ka.idle)?;
    setopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, ka.intvl)?;
    setopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, ka.cnt)
}

/// SO_KEEPALIVE off: the kernel deletes the socket's keepalive timer.
pub fn keepalive_off(stream: &TcpStream) -> Result<()> {
    setopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0)
}

fn setopt(fd: i32, level: i32, name: i32, value: u32) -> Result<()> {
    let v = value as libc::c_int;
    // SAFETY: valid fd, pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setsockopt({level}, {name})"));
    }
    Ok(())
}

pub fn accept(listener: &TcpListener, timeout: Duration) -> Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
}

/// One request/response round trip. Returns when the client has read the reply: the last packet
/// the client receives before going idle, i.e. the start of its keepalive idle clock.
pub fn exchange(client: &mut TcpStream, server: &mut TcpStream) -> Result<Stamp> {
    let t = Some(Duration::from_secs(5));
    client.set_read_timeout(t)?;
    server.set_read_timeout(t)?;
    let mut buf = [0u8; 4];
    client.write_all(b"ping")?;
    server.read_exact(&mut buf).context("server read")?;
    server.write_all(b"pong")?;
    client.read_exact(&mut buf).context("client read")?;
    let at = Stamp::now();
    if &buf != b"pong" {
        bail!("unexpected reply {buf:?}");
    }
    Ok(at)
}

/// What the application observed on a socket.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// Nothing happened: the connection looks healthy to the application.
    Quiet,
    /// The kernel reported an error (errno from SO_ERROR).
    Error { errno: i32, at: Stamp },
    /// Readable or hung up without an error: the peer closed, or sent data. Never expected here.
    Other { revents: i16, at: Stamp },
}

impl Outcome {
    pub fn describe(&self, since: Stamp) -> String {
        match self {
            Outcome::Quiet => "no error".to_owned(),
            Outcome::Error { errno, at } => {
                format!("{} after {:.2}s", errno_name(*errno), since.secs_until(*at))
            }
            Outcome::Other { revents, at } => format!(
                "poll revents {revents:#x} after {:.2}s",
                since.secs_until(*at)
            ),
        }
    }
}

/// Polls `socks` until `deadline`, or earlier once every socket listed in `stop_on` (indices)
/// has an outcome. An error is read with SO_ERROR, which is how an idle application learns it.
pub fn watch(socks: &[&TcpStream], deadline: Instant, stop_on: &[usize]) -> Vec<Outcome> {
    let mut out = vec![Outcome::Quiet; socks.len()];
    loop {
        let resolved = |out: &[Outcome]| stop_on.iter().all(|&i| !matches!(out[i], Outcome::Quiet));
        let now = Instant::now();
        if now >= deadline || (!stop_on.is_empty() && resolved(&out)) {
            return out;
        }
        let mut fds: Vec<libc::pollfd> = socks
            .iter()
            .zip(&out)
            .map(|(s, o)| libc::pollfd {
                // A negative fd is skipped by poll(): stop watching sockets already resolved.
                fd: if matches!(o, Outcome::Quiet) {
                    s.as_raw_fd()
                } else {
                    -1
                },
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            })
            .collect();
        let ms = deadline
            .saturating_duration_since(now)
            .as_millis()
            .clamp(1, 1000) as i32;
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n <= 0 {
            continue;
        }
        let at = Stamp::now();
        for (i, fd) in fds.iter().enumerate() {
            if fd.fd < 0 || fd.revents == 0 {
                continue;
            }
            out[i] = match socks[i].take_error() {
                Ok(Some(e)) => Outcome::Error {
                    errno: e.raw_os_error().unwrap_or(0),
                    at,
                },
                _ => Outcome::Other {
                    revents: fd.revents,
                    at,
                },
            };
        }
    }
}

/// TCP state (1 = ESTABLISHED) and keepalive probes currently out, from TCP_INFO. Only the first
/// bytes of struct tcp_info are needed, and their layout has been fixed since 2.6.
pub fn tcp_state(stream: &TcpStream) -> Result<(u8, u8)> {
    let mut buf = [0u8; 8];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buffer and length describe valid writable memory.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("TCP_INFO");
    }
    Ok((buf[0], buf[3]))
}

/// Closes with a RST (SO_LINGER 0) so the socket vanishes at once instead of lingering in
/// FIN_WAIT/TIME_WAIT and keeping the namespace alive after we delete it.
pub fn abort(stream: TcpStream) {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd, pointer to a live linger struct of the given size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        );
    }
    drop(stream);
}

pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EPIPE => "EPIPE",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNABORTED => "ECONNABORTED",
        0 => "none",
        _ => return format!("errno{errno}"),
    };
    name.to_owned()
}
