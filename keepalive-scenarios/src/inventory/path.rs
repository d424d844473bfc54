//! Seed 004 predicted and measured: the router forgets TCP flows after `T` s of silence
//! (conntrack's established timeout, 2 s or 5 s) and resets the next packet of a forgotten
//! flow. A second daemon holds the server's network to a budget of `T` s (`[peers.fw]`).
//!
//! - Flows with different keepalive idles probe in two rounds; their first probes are either
//!   answered or reset by the router, and the daemon's learned bracket
//!   (`keepalive_path_idle_timeout_seconds`, `path_timeout` events) must contain `T` and
//!   narrow from round 1 to round 2.
//! - A flow without keepalive is `at_risk` at first and `exposed` once silent past `T`, before
//!   the application writes; its write is then reset by the router (the prediction held).
//! - The keepalive flow within the budget is `covered` throughout, never exposed; the
//!   listener is `listener`; a loopback pair silent past `T` is `local`.
//! - The exposed flow's idle equals `ss -tieo` lastsnd/lastrcv within 1 s.

use super::clients::socat_connected;
use super::idle::idle_matches_ss;
use super::view::{Key, SockView};
use super::{Ctx, runner};
use crate::nft::{self, Nft};
use crate::sock::{self, Keepalive, Outcome};
use crate::topology::write_sysctl;
use anyhow::{Context, Result};
use std::io::Write as _;
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

/// One flow of a round: its keepalive idle and whether the router lets its first probe through.
struct Probe {
    idle: u32,
    survives: bool,
}

/// The rounds for a router timeout: round 1 brackets it widely, round 2 narrows both ends
/// where whole seconds allow (a 2 s timeout has no survivor idle between 1 and 2). Survivors
/// stay 2 s below the timeout: under QEMU's TCG a keepalive timer fired over a second late.
fn rounds(timeout_s: u32) -> Vec<Vec<u32>> {
    match timeout_s {
        2 => vec![vec![6, 1], vec![3]],
        _ => vec![
            vec![timeout_s + 4, timeout_s - 3],
            vec![timeout_s + 1, timeout_s - 2],
        ],
    }
}

pub fn run(ctx: &mut Ctx, timeout_s: u32) -> Result<()> {
    let topo = ctx.topo;
    let nft = Nft {
        ip_bin: ctx.env.ip_bin.clone(),
        nft_bin: ctx.env.nft_bin.clone(),
        ns: topo.router.clone(),
    };
    // Rules first: conntrack must see the handshakes, or flows would start out "loose".
    nft.apply(&nft::idle_firewall())?;
    write_sysctl(
        &topo.router,
        "net/netfilter/nf_conntrack_tcp_timeout_established",
        &timeout_s.to_string(),
    )?;
    // A server address of this run alone: the daemon sees every namespace of the machine, and
    // other runs of the suite (or other scenarios' firewalls) reuse the usual server address.
    let host = 10 + (std::process::id() % 240) as u8;
    let server_ip = topo.add_server_addr(host)?;
    let server_net = format!("{server_ip}/{}", if server_ip.is_ipv4() { 32 } else { 128 });
    let config = std::env::temp_dir().join(format!(
        "{}-path{timeout_s}-{}.toml",
        ctx.env.prefix,
        topo.family.name()
    ));
    std::fs::write(
        &config,
        format!("[peers.fw]\ncidrs = [\"{server_net}\"]\nidle-budget = {timeout_s}\n"),
    )?;
    let (mut second, obs) = ctx.start_daemon(
        &["--config.file", &config.to_string_lossy()],
        &format!("daemon-path{timeout_s}"),
    )?;
    let _ = std::fs::remove_file(&config);
    let listener = sock::listen(&topo.server, server_ip)?;
    let dst = listener.local_addr()?;
    let client_ns = ctx.ino(&topo.client)?;
    let from = second.received_len();

    // The flow without keepalive, a socat without keepalive (for the advice), and a loopback
    // pair in the client's namespace, all silent from now on.
    let mut bare = sock::connect(&topo.client, dst, None)?;
    let mut bare_server = sock::accept(&listener, Duration::from_secs(5))?;
    let bare_last = sock::exchange(&mut bare, &mut bare_server)?;
    let bare_key = Key {
        netns: client_ns,
        local: bare.local_addr()?,
        peer: dst,
    };
    let (mut socat, socat_server, socat_key) = socat_connected(ctx, &listener, "")?;
    let lo_ip: IpAddr = if dst.is_ipv4() {
        [127, 0, 0, 1].into()
    } else {
        std::net::Ipv6Addr::LOCALHOST.into()
    };
    let lo_listener = sock::listen(&topo.client, lo_ip)?;
    let mut lo = sock::connect(&topo.client, lo_listener.local_addr()?, None)?;
    let mut lo_server = sock::accept(&lo_listener, Duration::from_secs(5))?;
    sock::exchange(&mut lo, &mut lo_server)?;
    let lo_key = Key {
        netns: client_ns,
        local: lo.local_addr()?,
        peer: lo_listener.local_addr()?,
    };

    let first = view(&obs, bare_key)?;
    ctx.check(first.risk == "at_risk", || {
        format!(
            "no-keepalive flow at {:.1}s: risk {}, expected at_risk",
            bare_last.mono.elapsed().as_secs_f64(),
            first.risk
        )
    });
    ctx.check(
        first.peer_group.as_deref() == Some("fw") && first.budget_s == Some(timeout_s),
        || {
            format!(
                "peer group {:?} budget {:?}, expected fw {timeout_s}",
                first.peer_group, first.budget_s
            )
        },
    );

    // The probing rounds.
    let mut brackets = Vec::new();
    let mut covered: Vec<(Key, TcpStream, TcpStream)> = Vec::new();
    for (n, idles) in rounds(timeout_s).into_iter().enumerate() {
        let mut flows = Vec::new();
        for idle in idles {
            let ka = Keepalive {
                idle,
                intvl: 1,
                cnt: 3,
            };
            let mut c = sock::connect(&topo.client, dst, Some(ka))?;
            let mut s = sock::accept(&listener, Duration::from_secs(5))?;
            sock::exchange(&mut c, &mut s)?;
            flows.push((
                Probe {
                    idle,
                    survives: idle < timeout_s,
                },
                c,
                s,
            ));
        }
        // A reset comes with the first probe (idle); an answer is reported when the timer
        // next fires (2 × idle).
        let wait = flows
            .iter()
            .map(|(p, _, _)| if p.survives { 2 * p.idle } else { p.idle })
            .max()
            .unwrap_or(1);
        let deadline = Instant::now() + Duration::from_millis(u64::from(wait) * 1000 + 1500);
        let socks: Vec<&TcpStream> = flows.iter().map(|(_, c, _)| c).collect();
        let outcomes = sock::watch(&socks, deadline, &[]);
        let b = bracket(&obs)?;
        let mut late = Vec::new();
        for (i, ((p, _, _), got)) in flows.iter().zip(&outcomes).enumerate() {
            let reset = matches!(got, Outcome::Error { errno, .. } if *errno == libc::ECONNRESET);
            // A survivor whose keepalive timer fired late enough (TCG, a loaded host) to be
            // silent past the timeout is reset by the router too: the kernel and the daemon
            // are right then if the learned upper bound still lies above the timeout.
            let late_ok = p.survives && reset && b.1.is_some_and(|u| u > f64::from(timeout_s));
            let ok = match got {
                Outcome::Quiet => p.survives,
                Outcome::Error { .. } => (!p.survives && reset) || late_ok,
                Outcome::Other { .. } => false,
            };
            if late_ok {
                late.push(i);
                ctx.notes.push(format!(
                    "round {}: idle {} s flow reset: its timer fired past {timeout_s} s of silence",
                    n + 1,
                    p.idle
                ));
            }
            ctx.check(ok, || {
                format!(
                    "round {}: idle {} s under a {timeout_s} s router: app saw {got:?}, expected {}",
                    n + 1,
                    p.idle,
                    if p.survives { "nothing" } else { "ECONNRESET" }
                )
            });
        }
        let flows: Vec<_> = flows
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !late.contains(i))
            .map(|(_, f)| f)
            .collect();
        ctx.notes.push(format!(
            "round {} idles {:?}: learned {:?}..{:?} s (router forgets after {timeout_s} s)",
            n + 1,
            flows.iter().map(|(p, _, _)| p.idle).collect::<Vec<_>>(),
            b.0,
            b.1
        ));
        brackets.push(b);
        for (p, c, s) in flows {
            if p.survives {
                covered.push((
                    Key {
                        netns: client_ns,
                        local: c.local_addr()?,
                        peer: dst,
                    },
                    c,
                    s,
                ));
            }
        }
        // Covered flows stay covered while probing, whatever their silence.
        for (k, _, _) in &covered {
            let v = view(&obs, *k)?;
            ctx.check(v.risk == "covered", || {
                format!("covered flow {k}: risk {} after round {}", v.risk, n + 1)
            });
        }
    }
    check_brackets(ctx, &brackets, timeout_s);
    path_events(ctx, &second, from, timeout_s, dst.ip());

    // The flow without keepalive has been silent for longer than T: exposed, before it writes.
    let v = view(&obs, bare_key)?;
    let silent = bare_last.mono.elapsed().as_secs_f64();
    ctx.check(v.risk == "exposed", || {
        format!(
            "no-keepalive flow silent {silent:.1}s: risk {}, expected exposed",
            v.risk
        )
    });
    let idle = v.idle_now_s.unwrap_or(0.0);
    ctx.check(
        idle > f64::from(timeout_s) && (idle - silent).abs() < 1.0,
        || format!("no-keepalive flow idle_now_s {idle:.2}, silent for {silent:.2}s"),
    );
    let found = idle_matches_ss(ctx, &obs, &topo.client, bare_key)?;
    ctx.record("bare vs ss", found);
    for (k, label) in [(lo_key, "loopback"), (socat_key, "socat")] {
        let v = view(&obs, k)?;
        let want = if label == "loopback" {
            "local"
        } else {
            "exposed"
        };
        ctx.check(v.risk == want, || {
            format!("{label} {k}: risk {}, expected {want}", v.risk)
        });
    }
    let listed = obs.sockets(&format!("netns={}&risk=listener", ctx.ino(&topo.server)?))?;
    ctx.check(listed.iter().any(|l| l.sport == dst.port()), || {
        "the scenario's listener is not listed as risk=listener".to_owned()
    });
    let exposed = obs.table(&["--exposed", "--netns", &client_ns.to_string()])?;
    let rows: Vec<&str> = exposed.lines().skip(1).collect();
    ctx.check(
        rows.len() == 2 && rows.iter().all(|r| r.contains("EXPOSED")),
        || format!("`sockets --exposed` lists {rows:?}, expected the bare flow and socat"),
    );
    let advice = obs.table(&["--advise"])?;
    let comm = runner().1;
    ctx.check(
        advice.contains(&format!("{comm}: "))
            && advice.contains("socat: ")
            && advice.contains("fw"),
        || format!("`sockets --advise` lacks the scenario's workloads: {advice}"),
    );
    ctx.notes
        .push(format!("advise: {}", advice.trim().replace('\n', " | ")));

    // The prediction: its next write is reset by the router that forgot it.
    bare.write_all(b"late\n")?;
    let got = sock::watch(&[&bare], Instant::now() + Duration::from_secs(3), &[0]);
    ctx.check(
        matches!(got[0], Outcome::Error { errno, .. } if errno == libc::ECONNRESET),
        || {
            format!(
                "exposed flow's write: app saw {:?}, expected ECONNRESET",
                got[0]
            )
        },
    );
    let hits = nft.counters()?;
    ctx.notes.push(format!("nft {hits:?}"));

    nft.flush()?;
    socat.stop()?;
    sock::abort(socat_server);
    sock::abort(bare_server);
    for (_, c, s) in covered {
        drop(c);
        sock::abort(s);
    }
    if let Some(status) = second.exited() {
        ctx.failures.push(format!(
            "second daemon exited ({status}): {}",
            second.stderr_tail(10)
        ));
    }
    Ok(())
}

/// The socket's `/sockets` entry, waiting up to 2 s for a socket just opened to be listed.
fn view(obs: &super::obs::Obs, key: Key) -> Result<SockView> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let list = obs.sockets(&format!("netns={}&port={}", key.netns, key.local.port()))?;
        if let Some(v) = key.find(&list).first() {
            return Ok((*v).clone());
        }
        if Instant::now() > deadline {
            return None.with_context(|| format!("{key} not in /sockets after 2 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

type Bracket = (Option<f64>, Option<f64>);

fn bracket(obs: &super::obs::Obs) -> Result<Bracket> {
    let get = |bound| {
        obs.metric(
            "keepalive_path_idle_timeout_seconds",
            &[("peer_group", "fw"), ("bound", bound)],
        )
    };
    Ok((get("lower")?, get("upper")?))
}

/// The learned bracket holds the router's timeout after each round, and round 2 narrowed it.
fn check_brackets(ctx: &mut Ctx, brackets: &[Bracket], timeout_s: u32) {
    let t = f64::from(timeout_s);
    for (n, (lower, upper)) in brackets.iter().enumerate() {
        let holds = lower.is_some_and(|l| l < t) && upper.is_some_and(|u| u > t);
        ctx.check(holds, || {
            format!(
                "round {}: learned {lower:?}..{upper:?} s does not contain the router's {timeout_s} s",
                n + 1
            )
        });
    }
    if let [(l1, u1), (l2, u2)] = brackets {
        let width = |l: &Option<f64>, u: &Option<f64>| u.unwrap_or(f64::MAX) - l.unwrap_or(0.0);
        ctx.check(width(l2, u2) < width(l1, u1) - 0.5, || {
            format!("round 2 did not narrow the bracket: {l1:?}..{u1:?} then {l2:?}..{u2:?}")
        });
    }
}

/// Every `path_timeout` event narrowed the bracket and names the group; the last one carries
/// the final bracket.
fn path_events(
    ctx: &mut Ctx,
    d: &crate::daemon::Daemon,
    from: usize,
    timeout_s: u32,
    server: IpAddr,
) {
    let events: Vec<serde_json::Value> = d
        .received(from..d.received_len())
        .into_iter()
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.line).ok())
        .filter(|v| v["event"] == "path_timeout" && v["peer_group"] == "fw")
        .collect();
    let (mut lower, mut upper) = (0.0f64, f64::MAX);
    for e in &events {
        let l = e["lower_s"].as_f64().unwrap_or(0.0);
        let u = e["upper_s"].as_f64().unwrap_or(f64::MAX);
        ctx.check(l >= lower && u <= upper && (l > lower || u < upper), || {
            format!("path_timeout event did not narrow {lower}..{upper}: {e}")
        });
        ctx.check(e["peer_group"] == "fw", || {
            format!("path_timeout event group: {e}")
        });
        ctx.check(e["daddr"] == server.to_string(), || {
            format!("path_timeout event for another peer: {e}")
        });
        (lower, upper) = (l, u);
    }
    ctx.check(events.len() >= 3, || {
        format!("{} path_timeout events, expected at least 3", events.len())
    });
    ctx.check(
        lower < f64::from(timeout_s) && upper > f64::from(timeout_s),
        || format!("last path_timeout event {lower}..{upper} does not contain {timeout_s}"),
    );
    ctx.notes.push(format!(
        "{} path_timeout events, last {lower}..{upper} s",
        events.len()
    ));
}
