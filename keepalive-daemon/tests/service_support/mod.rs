//! Helpers of the service tests: the daemon under a NOTIFY_SOCKET, curl, a scratch PKI.
#![allow(dead_code)] // each test file uses its own subset

mod http;
pub use http::dechunk;

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_keepalive-daemon");
pub const UNIT: &str = include_str!("../../../deploy/systemd/keepalive-daemon.service");

/// Capabilities the daemon keeps after attaching (caps::KEPT): DAC_READ_SEARCH, NET_RAW,
/// SYS_PTRACE, SYS_ADMIN.
pub const KEPT: u64 = (1 << 2) | (1 << 13) | (1 << 19) | (1 << 21);

/// Daemons attach host-wide; the leftover checks must not see another test's daemon.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load eBPF programs: run them as root"
    );
    g
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory per test, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("kat-service-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Our programs loaded in the kernel that no process holds.
pub fn leftover_programs() -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut held = Vec::new();
        for proc in fs::read_dir("/proc").into_iter().flatten().flatten() {
            for fd in fs::read_dir(proc.path().join("fdinfo"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(text) = fs::read_to_string(fd.path()) {
                    held.extend(
                        text.lines()
                            .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok()),
                    );
                }
            }
        }
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show"])
            .output()
            .expect("bpftool");
        let progs: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        let left: Vec<u64> = progs
            .iter()
            .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("ka_")))
            .filter_map(|p| p["id"].as_u64())
            .filter(|id| !held.contains(id))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

pub struct Daemon {
    pub child: Child,
    /// The daemon's pid (the child's, unless a tracer runs it).
    pub pid: u32,
    pub port: u16,
    pub log: PathBuf,
    pub notify: UnixDatagram,
    /// Every sd_notify datagram received so far.
    pub notes: Vec<String>,
    pub _dir: Scratch,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn recv_notes(&mut self, until: impl Fn(&str) -> bool, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if self.notes.iter().any(|n| until(n)) {
                return true;
            }
            match self.notify.recv(&mut buf) {
                Ok(n) => self
                    .notes
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_) => {
                    if matches!(self.child.try_wait(), Ok(Some(_))) {
                        return false;
                    }
                }
            }
        }
        self.notes.iter().any(|n| until(n))
    }

    /// SIGTERM, a clean exit, nothing left attached.
    pub fn stop(mut self) -> Vec<String> {
        // SAFETY: signalling our own child (or the tracer's).
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "SIGTERM exit: {status}\n{}", self.log());
        self.recv_notes(|n| n.contains("STOPPING=1"), Duration::from_millis(500));
        assert!(
            leftover_programs().is_empty(),
            "programs left after SIGTERM: {:?}",
            leftover_programs()
        );
        std::mem::take(&mut self.notes)
    }
}

/// Starts the daemon with `args` (plus `--web.listen-address` on a free port unless `args`
/// has one) under a NOTIFY_SOCKET, and waits for READY=1. `wrap` runs it through another
/// program (setpriv), `env` adds variables.
pub fn start_full(args: &[&str], wrap: &[&str], env: &[(&str, &str)]) -> Result<Daemon, String> {
    let dir = Scratch::new(&format!("daemon-{}", free_port()));
    let notify_path = dir.path("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // The socket must be writable by an unprivileged daemon too (setpriv tests).
    fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    fs::set_permissions(
        &notify_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let log = dir.path("stderr");
    let mut port = 0;
    let mut cmd = match wrap.split_first() {
        Some((prog, rest)) => {
            let mut c = Command::new(prog);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.args(args);
    if !args
        .iter()
        .any(|a| a.starts_with("--web.listen-address") || a.starts_with("--config.file"))
    {
        port = free_port();
        cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"));
    }
    let child = cmd
        .env("NOTIFY_SOCKET", &notify_path)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&log).unwrap()))
        .spawn()
        .expect("spawn daemon");
    let pid = child.id();
    let mut d = Daemon {
        child,
        pid,
        port,
        log,
        notify,
        notes: Vec::new(),
        _dir: dir,
    };
    if d.recv_notes(|n| n.contains("READY=1"), Duration::from_secs(60)) {
        if wrap.first() == Some(&"strace") {
            let children =
                fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            d.pid = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .expect("the traced daemon");
        }
        return Ok(d);
    }
    let _ = d.child.kill();
    let _ = d.child.wait();
    Err(format!(
        "daemon did not become ready; notes {:?}; stderr:\n{}",
        d.notes,
        d.log()
    ))
}

pub fn start(args: &[&str]) -> Daemon {
    start_full(args, &[], &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// Plain HTTP GET: status code and body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, dechunk(&raw))
}

/// What curl saw: its exit code, the HTTP status (0 when there was no response), headers and body.
pub struct Curl {
    pub exit: i32,
    pub status: u16,
    pub headers: String,
    pub body: String,
}

pub fn curl(dir: &Scratch, args: &[&str]) -> Curl {
    let (hdr, body) = (dir.path("curl.headers"), dir.path("curl.body"));
    let _ = fs::remove_file(&hdr);
    let _ = fs::remove_file(&body);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D"])
        .arg(&hdr)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl (install curl)");
    Curl {
        exit: out.status.code().unwrap_or(-1),
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: fs::read_to_string(&hdr).unwrap_or_default(),
        body: fs::read_to_string(&body).unwrap_or_default(),
    }
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate it signed, and
/// a self-signed client certificate it did not.
pub fn make_pki(dir: &Scratch) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let d = |n: &str| dir.path(n);
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=kat test CA", "-keyout"])
        .arg(d("ca.key"))
        .arg("-out")
        .arg(d("ca.crt")));
    for (name, cn, ext) in [
        (
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "prometheus",
            "subjectAltName=DNS:prometheus.example\nextendedKeyUsage=clientAuth\n",
        ),
    ] {
        dir.write(&format!("{name}.ext"), ext);
        run(Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-subj", &format!("/CN={cn}"), "-keyout"])
            .arg(d(&format!("{name}.key")))
            .arg("-out")
            .arg(d(&format!("{name}.csr"))));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(d(&format!("{name}.csr")))
            .arg("-CA")
            .arg(d("ca.crt"))
            .arg("-CAkey")
            .arg(d("ca.key"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(d(&format!("{name}.ext")))
            .arg("-out")
            .arg(d(&format!("{name}.crt"))));
    }
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=intruder", "-keyout"])
        .arg(d("rogue.key"))
        .arg("-out")
        .arg(d("rogue.crt")));
}

pub fn caps_of(pid: u32) -> Vec<(u32, u64, u64, u64)> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(status) = fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let set = |f: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(f)?.strip_prefix(':'))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap()
        };
        let tid = t.file_name().to_str().unwrap().parse().unwrap();
        out.push((tid, set("CapEff"), set("CapPrm"), set("CapBnd")));
    }
    out
}
