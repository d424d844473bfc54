//! Control: a connection without SO_KEEPALIVE idles behind a dropping router. The kernel sends
//! nothing at all, so the daemon must report nothing for it.

use super::{Body, Ctx, Expect};
use crate::nft;
use crate::sock;
use anyhow::Result;
use std::time::Duration;

pub fn run(ctx: &mut Ctx) -> Result<Body> {
    let conn = ctx.open(None)?;
    ctx.break_path(&nft::drop_flow(conn.local, conn.peer), &conn)?;
    let out = sock::watch(
        &[&conn.client],
        conn.last_recv.mono + Duration::from_secs(5),
        &[],
    );
    ctx.expect_app("main", out[0], None, conn.last_recv, (0.0, 0.0));
    let (state, _) = sock::tcp_state(&conn.client)?;
    ctx.check(state == 1, || {
        format!("main: TCP state {state}, expected ESTABLISHED")
    });
    // Not a single packet left the client: the silence is real, not an artefact of the check.
    let hits = ctx.rule_hits("c2s")?;
    ctx.check(hits == 0, || {
        format!("drop rule saw {hits} client packets, expected none")
    });
    Ok(Body {
        flows: vec![conn.flow("main", Expect::Silent)],
        conns: vec![conn],
        nstat: vec![("TcpExtTCPKeepAlive", 0)],
        app_detect: None,
        whole_namespace: false,
    })
}
