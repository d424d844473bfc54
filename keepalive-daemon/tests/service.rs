//! The daemon as a service: config file and flags, `--config.check`, TLS and basic auth through
//! real curl, capabilities after attaching, sd_notify, journald lines, and promtool on a live
//! scrape. Needs root (the daemon loads eBPF programs), openssl, curl and promtool; the tests
//! say so and fail without them rather than passing vacuously.
use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::{fs::MetadataExt as _, net::UnixDatagram},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_keepalive-daemon");
const UNIT: &str = include_str!("../../deploy/systemd/keepalive-daemon.service");

/// Capabilities the daemon keeps after attaching (caps::KEPT): DAC_READ_SEARCH, NET_RAW,
/// SYS_PTRACE, SYS_ADMIN.
const KEPT: u64 = (1 << 2) | (1 << 13) | (1 << 19) | (1 << 21);

/// Daemons attach host-wide; the leftover checks must not see another test's daemon.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests load eBPF programs: run them as root");
    g
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A scratch directory per test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("kat-service-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
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

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Our programs loaded in the kernel that no process holds.
fn leftover_programs() -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut held = Vec::new();
        for proc in fs::read_dir("/proc").into_iter().flatten().flatten() {
            for fd in fs::read_dir(proc.path().join("fdinfo")).into_iter().flatten().flatten() {
                if let Ok(text) = fs::read_to_string(fd.path()) {
                    held.extend(text.lines().filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok()));
                }
            }
        }
        let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().expect("bpftool");
        let progs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
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

struct Daemon {
    child: Child,
    /// The daemon's pid (the child's, unless a tracer runs it).
    pid: u32,
    port: u16,
    log: PathBuf,
    notify: UnixDatagram,
    /// Every sd_notify datagram received so far.
    notes: Vec<String>,
    _dir: Scratch,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn recv_notes(&mut self, until: impl Fn(&str) -> bool, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if self.notes.iter().any(|n| until(n)) {
                return true;
            }
            match self.notify.recv(&mut buf) {
                Ok(n) => self.notes.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
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
    fn stop(mut self) -> Vec<String> {
        // SAFETY: signalling our own child (or the tracer's).
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "SIGTERM exit: {status}\n{}", self.log());
        self.recv_notes(|n| n.contains("STOPPING=1"), Duration::from_millis(500));
        assert!(leftover_programs().is_empty(), "programs left after SIGTERM: {:?}", leftover_programs());
        std::mem::take(&mut self.notes)
    }
}

/// Starts the daemon with `args` (plus `--web.listen-address` on a free port unless `args`
/// has one) under a NOTIFY_SOCKET, and waits for READY=1. `wrap` runs it through another
/// program (setpriv), `env` adds variables.
fn start_full(args: &[&str], wrap: &[&str], env: &[(&str, &str)]) -> Result<Daemon, String> {
    let dir = Scratch::new(&format!("daemon-{}", free_port()));
    let notify_path = dir.path("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    // The socket must be writable by an unprivileged daemon too (setpriv tests).
    fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    fs::set_permissions(&notify_path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
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
    if !args.iter().any(|a| a.starts_with("--web.listen-address") || a.starts_with("--config.file")) {
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
    let mut d = Daemon { child, pid, port, log, notify, notes: Vec::new(), _dir: dir };
    if d.recv_notes(|n| n.contains("READY=1"), Duration::from_secs(60)) {
        if wrap.first() == Some(&"strace") {
            let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            d.pid = children.split_whitespace().next().and_then(|p| p.parse().ok()).expect("the traced daemon");
        }
        return Ok(d);
    }
    let _ = d.child.kill();
    let _ = d.child.wait();
    Err(format!("daemon did not become ready; notes {:?}; stderr:\n{}", d.notes, d.log()))
}

fn start(args: &[&str]) -> Daemon {
    start_full(args, &[], &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// Plain HTTP GET: status code and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let code = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// What curl saw: its exit code, the HTTP status (0 when there was no response), headers and body.
struct Curl {
    exit: i32,
    status: u16,
    headers: String,
    body: String,
}

fn curl(dir: &Scratch, args: &[&str]) -> Curl {
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
        status: String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0),
        headers: fs::read_to_string(&hdr).unwrap_or_default(),
        body: fs::read_to_string(&body).unwrap_or_default(),
    }
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate it signed, and
/// a self-signed client certificate it did not.
fn make_pki(dir: &Scratch) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let d = |n: &str| dir.path(n);
    run(Command::new("openssl").args(["req", "-x509"]).args(ec).args(["-days", "2", "-subj", "/CN=kat test CA", "-keyout"]).arg(d("ca.key")).arg("-out").arg(d("ca.crt")));
    for (name, cn, ext) in [
        ("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "prometheus", "subjectAltName=DNS:prometheus.example\nextendedKeyUsage=clientAuth\n"),
    ] {
        dir.write(&format!("{name}.ext"), ext);
        run(Command::new("openssl").arg("req").args(ec).args(["-subj", &format!("/CN={cn}"), "-keyout"]).arg(d(&format!("{name}.key"))).arg("-out").arg(d(&format!("{name}.csr"))));
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
    run(Command::new("openssl").args(["req", "-x509"]).args(ec).args(["-days", "2", "-subj", "/CN=intruder", "-keyout"]).arg(d("rogue.key")).arg("-out").arg(d("rogue.crt")));
}

fn caps_of(pid: u32) -> Vec<(u32, u64, u64, u64)> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(status) = fs::read_to_string(t.path().join("status")) else { continue };
        let set = |f: &str| {
            status.lines().find_map(|l| l.strip_prefix(f)?.strip_prefix(':')).map(|v| u64::from_str_radix(v.trim(), 16).unwrap()).unwrap()
        };
        let tid = t.file_name().to_str().unwrap().parse().unwrap();
        out.push((tid, set("CapEff"), set("CapPrm"), set("CapBnd")));
    }
    out
}

#[test]
fn promtool_accepts_a_live_scrape() {
    let _g = serial();
    let d = start(&[]);
    let (code, page) = http_get(d.port, "/metrics");
    assert_eq!(code, 200);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{page}");
    d.stop();
}

#[test]
fn capabilities_are_dropped_in_every_thread_after_attaching() {
    let _g = serial();
    let d = start(&[]);
    let tasks = caps_of(d.pid());
    assert!(tasks.len() > 1, "expected the runtime's threads: {tasks:?}");
    for (tid, eff, prm, bnd) in &tasks {
        assert_eq!(*eff, KEPT, "thread {tid}: CapEff {eff:#x}");
        assert_eq!(*prm, KEPT, "thread {tid}: CapPrm {prm:#x}");
        assert_eq!(*bnd, KEPT, "thread {tid}: CapBnd {bnd:#x}");
    }
    assert!(d.log().contains("capabilities kept: CAP_DAC_READ_SEARCH CAP_NET_RAW CAP_SYS_PTRACE CAP_SYS_ADMIN"), "{}", d.log());
    // Still serving, and scraping (which reads a BPF map) still works without CAP_BPF.
    let (code, page) = http_get(d.port, "/metrics");
    assert_eq!(code, 200);
    assert!(page.contains("keepalive_events_lost_total{stage=\"kernel\"} 0"), "{page}");
    d.stop();
}

/// The unit's capability set is enough: run as `nobody` with exactly AmbientCapabilities=, as
/// systemd would (DynamicUser= gives a uid of its own the same way). After the drop the daemon
/// still names the owner of a socket a root process opens later (CAP_SYS_PTRACE and
/// CAP_DAC_READ_SEARCH kept).
#[test]
fn the_units_capabilities_suffice_for_an_unprivileged_user() {
    let _g = serial();
    let ambient: Vec<String> = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("unit has AmbientCapabilities=")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding: Vec<String> = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("unit has CapabilityBoundingSet=")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert_eq!(ambient, bounding, "AmbientCapabilities= and CapabilityBoundingSet= differ");
    let caps = ambient.join(",");
    // ProtectProc=invisible: a /proc where only ptrace-able processes show.
    let wrap = [
        "unshare",
        "--mount",
        "--propagation=private",
        "sh",
        "-c",
        "mount -t proc -o hidepid=invisible proc /proc && exec \"$0\" \"$@\"",
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps=-all,{caps}"),
        &format!("--ambient-caps=-all,{caps}"),
        &format!("--bounding-set=-all,{caps}"),
        "--no-new-privs",
    ];
    let d = start_full(&["--log.level=debug"], &wrap, &[]).unwrap_or_else(|e| panic!("with the unit's capabilities as nobody: {e}"));
    let status = fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.contains("65534")), "{status}");
    for (tid, eff, prm, _) in caps_of(d.pid()) {
        assert_eq!(eff, KEPT, "thread {tid}: CapEff {eff:#x}");
        assert_eq!(prm, KEPT, "thread {tid}: CapPrm {prm:#x}");
    }
    // A keepalive socket of this (root) process, opened after the drop.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let on: libc::c_int = 1;
    // SAFETY: valid fd and option value.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&client),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of_val(&on) as u32,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        let (_, body) = http_get(d.port, &format!("/sockets?port={port}"));
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        if list.iter().any(|s| s["pid"].as_u64() == Some(u64::from(std::process::id())) && s["keepalive"] == true) {
            break;
        }
        last = body;
        thread::sleep(Duration::from_millis(250));
    }
    let (_, body) = http_get(d.port, &format!("/sockets?port={port}"));
    assert!(body.contains(&format!("\"pid\":{}", std::process::id())), "owner not named as nobody after the drop: {body} (earlier: {last})\n{}", d.log());
    drop(client);
    d.stop();
}

#[test]
fn sd_notify_ready_status_and_stopping() {
    let _g = serial();
    let d = start(&[]);
    let ready = d.notes.iter().find(|n| n.contains("READY=1")).unwrap().clone();
    assert!(ready.contains(&format!("STATUS=serving on http://127.0.0.1:{}; hooks keepalive_timer=", d.port)), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", d.pid())), "{ready}");
    assert!(d.notes[0].starts_with("STATUS="), "a STATUS= line before READY: {:?}", d.notes);
    let notes = d.stop();
    assert!(notes.iter().any(|n| n.starts_with("STOPPING=1")), "{notes:?}");
}

/// Under systemd stderr is the journal: a priority prefix, no timestamp of our own.
#[test]
fn journal_lines_carry_priority_and_no_timestamp() {
    let _g = serial();
    // JOURNAL_STREAM must name stderr's device and inode; start_full's stderr is a file made
    // before the spawn, so make the same file first and stat it.
    let probe = Scratch::new("journal");
    let port = free_port();
    let log = probe.path("stderr");
    let file = fs::File::create(&log).unwrap();
    let md = file.metadata().unwrap();
    let child = Command::new(BIN)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .env("JOURNAL_STREAM", format!("{}:{}", md.dev(), md.ino()))
        .stderr(Stdio::from(file))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !fs::read_to_string(&log).unwrap().contains("attached; serving") {
        thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = fs::read_to_string(&log).unwrap();
    let first = text.lines().next().unwrap_or("");
    assert!(first.starts_with("<6>level=info msg="), "{text}");
    assert!(!text.contains("ts="), "{text}");
    assert!(text.lines().all(|l| l.starts_with('<')), "{text}");
    assert!(leftover_programs().is_empty());
}

#[test]
fn config_file_keys_and_flags_over_them() {
    let _g = serial();
    let dir = Scratch::new("precedence");
    let (file_port, flag_port) = (free_port(), free_port());
    let config = dir.write(
        "config.toml",
        &format!("[web]\nlisten-address = \"127.0.0.1:{file_port}\"\ntelemetry-path = \"/m\"\n[log]\nformat = \"json\"\nlevel = \"debug\"\n"),
    );
    let config = config.to_str().unwrap();

    // The file alone.
    let mut d = start_full(&["--config.file", config], &[], &[]).unwrap();
    d.port = file_port;
    let (code, page) = http_get(file_port, "/m");
    assert_eq!(code, 200);
    assert!(page.contains("keepalive_build_info"));
    let lines: Vec<serde_json::Value> =
        d.log().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(lines.iter().any(|v| v["level"] == "debug"), "log.level from the file: {lines:?}");
    d.stop();

    // Flags win: another port, logfmt, the default level.
    let d = start_full(
        &["--config.file", config, &format!("--web.listen-address=127.0.0.1:{flag_port}"), "--log.format=logfmt", "--log.level=info"],
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(http_get(flag_port, "/m").0, 200, "telemetry path still from the file");
    assert!(TcpStream::connect(("127.0.0.1", file_port)).is_err(), "the file's address must not be used");
    let log = d.log();
    assert!(log.lines().next().unwrap_or("").starts_with("ts="), "{log}");
    assert!(!log.contains("level=debug"), "{log}");
    d.stop();

    // A bad key: one line, exit 2, nothing attached.
    let bad = dir.write("bad.toml", "[web]\nlisten-adress = \"127.0.0.1:1\"\n");
    let out = Command::new(BIN).arg("--config.file").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad.toml:2:1: unknown field `listen-adress`"), "{err}");
    assert!(leftover_programs().is_empty());
}

#[test]
fn config_check_passes_a_good_setup_and_names_each_problem() {
    let _g = serial();
    let dir = Scratch::new("check");
    make_pki(&dir);
    let hash = bcrypt::hash("secret", 4).unwrap();
    let web = dir.write(
        "web.yml",
        &format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: '{hash}'\n"),
    );
    let good = dir.write("good.toml", &format!("hook-mode = \"tracepoint\"\n[web]\nconfig-file = \"{}\"\n", web.display()));
    let out = Command::new(BIN).arg("--config.file").arg(&good).arg("--config.check").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok: web config") && stdout.contains("TLS, basic auth (1 user)"), "{stdout}");
    assert!(stdout.contains("ok: hook mode tracepoint: available"), "{stdout}");
    assert!(stdout.lines().last().unwrap().starts_with("config check passed"), "{stdout}");
    assert!(leftover_programs().is_empty(), "--config.check attached something");

    // Several problems at once: each on its own line, exit code of the first (2: config).
    let broken_web = dir.write("broken.yml", "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n");
    let out = Command::new(BIN)
        .args(["--config.check", "--btf.path=/nonexistent/vmlinux", "--web.config.file"])
        .arg(&broken_web)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let problems: Vec<&str> = stderr.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert_eq!(problems.len(), 2, "{stderr}");
    assert!(problems[0].contains("broken.yml") && problems[0].contains("missing.crt"), "{stderr}");
    assert!(problems[1].contains("/nonexistent/vmlinux"), "{stderr}");
    assert!(stderr.lines().last().unwrap().contains("2 problems"), "{stderr}");

    // The daemon itself refuses the broken web config before attaching, with exit 2.
    let out = Command::new(BIN).arg("--web.config.file").arg(&broken_web).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(leftover_programs().is_empty());
}

#[test]
fn tls_and_basic_auth_through_curl() {
    let _g = serial();
    let dir = Scratch::new("tls");
    make_pki(&dir);
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let web = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  alice: '{hash}'\n"
        ),
    );
    let d = start(&["--web.config.file", web.to_str().unwrap()]);
    assert!(d.log().contains(&format!("serving on https://127.0.0.1:{}", d.port)), "{}", d.log());
    let base = format!("https://127.0.0.1:{}", d.port);
    let ca = dir.path("ca.crt");
    let ca = ca.to_str().unwrap();

    for path in ["/metrics", "/healthz", "/", "/sockets"] {
        let url = format!("{base}{path}");
        let ok = curl(&dir, &["--cacert", ca, "-u", "alice:s3cret", &url]);
        assert_eq!((ok.exit, ok.status), (0, 200), "{path} with the right password: {}", ok.body);
        assert!(ok.headers.to_lowercase().contains("x-content-type-options: nosniff"), "{}", ok.headers);
        let wrong = curl(&dir, &["--cacert", ca, "-u", "alice:guess", &url]);
        assert_eq!(wrong.status, 401, "{path} with a wrong password");
        assert!(wrong.headers.contains("www-authenticate: Basic") || wrong.headers.contains("WWW-Authenticate: Basic"), "{}", wrong.headers);
        let unknown = curl(&dir, &["--cacert", ca, "-u", "mallory:s3cret", &url]);
        assert_eq!(unknown.status, 401, "{path} with an unknown user");
        let none = curl(&dir, &["--cacert", ca, &url]);
        assert_eq!(none.status, 401, "{path} without credentials");
        assert!(!none.body.contains("keepalive"), "{}", none.body);
    }
    let page = curl(&dir, &["--cacert", ca, "-u", "alice:s3cret", &format!("{base}/metrics")]);
    assert!(page.body.contains("keepalive_build_info"), "{}", page.body);
    // /events streams: the status line is enough (curl's time-out ends it).
    let ev = curl(&dir, &["--cacert", ca, "-u", "alice:s3cret", "--max-time", "1", &format!("{base}/events")]);
    assert_eq!(ev.status, 200);
    // The certificate is checked by the client: an unknown CA fails, and so does plain HTTP.
    let untrusted = curl(&dir, &["-u", "alice:s3cret", &format!("{base}/metrics")]);
    assert_eq!(untrusted.exit, 60, "curl must refuse a certificate from an unknown CA");
    let plain = curl(&dir, &["-u", "alice:s3cret", &format!("http://127.0.0.1:{}/metrics", d.port)]);
    assert_ne!(plain.status, 200, "plain HTTP on the TLS port");
    // The name in the certificate matches.
    let named = curl(&dir, &["--cacert", ca, "-u", "alice:s3cret", "--resolve", &format!("localhost:{}:127.0.0.1", d.port), &format!("https://localhost:{}/healthz", d.port)]);
    assert_eq!((named.exit, named.status, named.body.as_str()), (0, 200, "ok\n"));
    d.stop();
}

#[test]
fn client_certificate_required_when_configured() {
    let _g = serial();
    let dir = Scratch::new("mtls");
    make_pki(&dir);
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
    );
    let d = start(&["--web.config.file", web.to_str().unwrap()]);
    let url = format!("https://127.0.0.1:{}/metrics", d.port);
    let p = |n: &str| dir.path(n).to_str().unwrap().to_string();
    let (ca, cert, key, rogue, rogue_key) = (p("ca.crt"), p("client.crt"), p("client.key"), p("rogue.crt"), p("rogue.key"));

    let with = curl(&dir, &["--cacert", &ca, "--cert", &cert, "--key", &key, &url]);
    assert_eq!((with.exit, with.status), (0, 200), "client certificate from the CA");
    assert!(with.body.contains("keepalive_build_info"));
    let without = curl(&dir, &["--cacert", &ca, &url]);
    assert_ne!(without.exit, 0, "no client certificate must fail the handshake");
    assert_eq!(without.status, 0);
    let foreign = curl(&dir, &["--cacert", &ca, "--cert", &rogue, "--key", &rogue_key, &url]);
    assert_ne!(foreign.exit, 0, "a certificate the CA did not sign must fail");
    assert_eq!(foreign.status, 0);
    d.stop();

    // client_allowed_sans narrows it to certificates that name an allowed SAN.
    let web = dir.write(
        "web-sans.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: [grafana.example]\n",
    );
    let d = start(&["--web.config.file", web.to_str().unwrap()]);
    let url = format!("https://127.0.0.1:{}/metrics", d.port);
    let refused = curl(&dir, &["--cacert", &ca, "--cert", &cert, "--key", &key, &url]);
    assert_ne!(refused.exit, 0, "prometheus.example is not in client_allowed_sans");
    d.stop();
}

/// A new certificate or user applies without a restart, as with exporter-toolkit.
#[test]
fn web_config_changes_apply_without_restart() {
    let _g = serial();
    let dir = Scratch::new("reload");
    make_pki(&dir);
    let alice = bcrypt::hash("one", 4).unwrap();
    let web = dir.write("web.yml", &format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: '{alice}'\n"));
    let d = start(&["--web.config.file", web.to_str().unwrap()]);
    let url = format!("https://127.0.0.1:{}/healthz", d.port);
    let ca = dir.path("ca.crt");
    let ca = ca.to_str().unwrap();
    assert_eq!(curl(&dir, &["--cacert", ca, "-u", "bob:two", &url]).status, 401);
    let bob = bcrypt::hash("two", 4).unwrap();
    thread::sleep(Duration::from_millis(20));
    fs::write(&web, format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: '{alice}'\n  bob: '{bob}'\n")).unwrap();
    assert_eq!(curl(&dir, &["--cacert", ca, "-u", "bob:two", &url]).status, 200);
    // A broken edit keeps the last good configuration (and says so in the log).
    fs::write(&web, "basic_auth_users: [\n").unwrap();
    assert_eq!(curl(&dir, &["--cacert", ca, "-u", "bob:two", &url]).status, 200);
    assert!(d.log().contains("keeping the previous web configuration"), "{}", d.log());
    d.stop();
}

#[test]
fn help_version_and_bad_flags() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--web.listen-address", "--web.telemetry-path", "--web.config.file", "--log.level", "--log.format", "--config.file", "--config.check"] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("keepalive-daemon {}", env!("CARGO_PKG_VERSION")));
    for (args, want) in [
        (&["--log.format", "xml"][..], "possible values: logfmt, json"),
        (&["--web.listen-adress=1"][..], "did you mean '--web.listen-address'"),
        (&["--config.file", "/nonexistent.toml"][..], "/nonexistent.toml"),
        (&["--web.telemetry-path", "/events"][..], "is taken by another endpoint"),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("");
        assert!(first.starts_with("keepalive-daemon: ") && first.contains(want), "{args:?}: {err}");
    }
}

/// Every syscall name in an strace -f log.
fn traced_syscalls(log: &str) -> std::collections::BTreeSet<String> {
    log.lines()
        .filter_map(|l| {
            let rest = l.trim_start().split_once(char::is_whitespace).map_or(l, |(_, r)| r).trim_start();
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            (!name.is_empty() && rest[name.len()..].starts_with('(')).then_some(name)
        })
        .collect()
}

/// The unit's SystemCallFilter= lines, expanded with systemd's own group lists.
fn unit_allowed_syscalls() -> std::collections::BTreeSet<String> {
    use std::collections::{BTreeMap, BTreeSet};
    let out = run(Command::new("systemd-analyze").arg("syscall-filter"));
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(g) = line.strip_prefix('@') {
            current = format!("@{}", g.trim());
        } else if line.starts_with("    ") && !line.trim_start().starts_with('#') && !current.is_empty() {
            groups.entry(current.clone()).or_default().push(line.trim().to_string());
        }
    }
    fn expand(item: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
        match groups.get(item) {
            Some(members) => members.iter().for_each(|m| expand(m, groups, out)),
            None => {
                out.insert(item.to_string());
            }
        }
    }
    let mut allowed = BTreeSet::new();
    // Always permitted by systemd, whatever the filter says.
    expand("@default", &groups, &mut allowed);
    for line in UNIT.lines().filter_map(|l| l.strip_prefix("SystemCallFilter=")) {
        match line.strip_prefix('~') {
            Some(deny) => {
                let mut d = BTreeSet::new();
                deny.split_whitespace().for_each(|i| expand(i, &groups, &mut d));
                allowed.retain(|s| !d.contains(s));
            }
            None => line.split_whitespace().for_each(|i| expand(i, &groups, &mut allowed)),
        }
    }
    allowed
}

/// systemd-analyze cannot see what the daemon calls: run it under strace through its paths
/// (attach, TLS and basic auth, /metrics, /sockets, /events, namespace polls, capability drop,
/// SIGTERM) and check each system call against the unit's SystemCallFilter=.
#[test]
fn the_units_syscall_filter_allows_every_syscall_the_daemon_makes() {
    let _g = serial();
    let dir = Scratch::new("strace");
    make_pki(&dir);
    let hash = bcrypt::hash("pw", 4).unwrap();
    let web = dir.write("web.yml", &format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  u: '{hash}'\n"));
    let trace = dir.path("strace.log");
    let wrap = ["strace", "-f", "-qq", "-o", trace.to_str().unwrap(), "--"];
    let d = start_full(&["--web.config.file", web.to_str().unwrap(), "--json"], &wrap, &[]).unwrap_or_else(|e| panic!("{e}"));
    let ca = dir.path("ca.crt");
    for path in ["/metrics", "/sockets", "/healthz"] {
        let c = curl(&dir, &["--cacert", ca.to_str().unwrap(), "-u", "u:pw", &format!("https://127.0.0.1:{}{path}", d.port)]);
        assert_eq!(c.status, 200, "{path}");
    }
    curl(&dir, &["--cacert", ca.to_str().unwrap(), "-u", "u:pw", "--max-time", "1", &format!("https://127.0.0.1:{}/events", d.port)]);
    // ICMP rescans and sysctl polls run every second and half second.
    thread::sleep(Duration::from_secs(2));
    d.stop();
    let used = traced_syscalls(&fs::read_to_string(&trace).unwrap());
    assert!(used.contains("bpf") && used.contains("capset") && used.contains("setns"), "strace saw too little: {used:?}");
    let allowed = unit_allowed_syscalls();
    let denied: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(denied.is_empty(), "the unit's SystemCallFilter= would refuse {denied:?} (the daemon used {used:?})");
}

/// Metric names in a PromQL expression: identifiers outside string literals that name our
/// metrics (keepalive_*) or Prometheus's own `up`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_str = false;
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_str = !in_str;
            word.clear();
            continue;
        }
        if in_str {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if (word.starts_with("keepalive_") || word == "up") && c != '(' {
                out.push(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    out
}

fn json_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => json_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

/// The Grafana dashboard and the alerting rules query only metrics a live daemon exports.
#[test]
fn dashboard_and_rules_query_only_metrics_the_daemon_exports() {
    let _g = serial();
    let d = start(&[]);
    let (_, page) = http_get(d.port, "/metrics");
    d.stop();
    let exported: std::collections::BTreeSet<&str> =
        page.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();

    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana/keepalive-dashboard.json")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    json_exprs(&dashboard, &mut exprs);
    let rules: serde_json::Value =
        serde_yaml_ng::from_str(include_str!("../../deploy/prometheus/keepalive-rules.yml")).expect("rules YAML");
    let rule_exprs: Vec<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter().map(|r| r["expr"].as_str().unwrap().to_string()))
        .collect();
    assert!(exprs.len() > 20 && rule_exprs.len() > 5, "too few expressions found: {exprs:?} {rule_exprs:?}");
    let mut checked = std::collections::BTreeSet::new();
    for (source, expr) in exprs.iter().map(|e| ("dashboard", e)).chain(rule_exprs.iter().map(|e| ("rules", e))) {
        for name in metric_names(expr) {
            if name != "up" {
                assert!(exported.contains(name.as_str()), "{source} queries {name}, which the daemon does not export: {expr}");
            }
            checked.insert(name);
        }
    }
    // Every metric family the daemon exports is on the dashboard.
    for family in page.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()) {
        assert!(
            checked.iter().any(|c| c == family || c.strip_prefix(family).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
            "the dashboard shows nothing of {family}"
        );
    }
}
