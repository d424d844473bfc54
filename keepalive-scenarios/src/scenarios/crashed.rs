//! Peer crashed / powered off: the router silently drops the flow. The kernel sends `cnt`
//! probes, gives up at idle + intvl × cnt and reports ETIMEDOUT.

use super::{Body, Conn, Ctx, Expect};
use crate::nft;
use crate::sock::{self, FAST};
use anyhow::Result;
use std::time::Duration;

pub fn run(ctx: &mut Ctx) -> Result<Body> {
    let (conn, detect, window) = times_out(ctx, &nft::drop_flow, "drop")?;
    Ok(Body {
        flows: vec![conn.flow(
            "main",
            Expect::Dead {
                probes: FAST.cnt,
                cause: "timeout",
                errno: "ETIMEDOUT",
                detect: window,
            },
        )],
        conns: vec![conn],
        nstat: vec![("TcpExtTCPKeepAlive", 3), ("TcpExtTCPAbortOnTimeout", 1)],
        app_detect: detect,
        whole_namespace: false,
    })
}

/// What crashed and unreachable share: the path breaks right after the handshake, the client
/// sends its `cnt` probes into it and the kernel gives up with ETIMEDOUT after idle + intvl ×
/// cnt. Returns the connection, the application's detection time and the window it had to
/// fall in. `rules` builds the router rule; `what` names it in failures.
pub fn times_out(
    ctx: &mut Ctx,
    rules: &dyn Fn(std::net::SocketAddr, std::net::SocketAddr) -> Vec<String>,
    what: &str,
) -> Result<(Conn, Option<f64>, (f64, f64))> {
    let conn = ctx.open(Some(FAST))?;
    ctx.break_path(&rules(conn.local, conn.peer), &conn)?;
    let limit = FAST.deadline_s();
    let out = sock::watch(
        &[&conn.client],
        conn.last_recv.mono + Duration::from_secs_f64(limit + 3.0),
        &[0],
    );
    let window = (limit - 1.0, limit + 1.0);
    let detect = ctx.expect_app(
        "main",
        out[0],
        Some(libc::ETIMEDOUT),
        conn.last_recv,
        window,
    );
    // The rule must have seen the 3 probes plus the RST the kernel sends when it gives up.
    let hits = ctx.rule_hits("c2s")?;
    ctx.check(hits == 4, || {
        format!("{what} rule saw {hits} client packets, expected 3 probes + 1 RST")
    });
    Ok((conn, detect, window))
}
