//! Control: a keepalive socket with unacknowledged data dies by retransmission timeout, not by
//! keepalive (the keepalive timer stands aside while data is in flight). Both deaths end in the
//! same tcp_write_err() with ETIMEDOUT, so a daemon that only watches errors would misreport it.

use super::{Body, Ctx, Expect};
use crate::nft;
use crate::sock::{self, FAST, Stamp};
use crate::topology::write_sysctl;
use anyhow::{Context, Result};
use std::io::Write;
use std::time::Duration;

/// tcp_retries2=3 makes the kernel give up once 15 × 200 ms = 3 s (tcp_model_timeout) have
/// passed since the FIRST RETRANSMISSION (retrans_stamp), checked at each RTO expiry. With a
/// ~204 ms RTO the expiries fall at ≈0.2, 0.6, 1.4, 3.1 and 6.3 s after the write; at 3.1 s only
/// ≈2.85 s have passed since the first retransmission, so the socket dies at the 6.3 s expiry,
/// not at 3 s. The 150 ms margin at 3.1 s keeps this deterministic; the window's upper end
/// allows for the 256 ms timer-wheel granularity of the 3.2 s timer at HZ=250.
const RETRIES2: &str = "3";
const RTO_DEATH_WINDOW_S: (f64, f64) = (6.2, 7.2);

pub fn run(ctx: &mut Ctx) -> Result<Body> {
    write_sysctl(&ctx.topo.client, "net/ipv4/tcp_retries2", RETRIES2)?;
    let conn = ctx.open(Some(FAST))?;
    ctx.break_path(&nft::drop_flow(conn.local, conn.peer), &conn)?;
    // Sent well before the 1 s keepalive idle expires, so no probe can precede it.
    let sent = Stamp::now();
    (&conn.client).write_all(&[b'x'; 1000]).context("write")?;
    let out = sock::watch(&[&conn.client], sent.mono + Duration::from_secs(10), &[0]);
    let detect = ctx.expect_app(
        "main",
        out[0],
        Some(libc::ETIMEDOUT),
        sent,
        RTO_DEATH_WINDOW_S,
    );
    // The segment, one tail loss probe, 4 RTO retransmissions; no RST on a retransmission death.
    let hits = ctx.rule_hits("c2s")?;
    ctx.check(hits == 6, || {
        format!("drop rule saw {hits} client packets, expected 1 + TLP + 4 retransmissions")
    });
    Ok(Body {
        flows: vec![conn.flow("main", Expect::Silent)],
        conns: vec![conn],
        nstat: vec![("TcpExtTCPKeepAlive", 0), ("TcpExtTCPAbortOnTimeout", 1)],
        app_detect: detect,
        whole_namespace: false,
    })
}
