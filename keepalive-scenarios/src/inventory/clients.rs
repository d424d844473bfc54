//! Clients that set keepalive options themselves: python3 (after connecting), socat and curl
//! (before connecting). Each connects from the client namespace, across the router, to a
//! listener the runner holds in the server namespace.

use super::idle::idle_matches_ss;
use super::obs::Obs;
use super::proc::Proc;
use super::view::{Key, SOCKET, SYSCTL, Want};
use super::{Ctx, runner, settings_events};
use crate::sock;
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const ACCEPT: Duration = Duration::from_secs(5);

/// Sets every option after the handshake, the way most applications do, then holds the
/// connection until its stdin ends.
const PYTHON: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 13)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 6)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 20000)
print("ready", s.getsockname()[1], flush=True)
sys.stdin.read()
"#;

pub fn python(ctx: &mut Ctx) -> Result<()> {
    let obs = ctx.main_obs();
    let listener = ctx.listen()?;
    let dst = listener.local_addr()?;
    let from = ctx.main.received_len();
    let args = [
        "-c".to_owned(),
        PYTHON.to_owned(),
        dst.ip().to_string(),
        dst.port().to_string(),
    ];
    let mut py = Proc::spawn(&ctx.topo.client, &ctx.tool, &args)?;
    let server = sock::accept(&listener, ACCEPT)?;
    let ready = py.wait_line(Duration::from_secs(10), |l| l.starts_with("ready "))?;
    let t0 = Instant::now();
    let port: u16 = ready[6..]
        .trim()
        .parse()
        .with_context(|| format!("python printed {ready:?}"))?;
    let key = Key {
        netns: ctx.ino(&ctx.topo.client)?,
        local: SocketAddr::new(ctx.topo.client_addr(), port),
        peer: dst,
    };
    ctx.check(server.peer_addr()? == key.local, || {
        format!(
            "server accepted {:?}, python says {}",
            server.peer_addr(),
            key.local
        )
    });

    let want = Want::own(13, 6, 4, 20_000).owned_by(py.pid, &py.comm);
    let (found, _) = obs.expect(key, &want, t0)?;
    ctx.record("python", found);
    // SO_KEEPALIVE, then each value: every call changes the effective configuration once,
    // starting from the namespace defaults with keepalive off.
    let events = settings_events(ctx.main, from, key, &want, Some(5));
    ctx.record("python events", events);
    first_settings_from_defaults(ctx, from, key);

    py.close_stdin();
    let exited = py.wait_exit(Duration::from_secs(3))?;
    ctx.check(exited.is_some_and(|s| s.success()), || {
        format!("python did not end cleanly: {exited:?} {}", py.output())
    });
    sock::abort(server);
    let closed = Instant::now();
    let server_key = Key {
        netns: ctx.ino(&ctx.topo.server)?,
        local: dst,
        peer: key.local,
    };
    ctx.gone("python close", &obs, &[key, server_key], closed)?;
    Ok(())
}

/// The first `settings` event of a socket that started with nothing set must name the
/// namespace defaults with keepalive off as `previous`.
fn first_settings_from_defaults(ctx: &mut Ctx, from: usize, key: Key) {
    let first = ctx
        .main
        .received(from..ctx.main.received_len())
        .into_iter()
        .filter_map(|r| r.event.ok())
        .find(|e| e.event == "settings" && key.is_event(e));
    let want = Want::inherited("ESTABLISHED", false).cfg();
    if let Some(e) = first {
        ctx.check(e.previous.as_ref() == Some(&want), || {
            format!(
                "first settings event: previous {:?}, expected {want:?}",
                e.previous
            )
        });
    }
}

/// `socat -u TCP:<dst>,<opts> STDOUT`: one-way from the connection to stdout, so socat runs
/// until the connection ends, whatever its stdin does.
pub fn socat_client(ctx: &Ctx, ns: &str, dst: SocketAddr, opts: &str) -> Result<Proc> {
    let v = if dst.is_ipv4() { 4 } else { 6 };
    let opts = if opts.is_empty() {
        String::new()
    } else {
        format!(",{opts}")
    };
    let args = [
        "-u".to_owned(),
        format!("TCP{v}:{dst}{opts}"),
        "STDOUT".to_owned(),
    ];
    Proc::spawn(ns, &ctx.tool, &args)
}

/// A socat client connected to `listener` and the server side the runner accepted; the key
/// is the client's socket.
pub fn socat_connected(
    ctx: &Ctx,
    listener: &std::net::TcpListener,
    opts: &str,
) -> Result<(Proc, TcpStream, Key)> {
    let dst = listener.local_addr()?;
    let mut p = socat_client(ctx, &ctx.topo.client, dst, opts)?;
    let server = sock::accept(listener, ACCEPT)
        .map_err(|e| anyhow::anyhow!("{e:#}; socat: {}", p.output()))?;
    p.ensure_running()?;
    let key = Key {
        netns: ctx.ino(&ctx.topo.client)?,
        local: server.peer_addr()?,
        peer: dst,
    };
    Ok((p, server, key))
}

pub fn socat(ctx: &mut Ctx) -> Result<()> {
    let obs = ctx.main_obs();
    let listener = ctx.listen()?;
    let from = ctx.main.received_len();
    let (mut p, server, key) = socat_connected(
        ctx,
        &listener,
        "keepalive,keepidle=11,keepintvl=4,keepcnt=5",
    )?;
    let t0 = Instant::now();
    let want = Want::own(11, 4, 5, 0).owned_by(p.pid, &p.comm);
    let (found, _) = obs.expect(key, &want, t0)?;
    ctx.record("socat", found);
    // socat sets its options before connecting, when the socket is not inventoried yet: it
    // enters the inventory with them, and no one could have seen a configuration change.
    let events = settings_events(ctx.main, from, key, &want, Some(0));
    ctx.record("socat events", events);

    // The runner's accepted side: nothing set, owned by the runner.
    let (pid, comm) = runner();
    let server_key = Key {
        netns: ctx.ino(&ctx.topo.server)?,
        local: key.peer,
        peer: key.local,
    };
    let server_want = Want::inherited("ESTABLISHED", false).owned_by(pid, &comm);
    let (found, _) = obs.expect(server_key, &server_want, t0)?;
    ctx.record("accepted by runner", found);

    show_table(
        ctx,
        &obs,
        "socat",
        &["--netns", &key.netns.to_string()],
        &[(key, &want)],
    )?;
    json_subcommand(ctx, &obs, key, &want)?;
    // A moment of silence, so the ages compared with ss are not all zero.
    std::thread::sleep(Duration::from_millis(1200));
    let found = idle_matches_ss(ctx, &obs, &ctx.topo.client, key)?;
    ctx.record("socat idle", found);

    p.stop()?;
    sock::abort(server);
    let closed = Instant::now();
    ctx.gone("socat close", &obs, &[key, server_key], closed)?;
    timer_rearms(ctx, &obs)
}

/// `next_probe_ms` must follow the kernel's timer past its first firing: once a probe is
/// answered the kernel re-arms it, so on a live connection it is never stuck at 0. The runner's
/// own connection with idle 1 s, intvl 1 s (set after connecting) makes that quick to see.
fn timer_rearms(ctx: &mut Ctx, obs: &Obs) -> Result<()> {
    let listener = ctx.listen()?;
    let dst = listener.local_addr()?;
    let client = sock::connect(&ctx.topo.client, dst, Some(sock::FAST))?;
    let server = sock::accept(&listener, ACCEPT)?;
    let key = Key {
        netns: ctx.ino(&ctx.topo.client)?,
        local: client.local_addr()?,
        peer: dst,
    };
    // Time must pass here: two and a half idle periods, so the timer has fired and re-armed.
    std::thread::sleep(Duration::from_millis(2500));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let list = obs.sockets(&format!("netns={}", key.netns))?;
        seen.push(key.find(&list).first().map(|v| v.next_probe_ms));
        std::thread::sleep(Duration::from_millis(400));
    }
    let in_range = seen
        .iter()
        .all(|n| matches!(n, Some(Some(ms)) if *ms <= 1100));
    let moving = seen.iter().any(|n| !matches!(n, Some(Some(0))));
    ctx.check(in_range && moving, || format!("idle 1 s socket after 2.5 s: next_probe_ms {seen:?}, expected a timer at most 1 s away that re-arms"));
    drop(client);
    sock::abort(server);
    Ok(())
}

/// Runs `keepalive-daemon sockets <args>`, shows it as a note and checks its rows exactly.
pub fn show_table(
    ctx: &mut Ctx,
    obs: &Obs,
    label: &str,
    args: &[&str],
    rows: &[(Key, &Want)],
) -> Result<()> {
    let table = obs.table(args)?;
    ctx.notes.push(format!(
        "`keepalive-daemon sockets {}`:\n{}",
        args.join(" "),
        table.trim_end()
    ));
    let bad = obs.check_table(&table, rows, true);
    ctx.record(&format!("{label} table"), (bad, vec![]));
    Ok(())
}

/// `sockets --json --port P` must carry the same document as `/sockets`.
fn json_subcommand(ctx: &mut Ctx, obs: &Obs, key: Key, want: &Want) -> Result<()> {
    let port = key.local.port().to_string();
    let text = obs.table(&["--json", "--port", &port])?;
    let list: Vec<super::view::SockView> =
        serde_json::from_str(text.trim()).context("sockets --json")?;
    match key.find(&list)[..] {
        [v] => {
            let bad = want.mismatches(v, obs.budget_s);
            ctx.record("sockets --json", (bad, vec![]));
        }
        _ => ctx.failures.push(format!(
            "sockets --json --port {port}: {key} not listed once"
        )),
    }
    ctx.check(
        list.iter()
            .all(|v| v.sport == key.local.port() || v.dport == key.local.port()),
        || format!("sockets --json --port {port} lists other ports"),
    );
    Ok(())
}

/// curl ≥ 8.9.0 also sets TCP_KEEPCNT (CURLOPT_TCP_KEEPCNT, default 9); older curl leaves
/// the count to the namespace. `curl --version` starts `curl 7.88.1 (…)`.
fn curl_sets_cnt(curl: &std::path::Path) -> Result<bool> {
    let out = std::process::Command::new(curl).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ver = text.split_whitespace().nth(1).context("curl --version")?;
    let mut parts = ver.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (8, 9))
}

pub fn curl(ctx: &mut Ctx) -> Result<()> {
    let obs = ctx.main_obs();
    let listener = ctx.listen()?;
    let dst = listener.local_addr()?;
    let sets_cnt = curl_sets_cnt(&ctx.tool)?;
    let url = format!("http://{dst}/");
    let args = [
        "-sS",
        "-g",
        "-o",
        "/dev/null",
        "--max-time",
        "30",
        "--keepalive-time",
        "17",
        &url,
    ]
    .map(String::from);
    let mut p = Proc::spawn(&ctx.topo.client, &ctx.tool, &args)?;
    let mut server = sock::accept(&listener, ACCEPT)?;
    // The request is in: curl is connected and waits for the answer the runner holds back.
    read_request(&mut server)?;
    let t0 = Instant::now();
    let key = Key {
        netns: ctx.ino(&ctx.topo.client)?,
        local: server.peer_addr()?,
        peer: dst,
    };
    // --keepalive-time sets TCP_KEEPIDLE and TCP_KEEPINTVL both (strace: 17 and 17).
    let mut want = Want::own(17, 17, 9, 0).owned_by(p.pid, &p.comm);
    want.cnt.1 = if sets_cnt { SOCKET } else { SYSCTL };
    ctx.notes
        .push(format!("curl sets TCP_KEEPCNT itself: {sets_cnt}"));
    let from = ctx.main.received_len();
    let (found, _) = obs.expect(key, &want, t0)?;
    ctx.record("curl", found);
    // Like socat, curl sets everything before connecting (CURLOPT_SOCKOPTFUNCTION time).
    let events = settings_events(ctx.main, from, key, &want, Some(0));
    ctx.record("curl events", events);
    let found = idle_matches_ss(ctx, &obs, &ctx.topo.client, key)?;
    ctx.record("curl idle", found);

    server.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let exited = p.wait_exit(Duration::from_secs(5))?;
    ctx.check(exited.is_some_and(|s| s.success()), || {
        format!("curl did not end cleanly: {exited:?} {}", p.output())
    });
    sock::abort(server);
    let closed = Instant::now();
    let server_key = Key {
        netns: ctx.ino(&ctx.topo.server)?,
        local: dst,
        peer: key.local,
    };
    ctx.gone("curl close", &obs, &[key, server_key], closed)?;
    Ok(())
}

fn read_request(s: &mut TcpStream) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).context("reading curl's request")?;
        if n == 0 {
            bail!(
                "curl closed before sending a request: {:?}",
                String::from_utf8_lossy(&req)
            );
        }
        req.extend_from_slice(&buf[..n]);
    }
    Ok(())
}
