//! Seed 004: a stateful middlebox forgets flows idle longer than its timeout (2 s here) and
//! resets the next packet it sees for them. A keepalive idle longer than that timeout (3 s)
//! loses the connection at its first probe; a shorter one (1 s) refreshes the middlebox's state
//! with every probe and survives the same period.

use super::{Body, Ctx, Expect};
use crate::nft;
use crate::sock::{self, FAST, Keepalive};
use crate::topology::write_sysctl;
use anyhow::Result;
use std::time::Duration;

const MIDDLEBOX_TIMEOUT_S: u32 = 2;
const SLOW: Keepalive = Keepalive {
    idle: 3,
    intvl: 1,
    cnt: 3,
};
/// How long the control connection is watched: past the victim's death, and ending half-way
/// between two of its probes so their count is exact (probes at ≈1, 2, 3, 4 s).
const CONTROL_RUN: Duration = Duration::from_millis(4500);

pub fn run(ctx: &mut Ctx) -> Result<Body> {
    // Rules first: conntrack must see the handshake, or the flow would start out "loose".
    ctx.nft.apply(&nft::idle_firewall())?;
    write_sysctl(
        &ctx.topo.router,
        "net/netfilter/nf_conntrack_tcp_timeout_established",
        &MIDDLEBOX_TIMEOUT_S.to_string(),
    )?;
    let victim = ctx.open(Some(SLOW))?;
    let control = ctx.open(Some(FAST))?;

    let idle = f64::from(SLOW.idle);
    let socks = [&victim.client, &control.client];
    let out = sock::watch(
        &socks,
        victim.last_recv.mono + Duration::from_secs_f64(idle + 3.0),
        &[0],
    );
    let window = (idle - 0.05, idle + 1.0);
    let detect = ctx.expect_app(
        "victim",
        out[0],
        Some(libc::ECONNRESET),
        victim.last_recv,
        window,
    );
    ctx.expect_app("control", out[1], None, control.last_recv, (0.0, 0.0));

    let rest = sock::watch(
        &[&control.client],
        control.last_recv.mono + CONTROL_RUN,
        &[],
    );
    ctx.expect_app("control", rest[0], None, control.last_recv, (0.0, 0.0));
    let (state, _) = sock::tcp_state(&control.client)?;
    ctx.check(state == 1, || {
        format!("control: TCP state {state}, expected ESTABLISHED")
    });
    // Close the control now: on a slow machine (TCG) the checks below can take long enough
    // for one more of its probes to leave, and the probe count must not depend on that.
    let control_flow = control.flow(
        "control",
        Expect::Alive {
            min_probes: 4,
            min_answered: 3,
        },
    );
    drop(control);

    // Which rule fired tells how conntrack classified the probe of a forgotten flow.
    let hits = ctx.rule_hits("new-ack")? + ctx.rule_hits("invalid")?;
    ctx.check(hits == 1, || {
        format!("middlebox reset {hits} packets, expected only the victim's first probe")
    });

    let victim_expect = Expect::Dead {
        probes: 1,
        cause: "reset",
        errno: "ECONNRESET",
        detect: window,
    };
    Ok(Body {
        flows: vec![victim.flow("victim", victim_expect), control_flow],
        conns: vec![victim],
        nstat: vec![("TcpExtTCPKeepAlive", 1 + 4), ("TcpEstabResets", 1)],
        app_detect: detect,
        whole_namespace: false,
    })
}
