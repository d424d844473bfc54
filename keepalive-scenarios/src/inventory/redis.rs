//! A server that sets keepalive on the connections it accepts: `redis-server --tcp-keepalive 7`.
//! Redis (anetKeepAlive) sets SO_KEEPALIVE, TCP_KEEPIDLE = 7, TCP_KEEPINTVL = 7 / 3 = 2 and
//! TCP_KEEPCNT = 3 right after accept() (strace of redis 7.0.15 shows exactly these calls).

use super::clients::show_table;
use super::idle::idle_matches_ss;
use super::proc::Proc;
use super::view::{Key, Want};
use super::{Ctx, settings_events};
use crate::sock;
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The namespace is the scenario's own, so redis's well-known port is free there.
const PORT: u16 = 6379;

/// A foreground redis-server on `addr` with `--tcp-keepalive keepalive_s`, saving nothing.
pub fn server_args(addr: SocketAddr, keepalive_s: u32) -> Vec<String> {
    let dir = std::env::temp_dir().to_string_lossy().into_owned();
    [
        "--port",
        &addr.port().to_string(),
        "--bind",
        &addr.ip().to_string(),
        "--tcp-keepalive",
        &keepalive_s.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--dir",
        &dir,
        "--logfile",
        "",
    ]
    .map(String::from)
    .to_vec()
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let obs = ctx.main_obs();
    let addr = SocketAddr::new(ctx.topo.server_addr(), PORT);
    let args = server_args(addr, 7);
    let mut redis = Proc::spawn(&ctx.topo.server, &ctx.tool, &args)?;
    let from = ctx.main.received_len();
    let mut client = connect_when_ready(ctx, &mut redis, addr)?;
    // Redis answers only after accept() and its setsockopt calls: the options are all set.
    client.write_all(b"PING\r\n")?;
    let mut pong = [0u8; 7];
    client
        .read_exact(&mut pong)
        .context("reading redis's PONG")?;
    if &pong != b"+PONG\r\n" {
        bail!("redis answered {:?}", String::from_utf8_lossy(&pong));
    }
    let t0 = Instant::now();
    let server_ns = ctx.ino(&ctx.topo.server)?;
    let key = Key {
        netns: server_ns,
        local: addr,
        peer: client.local_addr()?,
    };
    let want = Want::own(7, 2, 3, 0).owned_by(redis.pid, &redis.comm);
    let (found, _) = obs.expect(key, &want, t0)?;
    ctx.record("redis accepted", found);
    // Accepted in ESTABLISHED with nothing set, then one event per option redis sets.
    let events = settings_events(ctx.main, from, key, &want, Some(4));
    ctx.record("redis events", events);
    let found = idle_matches_ss(ctx, &obs, &ctx.topo.server, key)?;
    ctx.record("redis idle", found);

    let any = SocketAddr::new(
        if addr.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        },
        0,
    );
    let lkey = Key {
        netns: server_ns,
        local: addr,
        peer: any,
    };
    let lwant = Want::inherited("LISTEN", false).owned_by(redis.pid, &redis.comm);
    let (found, _) = obs.expect(lkey, &lwant, t0)?;
    ctx.record("redis listener", found);

    let args = [
        "--port",
        &PORT.to_string(),
        "--netns",
        &server_ns.to_string(),
    ];
    show_table(ctx, &obs, "redis", &args, &[(lkey, &lwant), (key, &want)])?;

    // The client leaves with a FIN; redis sees the end of its input and closes its side.
    let client_key = Key {
        netns: ctx.ino(&ctx.topo.client)?,
        local: key.peer,
        peer: addr,
    };
    drop(client);
    let closed = Instant::now();
    ctx.gone("client close", &obs, &[key, client_key], closed)?;
    redis.ensure_running()?;
    redis.stop()?;
    let closed = Instant::now();
    ctx.gone("redis stop", &obs, &[lkey], closed)?;
    Ok(())
}

/// Redis takes a moment to listen; until then connecting is refused.
fn connect_when_ready(ctx: &Ctx, redis: &mut Proc, addr: SocketAddr) -> Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sock::connect(&ctx.topo.client, addr, None) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                return Ok(s);
            }
            Err(e) if Instant::now() < deadline => {
                redis.ensure_running().with_context(|| format!("{e:#}"))?;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => bail!(
                "redis not accepting on {addr} after 10 s: {e:#}; {}",
                redis.output()
            ),
        }
    }
}
