//! The daemon as a service: config file and flags, `--config.check`, TLS and basic auth through
//! real curl, sd_notify, journald lines, and promtool on a live scrape (its capabilities are
//! in capabilities.rs). Needs root (the daemon loads eBPF programs), openssl, curl and promtool; the tests
//! say so and fail without them rather than passing vacuously.
use std::{
    fs,
    io::Write as _,
    net::TcpStream,
    os::unix::fs::MetadataExt as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};
mod service_support;

use service_support::*;

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
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{page}"
    );
    d.stop();
}

#[test]
fn sd_notify_ready_status_and_stopping() {
    let _g = serial();
    let d = start(&[]);
    let ready = d
        .notes
        .iter()
        .find(|n| n.contains("READY=1"))
        .unwrap()
        .clone();
    assert!(
        ready.contains(&format!(
            "STATUS=serving on http://127.0.0.1:{}; hooks keepalive_timer=",
            d.port
        )),
        "{ready}"
    );
    assert!(ready.contains(&format!("MAINPID={}", d.pid())), "{ready}");
    assert!(
        d.notes[0].starts_with("STATUS="),
        "a STATUS= line before READY: {:?}",
        d.notes
    );
    let notes = d.stop();
    assert!(
        notes.iter().any(|n| n.starts_with("STOPPING=1")),
        "{notes:?}"
    );
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
    while Instant::now() < deadline
        && !fs::read_to_string(&log)
            .unwrap()
            .contains("attached; serving")
    {
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
    let lines: Vec<serde_json::Value> = d
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|v| v["level"] == "debug"),
        "log.level from the file: {lines:?}"
    );
    d.stop();

    // Flags win: another port, logfmt, the default level.
    let d = start_full(
        &[
            "--config.file",
            config,
            &format!("--web.listen-address=127.0.0.1:{flag_port}"),
            "--log.format=logfmt",
            "--log.level=info",
        ],
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(
        http_get(flag_port, "/m").0,
        200,
        "telemetry path still from the file"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", file_port)).is_err(),
        "the file's address must not be used"
    );
    let log = d.log();
    assert!(log.lines().next().unwrap_or("").starts_with("ts="), "{log}");
    assert!(!log.contains("level=debug"), "{log}");
    d.stop();

    // A bad key: one line, exit 2, nothing attached.
    let bad = dir.write("bad.toml", "[web]\nlisten-adress = \"127.0.0.1:1\"\n");
    let out = Command::new(BIN)
        .arg("--config.file")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.toml:2:1: unknown field `listen-adress`"),
        "{err}"
    );
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
    let good = dir.write(
        "good.toml",
        &format!(
            "hook-mode = \"tracepoint\"\n[web]\nconfig-file = \"{}\"\n",
            web.display()
        ),
    );
    let out = Command::new(BIN)
        .arg("--config.file")
        .arg(&good)
        .arg("--config.check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok: web config") && stdout.contains("TLS, basic auth (1 user)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: hook mode tracepoint: available"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("config check passed"),
        "{stdout}"
    );
    assert!(
        leftover_programs().is_empty(),
        "--config.check attached something"
    );

    // Several problems at once: each on its own line, exit code of the first (2: config).
    let broken_web = dir.write(
        "broken.yml",
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
    );
    let out = Command::new(BIN)
        .args([
            "--config.check",
            "--btf.path=/nonexistent/vmlinux",
            "--web.config.file",
        ])
        .arg(&broken_web)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("problem: "))
        .collect();
    assert_eq!(problems.len(), 2, "{stderr}");
    assert!(
        problems[0].contains("broken.yml") && problems[0].contains("missing.crt"),
        "{stderr}"
    );
    assert!(problems[1].contains("/nonexistent/vmlinux"), "{stderr}");
    assert!(
        stderr.lines().last().unwrap().contains("2 problems"),
        "{stderr}"
    );

    // The daemon itself refuses the broken web config before attaching, with exit 2.
    let out = Command::new(BIN)
        .arg("--web.config.file")
        .arg(&broken_web)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(leftover_programs().is_empty());
}
