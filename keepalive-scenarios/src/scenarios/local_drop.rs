//! The client's own egress drops everything while keepalive runs: a zero-length pfifo on its
//! veth makes every enqueue fail, `tcp_write_wakeup` returns NET_XMIT_DROP, and the kernel
//! counts the probe (`TcpExtTCPKeepAlive`, counted before transmit) without counting it out
//! (`icsk_probes_out` stays) and retries every `TCP_RESOURCE_PROBE_INTERVAL` (0.5 s). The
//! daemon must report each as `probe_failed`, none as `probe`, and the run must go on once the
//! queue is back.

use super::{Body, Ctx, Expect};
use crate::sock::{self, Keepalive, Stamp};
use anyhow::{Context as _, Result, bail};
use std::process::Command;
use std::time::Duration;

/// cnt 10: the drop must not be what ends the connection.
const KA: Keepalive = Keepalive {
    idle: 1,
    intvl: 1,
    cnt: 10,
};
/// After probe 1 (≈1 s) was answered, before probe 2 (≈2 s).
const DROP_AT: Duration = Duration::from_millis(1500);
/// Lifted after ≈5 retries (2.0, 2.5, 3.0, 3.5, 4.0 s); at least 3 are required, the rest is
/// slack for a slow `tc` or a late timer under load.
const LIFT_AT: Duration = Duration::from_millis(4200);
const RUN: Duration = Duration::from_millis(6500);

pub fn run(ctx: &mut Ctx) -> Result<Body> {
    let tc = tc_bin().context("tc (iproute2) not found")?;
    let conn = ctx.open(Some(KA))?;
    let client = ctx.topo.client.clone();
    sleep_until(conn.last_recv, DROP_AT);
    tc_run(
        &tc,
        &client,
        &[
            "qdisc", "replace", "dev", "c0", "root", "pfifo", "limit", "0",
        ],
    )?;
    sleep_until(conn.last_recv, LIFT_AT);
    tc_run(&tc, &client, &["qdisc", "del", "dev", "c0", "root"])?;
    let out = sock::watch(&[&conn.client], conn.last_recv.mono + RUN, &[]);
    ctx.expect_app("main", out[0], None, conn.last_recv, (0.0, 0.0));
    let (state, _) = sock::tcp_state(&conn.client)?;
    ctx.check(state == 1, || {
        format!("main: TCP state {state} after the drop, expected ESTABLISHED")
    });
    Ok(Body {
        flows: vec![conn.flow("main", Expect::LocalDrop { min_failed: 3 })],
        conns: vec![conn],
        // Timer-wheel slack makes the split between sent and failed probes vary by one; the
        // suite's identity check (probe + probe_failed events == TcpExtTCPKeepAlive) is exact.
        nstat: vec![],
        app_detect: None,
        whole_namespace: false,
    })
}

fn sleep_until(from: Stamp, after: Duration) {
    let at = from.mono + after;
    if let Some(left) = at.checked_duration_since(std::time::Instant::now()) {
        std::thread::sleep(left);
    }
}

fn tc_bin() -> Option<String> {
    ["/usr/sbin/tc", "/sbin/tc", "/usr/bin/tc", "/bin/tc"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_owned)
}

fn tc_run(tc: &str, ns: &str, args: &[&str]) -> Result<()> {
    let out = crate::topology::in_netns(ns, || {
        Command::new(tc).args(args).output().context("running tc")
    })?;
    if !out.status.success() {
        bail!(
            "tc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
