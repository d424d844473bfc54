//! Peer alive: every probe is answered and the connection survives.

use super::{Body, Ctx, Expect};
use crate::sock::{self, FAST};
use anyhow::Result;
use std::time::Duration;

/// 6.5 s rather than a round 6 s: probes leave at ≈1, 2, … 6 s after the last packet (each
/// keepalive timer fires up to ~32 ms late: 8-jiffy wheel granularity at HZ=250), so the count
/// is exactly 6 and not a coin toss between 5 and 6 or 6 and 7.
const RUN: Duration = Duration::from_millis(6500);

pub fn run(ctx: &mut Ctx) -> Result<Body> {
    let conn = ctx.open(Some(FAST))?;
    let out = sock::watch(&[&conn.client], conn.last_recv.mono + RUN, &[]);
    ctx.expect_app("main", out[0], None, conn.last_recv, (0.0, 0.0));
    let (state, probes_out) = sock::tcp_state(&conn.client)?;
    ctx.check(state == 1, || {
        format!("main: TCP state {state}, expected ESTABLISHED")
    });
    ctx.notes
        .push(format!("main: probes_out at end {probes_out}"));
    Ok(Body {
        flows: vec![conn.flow(
            "main",
            Expect::Alive {
                min_probes: 3,
                min_answered: 2,
            },
        )],
        conns: vec![conn],
        nstat: vec![("TcpExtTCPKeepAlive", 6)],
        app_detect: None,
        whole_namespace: false,
    })
}
