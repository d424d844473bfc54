//! Middlebox risk against `--idle-budget`: a second daemon with a 300 s budget, and socat clients
//! with keepalive off, idle 600, idle 320 and idle 100. Idle 320 is at risk under 300 s but not
//! under the shared daemon's default 350 s, so the flag must follow each daemon's own budget.

use super::clients::{show_table, socat_connected};
use super::view::{Key, SOCKET, Want};
use super::{Ctx, runner};
use crate::sock;
use anyhow::Result;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const BUDGET: u32 = 300;

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let (mut second, obs) =
        ctx.start_daemon(&["--idle-budget", &format!("{BUDGET}s")], "daemon-risk")?;
    let main = ctx.main_obs();
    let listener = ctx.listen()?;
    let (client_ns, server_ns) = (ctx.ino(&ctx.topo.client)?, ctx.ino(&ctx.topo.server)?);
    let ours = [client_ns, server_ns];

    let mut procs = Vec::new();
    let mut servers = Vec::new();
    let mut clients: Vec<(Key, Want)> = Vec::new();
    for idle in [None, Some(600), Some(320), Some(100)] {
        let opts = idle.map_or(String::new(), |i| format!("keepalive,keepidle={i}"));
        let (p, server, key) = socat_connected(ctx, &listener, &opts)?;
        let mut want = Want::inherited("ESTABLISHED", idle.is_some()).owned_by(p.pid, &p.comm);
        if let Some(i) = idle {
            want.idle = (i, SOCKET);
        }
        procs.push(p);
        servers.push(server);
        clients.push((key, want));
    }
    let t0 = Instant::now();
    ctx.check(obs.budget_s == BUDGET, || {
        format!("second daemon budget parsed as {}", obs.budget_s)
    });
    // The scenario's peers (documentation ranges) are in the built-in public group.
    let budget = obs.metric("keepalive_idle_budget_seconds", &[("peer_group", "public")])?;
    ctx.check(budget == Some(f64::from(BUDGET)), || {
        format!("keepalive_idle_budget_seconds {budget:?}, expected {BUDGET}")
    });

    // Each daemon flags against its own budget (Want::mismatches checks at_risk with it).
    for (key, want) in &clients {
        let label = format!(
            "idle {}",
            if want.on {
                want.idle.0.to_string()
            } else {
                "off".into()
            }
        );
        let (found, _) = obs.expect(*key, want, t0)?;
        ctx.record(&format!("{label} (budget {BUDGET})"), found);
        let (found, _) = main.expect(*key, want, t0)?;
        ctx.record(
            &format!("{label} (shared daemon, budget {})", main.budget_s),
            found,
        );
    }

    // The filters list exactly the scenario's sockets of each kind.
    let keys = |pick: &dyn Fn(&Want) -> bool| -> BTreeSet<String> {
        clients
            .iter()
            .filter(|(_, w)| pick(w))
            .map(|(k, _)| k.to_string())
            .collect()
    };
    let filters: [(&str, BTreeSet<String>); 5] = [
        ("at_risk=true", keys(&|w| w.at_risk(BUDGET))),
        ("at_risk=false", keys(&|w| !w.at_risk(BUDGET))),
        ("keepalive=off", keys(&|w| !w.on)),
        ("keepalive=on", keys(&|w| w.on)),
        ("comm=socat", keys(&|_| true)),
    ];
    for (q, want) in filters {
        let got: BTreeSet<String> = obs
            .sockets(&format!("netns={client_ns}&{q}"))?
            .iter()
            .map(|v| Key::of(v).to_string())
            .collect();
        ctx.check(got == want, || {
            format!("/sockets?netns=…&{q} lists {got:?}, expected {want:?}")
        });
    }
    let risky: Vec<(Key, &Want)> = clients
        .iter()
        .filter(|(_, w)| w.at_risk(BUDGET))
        .map(|(k, w)| (*k, w))
        .collect();
    show_table(
        ctx,
        &obs,
        "at-risk",
        &["--at-risk", "--netns", &client_ns.to_string()],
        &risky,
    )?;

    // The runner's accepted sockets and its listener have keepalive off: at risk as well.
    let (pid, comm) = runner();
    let any = SocketAddr::new(
        if listener.local_addr()?.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        },
        0,
    );
    let mut all: Vec<Key> = clients.iter().map(|(k, _)| *k).collect();
    all.extend(clients.iter().map(|(k, _)| Key {
        netns: server_ns,
        local: k.peer,
        peer: k.local,
    }));
    all.push(Key {
        netns: server_ns,
        local: listener.local_addr()?,
        peer: any,
    });
    let accepted = Want::inherited("ESTABLISHED", false).owned_by(pid, &comm);
    let (found, _) = obs.expect(all[clients.len()], &accepted, t0)?;
    ctx.record("accepted", found);
    let n = |f: &dyn Fn(&Want) -> bool| clients.iter().filter(|(_, w)| f(w)).count() as f64;
    // The runner's accepted sockets (keepalive off) are at risk; its listener is not.
    let accepted_n = clients.len() as f64;
    let server_side = accepted_n + 1.0;
    let limit = Duration::from_secs(3);
    let risk = (
        "keepalive_sockets_by_risk",
        &[("risk", "at_risk"), ("peer_group", "public")][..],
    );
    let risk_q = "risk=at_risk&peer_group=public";
    ctx.record(
        "metric",
        obs.ours(
            risk,
            risk_q,
            &ours,
            n(&|w| w.at_risk(BUDGET)) + accepted_n,
            limit,
        )?,
    );
    let listeners = (
        "keepalive_sockets_by_risk",
        &[("risk", "listener"), ("peer_group", "none")][..],
    );
    ctx.record(
        "metric",
        obs.ours(listeners, "risk=listener", &ours, 1.0, limit)?,
    );
    let on = ("keepalive_sockets", &[("keepalive", "on")][..]);
    ctx.record(
        "metric",
        obs.ours(on, "keepalive=on", &ours, n(&|w| w.on), limit)?,
    );
    let off = ("keepalive_sockets", &[("keepalive", "off")][..]);
    ctx.record(
        "metric",
        obs.ours(
            off,
            "keepalive=off",
            &ours,
            n(&|w| !w.on) + server_side,
            limit,
        )?,
    );

    // Everything closes: the scenario's share of the gauges drops to nothing.
    for mut p in procs {
        p.stop()?;
    }
    for s in servers {
        sock::abort(s);
    }
    drop(listener);
    let closed = Instant::now();
    ctx.gone("close", &obs, &all, closed)?;
    ctx.record(
        "metric after close",
        obs.ours(risk, risk_q, &ours, 0.0, limit)?,
    );
    ctx.record(
        "metric after close",
        obs.ours(on, "keepalive=on", &ours, 0.0, limit)?,
    );
    if let Some(status) = second.exited() {
        ctx.failures.push(format!(
            "second daemon exited ({status}): {}",
            second.stderr_tail(10)
        ));
    }
    Ok(())
}
