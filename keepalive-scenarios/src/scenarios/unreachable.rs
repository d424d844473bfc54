//! Peer up but unreachable: the router answers every probe with ICMP host unreachable. Linux
//! ignores ICMP errors quoting a keepalive probe (its sequence snd_una − 1 is out of window),
//! so the application sees ETIMEDOUT exactly as for a silent drop; only an observer that
//! notices the ICMP errors can tell the cause apart.

use super::{Body, Ctx, Expect};
use crate::nft;
use crate::sock::{self, FAST};
use crate::topology::Family;
use anyhow::Result;
use std::time::Duration;

pub fn run(ctx: &mut Ctx) -> Result<Body> {
    let conn = ctx.open(Some(FAST))?;
    ctx.break_path(&nft::unreachable_flow(conn.local, conn.peer), &conn)?;
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
    let hits = ctx.rule_hits("c2s")?;
    ctx.check(hits == 4, || {
        format!("reject rule saw {hits} client packets, expected 3 probes + 1 RST")
    });
    let icmp = if ctx.topo.family == Family::Ipv4 {
        "IcmpInDestUnreachs"
    } else {
        "Icmp6InDestUnreachs"
    };
    Ok(Body {
        flows: vec![conn.flow(
            "main",
            Expect::Dead {
                probes: FAST.cnt,
                cause: "unreachable",
                errno: "ETIMEDOUT",
                detect: window,
            },
        )],
        conns: vec![conn],
        nstat: vec![
            ("TcpExtTCPKeepAlive", 3),
            ("TcpExtTCPAbortOnTimeout", 1),
            // One ICMP error per probe is discarded as out of window by TCP...
            ("TcpExtOutOfWindowIcmps", 3),
            // ...and one more answers the final RST, when no socket is left to match it.
            (icmp, 4),
        ],
        app_detect: detect,
    })
}
