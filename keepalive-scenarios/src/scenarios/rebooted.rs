//! Peer rebooted: it has no state for the connection and answers the first probe with a RST.

use super::{Body, Ctx, Expect};
use crate::nft;
use crate::sock::{self, FAST};
use anyhow::Result;
use std::time::Duration;

pub fn run(ctx: &mut Ctx) -> Result<Body> {
    let conn = ctx.open(Some(FAST))?;
    ctx.break_path(&nft::reset_flow(conn.local, conn.peer), &conn)?;
    let idle = f64::from(FAST.idle);
    let out = sock::watch(
        &[&conn.client],
        conn.last_recv.mono + Duration::from_secs_f64(idle + 3.0),
        &[0],
    );
    // The first probe leaves at `idle` (a timer never fires early; 50 ms covers jiffy rounding)
    // and the RST comes back within microseconds.
    let window = (idle - 0.05, idle + 1.0);
    let detect = ctx.expect_app(
        "main",
        out[0],
        Some(libc::ECONNRESET),
        conn.last_recv,
        window,
    );
    let hits = ctx.rule_hits("c2s")?;
    ctx.check(hits == 1, || {
        format!("reset rule saw {hits} client packets, expected exactly the first probe")
    });
    Ok(Body {
        flows: vec![conn.flow(
            "main",
            Expect::Dead {
                probes: 1,
                cause: "reset",
                errno: "ECONNRESET",
                detect: window,
            },
        )],
        conns: vec![conn],
        nstat: vec![("TcpExtTCPKeepAlive", 1), ("TcpEstabResets", 1)],
        app_detect: detect,
        whole_namespace: false,
    })
}
