//! Network namespaces and keepalive traffic for the fault tests: everything stays on the
//! loopback of a namespace the test creates and deletes.
#![allow(dead_code)]

use std::{
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    process::Command,
    thread,
    time::{Duration, Instant},
};

pub struct Netns {
    pub name: String,
    pub inode: u64,
}

fn run(cmd: &[&str]) {
    let st = Command::new(cmd[0]).args(&cmd[1..]).status().expect(cmd[0]);
    assert!(st.success(), "{cmd:?} failed: {st}");
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("katf{}-{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        let inode = std::fs::metadata(format!("/run/netns/{name}"))
            .expect("netns")
            .ino();
        Netns { name, inode }
    }

    /// Runs `f` on a thread inside the namespace; sockets it creates stay there.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let ns = File::open(path).expect("open netns");
            // SAFETY: valid fd; changes only this thread.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
            f()
        })
        .join()
        .expect("netns thread")
    }

    pub fn nstat(&self, counter: &str) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nstat", "-asz", counter])
            .output()
            .expect("nstat");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next()? == counter).then(|| it.next()?.parse().ok())?
            })
            .unwrap_or(0)
    }

    pub fn nft(&self, rules: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success(), "nft rules: {rules}");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn set_keepalive(s: &TcpStream, idle: i32, intvl: i32, cnt: i32) {
    let fd = s.as_raw_fd();
    for (level, opt, v) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, intvl),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, cnt),
    ] {
        // SAFETY: valid fd and option buffer.
        let rc = unsafe { libc::setsockopt(fd, level, opt, (&v as *const i32).cast(), 4) };
        assert_eq!(rc, 0, "setsockopt {opt}");
    }
}

/// Many connections on the namespace's loopback whose keepalive probes are all answered.
pub struct Storm {
    _conns: Vec<(TcpStream, TcpStream)>,
}

impl Storm {
    pub fn open(ns: &Netns, n: usize, idle: i32) -> Storm {
        let conns = ns.within(move || {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            (0..n)
                .map(|i| {
                    // Spread the keepalive timers over time, as real traffic would.
                    if i % 8 == 7 {
                        thread::sleep(Duration::from_millis(2));
                    }
                    let c = TcpStream::connect(addr).unwrap();
                    set_keepalive(&c, idle, idle, 3);
                    (c, l.accept().unwrap().0)
                })
                .collect()
        });
        Storm { _conns: conns }
    }
}

/// One connection whose peer stops answering right after the handshake: the namespace drops
/// every packet to the server port, so keepalive runs its full course to ETIMEDOUT.
pub struct SilentPeer {
    client: TcpStream,
    _server: TcpStream,
}

pub fn silent_peer(ns: &Netns, idle: i32, intvl: i32, cnt: i32) -> SilentPeer {
    let (client, server, addr): (TcpStream, TcpStream, SocketAddr) = ns.within(move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = TcpStream::connect(addr).unwrap();
        let s = l.accept().unwrap().0;
        set_keepalive(&c, idle, intvl, cnt);
        (c, s, addr)
    });
    ns.nft(&format!(
        "table inet katf {{\n chain out {{\n  type filter hook output priority 0;\n  tcp dport {} drop\n }}\n}}\n",
        addr.port()
    ));
    SilentPeer {
        client,
        _server: server,
    }
}

impl SilentPeer {
    /// Waits (up to 60 s) for the socket error the application would see.
    pub fn app_error(&self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(e)) = self.client.take_error() {
                return e.raw_os_error();
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// A `/events` reader that sends its request and never reads, with a tiny receive buffer so
/// the daemon's side backs up quickly.
pub fn stuck_reader(port: u16, path: &str) -> OwnedFd {
    // SAFETY: plain socket(2), owned at once.
    let fd = unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)) };
    let small: i32 = 4096;
    // SAFETY: valid fd and buffers.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const i32).cast(),
            4,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(rc, 0, "connect stuck reader");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0);
    }
    fd
}
