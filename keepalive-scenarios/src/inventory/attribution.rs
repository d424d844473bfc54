//! Who is affected: real programs run in real cgroups named the way systemd, docker and the
//! kubelet name theirs, and the daemon must name the service, container and pod — in
//! `/sockets`, in events (deaths reported from the keepalive timer included) and on
//! `/metrics` — for sockets opened while it runs and for sockets a second daemon finds at
//! start.
//!
//! - `redis-server --tcp-keepalive 1` in `system.slice/redis-server.service` (server side):
//!   its accepted sockets inherit the listener's cgroup → `unit`, `role=server`, `port`;
//! - `socat` with keepalive 1/1/3 in `system.slice/docker-<64 hex>.scope` (client side) →
//!   `container`, `role=client`;
//! - a python3 server in `kubepods…-pod<uid>.slice/cri-containerd-<64 hex>.scope` whose
//!   worker thread (named `ka-worker`) sets the options → `pod`, `k8s_namespace` (from a
//!   `/var/log/pods/<ns>_<name>_<uid>` directory), `process=python3`, `thread=ka-worker`.
//!
//! Then the router drops the redis flow: both ends die by keepalive timeout, and the deaths
//! carry the unit and the container.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    Ctx,
    cgroups::{PodLog, Tree},
    proc::Proc,
};
use crate::{http, nft, sock};

const REDIS_PORT: u16 = 6379;

fn hex64(seed: u64) -> String {
    (0..4)
        .map(|i| {
            format!(
                "{:016x}",
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(i * 16)
            )
        })
        .collect()
}

const PYTHON: &str = r#"
import socket, sys, threading
ls = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], 0)); ls.listen()
held = []
def worker():
    # The thread names itself as prctl(PR_SET_NAME) would (no ctypes in the VM's python).
    open("/proc/self/task/%d/comm" % threading.get_native_id(), "w").write("ka-worker")
    c, _ = ls.accept()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 21)
    held.append(c)
    print("accepted", flush=True)
t = threading.Thread(target=worker); t.start()
print("ready", ls.getsockname()[1], flush=True)
t.join()
sys.stdin.read()
"#;

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let Some(tree) = Tree::create(ctx.topo.family.name())? else {
        ctx.notes
            .push("no cgroup2 mount: attribution not testable here".into());
        return Ok(());
    };
    let family = u64::from(ctx.topo.family.name() == "ipv6");
    let seed = u64::from(std::process::id()) << 8 | family;
    let (docker_id, cri_id) = (hex64(seed), hex64(seed ^ 0xabcd));
    let pod_uid = format!("7a1b2c3d-0000-4000-8000-{:012x}", seed & 0xffff_ffff_ffff);
    let (pod_ns, pod_name) = ("kat-attr", format!("web-{}", ctx.topo.family.name()));
    let service = tree.dir("system.slice/redis-server.service")?;
    let docker = tree.dir(&format!("system.slice/docker-{docker_id}.scope"))?;
    let pod_cg = tree.dir(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cri_id}.scope",
        pod_uid.replace('-', "_")
    ))?;
    let pods_dir = PathBuf::from("/var/log/pods");
    fs::create_dir_all(&pods_dir)?;
    let pod_log = PodLog(pods_dir.join(format!("{pod_ns}_{pod_name}_{pod_uid}")));
    fs::create_dir_all(&pod_log.0)?;

    let redis_bin = super::proc::find("redis-server");
    let socat_bin = super::proc::find("socat");
    let (Some(redis_bin), Some(socat_bin)) = (redis_bin, socat_bin) else {
        ctx.notes
            .push("redis-server or socat missing: skipped".into());
        return Ok(());
    };
    let from = ctx.main.received_len();
    let addr = SocketAddr::new(ctx.topo.server_addr(), REDIS_PORT);
    let redis_args = super::redis::server_args(addr, 1);
    let mut redis = Proc::spawn_in(&ctx.topo.server, Some(&service), &redis_bin, &redis_args)?;
    wait_listening(ctx, &mut redis, addr)?;
    let target = match addr {
        SocketAddr::V4(a) => format!("TCP4:{a}"),
        SocketAddr::V6(a) => format!("TCP6:{a}"),
    };
    let socat_args = [
        "-u".to_string(),
        "STDIN".to_string(),
        format!("{target},keepalive,keepidle=1,keepintvl=1,keepcnt=3"),
    ];
    let mut socat = Proc::spawn_in(&ctx.topo.client, Some(&docker), &socat_bin, &socat_args)?;
    let py_args = [
        "-c".to_string(),
        PYTHON.to_string(),
        ctx.topo.server_addr().to_string(),
    ];
    let python = super::proc::find("python3").context("python3 missing")?;
    let mut py = Proc::spawn_in(&ctx.topo.server, Some(&pod_cg), &python, &py_args)?;
    let ready = py.wait_line(Duration::from_secs(10), |l| l.starts_with("ready "))?;
    let py_port: u16 = ready[6..].trim().parse()?;
    let py_addr = SocketAddr::new(ctx.topo.server_addr(), py_port);
    let py_client = sock::connect(&ctx.topo.client, py_addr, None)?;
    py.wait_line(Duration::from_secs(10), |l| l == "accepted")?;

    let short = |id: &str| id[..12].to_string();
    let redis_want = Want {
        what: "redis accepted socket",
        port: REDIS_PORT,
        local_port: true,
        fields: vec![
            ("unit", "redis-server.service".into()),
            ("slice", "system.slice".into()),
            ("role", "server".into()),
            ("process", redis.comm.clone()),
        ],
    };
    let socat_want = Want {
        what: "socat client socket",
        port: REDIS_PORT,
        local_port: false,
        fields: vec![
            ("container", short(&docker_id)),
            ("role", "client".into()),
            ("process", socat.comm.clone()),
        ],
    };
    let py_want = Want {
        what: "python server socket",
        port: py_port,
        local_port: true,
        fields: vec![
            ("pod", pod_name.clone()),
            ("k8s_namespace", pod_ns.into()),
            ("container", short(&cri_id)),
            ("role", "server".into()),
            ("process", py.comm.clone()),
        ],
    };
    let wants = [&redis_want, &socat_want, &py_want];
    for w in wants {
        let f = w.check(ctx.main.addr, Duration::from_secs(5))?;
        ctx.record(w.what, (f, vec![]));
    }
    // The worker thread set the options: the event names the process, with the thread beside.
    // Matched by port only: a cgroup made moments before its first socket can be named in
    // events only once the hierarchy's next walk has seen it (/sockets above waited for it).
    let settings = wait_event(ctx, from, |e| {
        e["event"] == "settings" && e["sport"] == py_port
    });
    match settings {
        Some(e) if e["comm"] == py.comm.as_str() && e["thread"] == "ka-worker" => {}
        Some(e) => ctx.failures.push(format!(
            "python settings event names comm {} thread {}, expected {} and ka-worker",
            e["comm"], e["thread"], py.comm
        )),
        None => ctx
            .failures
            .push("no settings event for the python server socket".into()),
    }

    // Sockets that existed before a daemon started are attributed the same.
    let (second, _) = ctx.start_daemon(&[], "attribution")?;
    for w in wants {
        let f = w.check(second.addr, Duration::from_secs(8))?;
        ctx.record(&format!("{} (found at start)", w.what), (f, vec![]));
    }
    drop(second);

    // The path dies: deaths from the keepalive timer, each naming its workload.
    let client_local = find_local(ctx.main.addr, &socat_want)?;
    let wall = nft::Nft {
        ip_bin: ctx.env.ip_bin.clone(),
        nft_bin: ctx.env.nft_bin.clone(),
        ns: ctx.topo.router.clone(),
    };
    wall.apply(&nft::drop_flow(client_local, addr))?;
    let deaths = [
        (
            "unit",
            "redis-server.service".to_string(),
            addr.port(),
            true,
        ),
        ("container", short(&docker_id), addr.port(), false),
    ];
    for (label, value, port, server_side) in &deaths {
        let dead = wait_event(ctx, from, |e| {
            e["event"] == "dead"
                && e[*label] == value.as_str()
                && if *server_side {
                    e["sport"] == *port
                } else {
                    e["dport"] == *port
                }
        });
        match dead {
            Some(e) if e["cause"] == "timeout" => {}
            Some(e) => ctx
                .failures
                .push(format!("{label}={value}: dead with cause {}", e["cause"])),
            None => ctx
                .failures
                .push(format!("no dead event naming {label}={value}")),
        }
        let (series, lines) = dead_series(ctx.main.addr, label, value)?;
        ctx.notes.extend(lines);
        ctx.check(series >= 1.0, || {
            format!("keepalive_dead_connections_total{{cause=\"timeout\",{label}=\"{value}\"}} is {series}")
        });
    }
    let _ = wall.flush();
    drop(py_client);
    socat.close_stdin();
    drop((py, socat, redis));
    drop(pod_log);
    drop(tree);
    Ok(())
}

/// What one socket's `/sockets` entry must say.
struct Want {
    what: &'static str,
    /// The socket's local (`local_port`) or remote port.
    port: u16,
    local_port: bool,
    fields: Vec<(&'static str, String)>,
}

impl Want {
    fn find(&self, list: &[Value]) -> Option<Value> {
        let key = if self.local_port { "sport" } else { "dport" };
        list.iter()
            .find(|s| {
                s[key] == self.port
                    && s["state"] == "ESTABLISHED"
                    && self.fields.iter().any(|(k, _)| !s[*k].is_null())
            })
            .cloned()
    }

    /// Waits for the socket, then compares every field; returns the differences.
    fn check(&self, daemon: SocketAddr, limit: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + limit;
        loop {
            let list = sockets(daemon, &format!("port={}", self.port))?;
            let found = self.find(&list);
            let diffs: Vec<String> = match &found {
                Some(s) => self
                    .fields
                    .iter()
                    .filter(|(k, v)| s[*k] != v.as_str())
                    .map(|(k, v)| format!("{k} is {}, expected {v:?}", s[*k]))
                    .collect(),
                None => vec!["not listed with any workload label".into()],
            };
            if diffs.is_empty() || Instant::now() > deadline {
                return Ok(diffs);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn sockets(daemon: SocketAddr, q: &str) -> Result<Vec<Value>> {
    let (code, body) = http::get(daemon, &format!("/sockets?{q}"))?;
    if code != 200 {
        bail!("/sockets answered {code}: {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// The local address of the socket `want` describes (the client end).
fn find_local(daemon: SocketAddr, want: &Want) -> Result<SocketAddr> {
    let list = sockets(daemon, &format!("port={}", want.port))?;
    let s = want.find(&list).context("client socket not listed")?;
    let ip = s["saddr"].as_str().context("saddr")?.parse()?;
    let port = s["sport"].as_u64().context("sport")? as u16;
    Ok(SocketAddr::new(ip, port))
}

fn wait_event(ctx: &Ctx, from: usize, want: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = ctx
            .main
            .received(from..ctx.main.received_len())
            .into_iter()
            .filter_map(|r| serde_json::from_str::<Value>(&r.line).ok())
            .find(|e| want(e));
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sum of `keepalive_dead_connections_total{cause="timeout"}` series carrying `label=value`,
/// and those series' lines as exported.
fn dead_series(daemon: SocketAddr, label: &str, value: &str) -> Result<(f64, Vec<String>)> {
    let (_, body) = http::get(daemon, "/metrics")?;
    let needle = format!("{label}=\"{value}\"");
    let lines = body
        .lines()
        .filter(|l| l.starts_with("keepalive_dead_connections_total{cause=\"timeout\""))
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect();
    let sum = http::parse_prometheus(&body)
        .into_iter()
        .filter(|s| s.name == "keepalive_dead_connections_total")
        .filter(|s| s.labels.iter().any(|(k, v)| k == "cause" && v == "timeout"))
        .filter(|s| s.labels.iter().any(|(k, v)| k == label && v == value))
        .map(|s| s.value)
        .sum();
    Ok((sum, lines))
}

fn wait_listening(ctx: &Ctx, redis: &mut Proc, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sock::connect(&ctx.topo.client, addr, None) {
            Ok(mut s) => {
                s.write_all(b"PING\r\n")?;
                let mut pong = [0u8; 7];
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.read_exact(&mut pong)?;
                drop::<TcpStream>(s);
                return Ok(());
            }
            Err(e) if Instant::now() < deadline => {
                redis.ensure_running().with_context(|| format!("{e:#}"))?;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => bail!("redis not accepting on {addr}: {e:#}"),
        }
    }
}
