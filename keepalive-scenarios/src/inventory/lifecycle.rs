//! Where a socket's configuration comes from besides its own setsockopt calls: the startup walk
//! of a daemon started after the socket (preexisting), and the namespace sysctls (sysctl).

use super::clients::socat_connected;
use super::obs::Obs;
use super::view::{Key, SOCKET, SYSCTL, Want};
use super::{Ctx, runner, set_ns_sysctl, settings_events};
use crate::sock;
use anyhow::Result;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Instant;

fn listener_key(ns: u64, l: &TcpListener) -> Result<Key> {
    let local = l.local_addr()?;
    let any = if local.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    Ok(Key {
        netns: ns,
        local,
        peer: SocketAddr::new(any, 0),
    })
}

/// Checks the three `keepalive_namespace_default` series of namespace `ns`.
fn ns_defaults(ctx: &mut Ctx, obs: &Obs, ns: u64, want: [u32; 3], t0: Instant) -> Result<()> {
    let ns = ns.to_string();
    for (param, v) in ["idle_seconds", "intvl_seconds", "probes"]
        .into_iter()
        .zip(want)
    {
        let found = obs.wait_metric(
            "keepalive_namespace_default",
            &[("netns", &ns), ("param", param)],
            f64::from(v),
            t0,
        )?;
        ctx.record("namespace default", found);
    }
    Ok(())
}

pub fn preexisting(ctx: &mut Ctx) -> Result<()> {
    let listener = ctx.listen()?;
    // A namespace value other than the compiled-in default: the walk must read the socket's
    // own namespace, not assume 75.
    set_ns_sysctl(&ctx.topo.client, "tcp_keepalive_intvl", 33)?;
    let (mut a, server_a, ka) = socat_connected(
        ctx,
        &listener,
        "keepalive,keepidle=21,keepintvl=7,keepcnt=2",
    )?;
    let (mut b, server_b, kb) = socat_connected(ctx, &listener, "keepalive")?;
    let want_a = Want::own(21, 7, 2, 0).owned_by(a.pid, &a.comm);
    let mut want_b = Want::inherited("ESTABLISHED", true).owned_by(b.pid, &b.comm);
    want_b.intvl = (33, SYSCTL);
    let server_ns = ctx.ino(&ctx.topo.server)?;
    let (pid, comm) = runner();
    let accepted = Want::inherited("ESTABLISHED", false).owned_by(pid, &comm);
    let sa = Key {
        netns: server_ns,
        local: ka.peer,
        peer: ka.local,
    };
    let sb = Key {
        netns: server_ns,
        local: kb.peer,
        peer: kb.local,
    };
    let lkey = listener_key(server_ns, &listener)?;
    let lwant = Want::inherited("LISTEN", false).owned_by(pid, &comm);

    let started = Instant::now();
    let (mut second, obs) = ctx.start_daemon(&[], "daemon-preexisting")?;
    let t0 = Instant::now();
    ctx.notes.push(format!(
        "second daemon ready after {:.2}s",
        started.elapsed().as_secs_f64()
    ));
    for (label, key, want) in [
        ("socat own", ka, &want_a),
        ("socat inherited", kb, &want_b),
        ("accepted a", sa, &accepted),
        ("accepted b", sb, &accepted),
        ("listener", lkey, &lwant),
    ] {
        let (found, _) = obs.expect(key, want, t0)?;
        ctx.record(label, found);
    }
    ns_defaults(ctx, &obs, ka.netns, [7200, 33, 9], t0)?;
    // Being found by the walk is not a change of configuration.
    ctx.record(
        "walk events a",
        settings_events(&second, 0, ka, &want_a, Some(0)),
    );
    ctx.record(
        "walk events b",
        settings_events(&second, 0, kb, &want_b, Some(0)),
    );

    a.stop()?;
    b.stop()?;
    sock::abort(server_a);
    sock::abort(server_b);
    drop(listener);
    let closed = Instant::now();
    ctx.gone("close", &obs, &[ka, kb, sa, sb, lkey], closed)?;
    if let Some(status) = second.exited() {
        ctx.failures.push(format!(
            "second daemon exited ({status}): {}",
            second.stderr_tail(10)
        ));
    }
    Ok(())
}

pub fn sysctl(ctx: &mut Ctx) -> Result<()> {
    let obs = ctx.main_obs();
    let listener = ctx.listen()?;
    let (mut a, server_a, ka) = socat_connected(ctx, &listener, "keepalive")?;
    let (mut b, server_b, kb) = socat_connected(ctx, &listener, "keepalive,keepidle=30")?;
    let t0 = Instant::now();
    let mut want_a = Want::inherited("ESTABLISHED", true).owned_by(a.pid, &a.comm);
    let mut want_b = Want::inherited("ESTABLISHED", true).owned_by(b.pid, &b.comm);
    want_b.idle = (30, SOCKET);
    for (label, key, want) in [("default", ka, &want_a), ("own idle", kb, &want_b)] {
        let (found, _) = obs.expect(key, want, t0)?;
        ctx.record(label, found);
    }
    ns_defaults(ctx, &obs, ka.netns, [7200, 75, 9], t0)?;

    let from = ctx.main.received_len();
    let before = want_a.cfg();
    set_ns_sysctl(&ctx.topo.client, "tcp_keepalive_time", 600)?;
    let t1 = Instant::now();
    want_a.idle = (600, SYSCTL);
    // Its timer was armed at connect with the old default and stays so (the daemon reads the
    // kernel's timer in its walks).
    want_a.armed_s = Some(7200);
    let (found, _) = obs.expect(ka, &want_a, t1)?;
    ctx.record("default after sysctl", found);
    ns_defaults(ctx, &obs, ka.netns, [600, 75, 9], t1)?;
    ctx.record(
        "default events",
        settings_events(ctx.main, from, ka, &want_a, Some(1)),
    );
    let previous = ctx
        .main
        .received(from..ctx.main.received_len())
        .into_iter()
        .filter_map(|r| r.event.ok())
        .find(|e| e.event == "settings" && ka.is_event(e))
        .and_then(|e| e.previous);
    ctx.check(previous.as_ref() == Some(&before), || {
        format!("sysctl settings event: previous {previous:?}, expected {before:?}")
    });
    // Its own idle wins over the namespace's: nothing changed for it, so no event either.
    let (found, _) = obs.expect(kb, &want_b, t1)?;
    ctx.record("own idle after sysctl", found);
    ctx.record(
        "own idle events",
        settings_events(ctx.main, from, kb, &want_b, Some(0)),
    );

    a.stop()?;
    b.stop()?;
    sock::abort(server_a);
    sock::abort(server_b);
    let closed = Instant::now();
    let server_ns = ctx.ino(&ctx.topo.server)?;
    let servers = [
        Key {
            netns: server_ns,
            local: ka.peer,
            peer: ka.local,
        },
        Key {
            netns: server_ns,
            local: kb.peer,
            peer: kb.local,
        },
    ];
    ctx.gone("close", &obs, &[ka, kb, servers[0], servers[1]], closed)?;
    super::reuse::recycled_inode(ctx)
}
