//! The accounting identity under load: many loopback connections inside the client namespace,
//! both ends probing every second, all timers armed together so they fire in the same wheel
//! buckets. Every probe the namespace's `TcpExtTCPKeepAlive` counts must be a `probe` or
//! `probe_failed` event, with nothing lost in the ring buffer and nothing left to the daemon's
//! unseen-probe audit (checked namespace-wide in `verify`).

use super::{Body, Conn, Ctx};
use crate::sock::{self, Keepalive, Stamp};
use crate::topology::in_netns;
use anyhow::{Context as _, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::Duration;

/// 500 pairs = 1 000 timer runs a second: a burst the daemon must take in one ring-buffer
/// drain, small enough for the TCG guest (and the suite's open-file budget).
const PAIRS: usize = 500;
/// cnt high enough that no connection can die whatever the scheduling. Idle 2 s: every
/// socket is armed in one burst after all are connected, and the burst's own setsockopt calls
/// must be over before the first timer fires (below).
const KA: Keepalive = Keepalive {
    idle: 2,
    intvl: 1,
    cnt: 100,
};
const HOLD: Duration = Duration::from_secs(8);
const SETTLE: Duration = Duration::from_millis(1500);

pub fn run(ctx: &mut Ctx) -> Result<Body> {
    let ns = ctx.topo.client.clone();
    let lo = match ctx.topo.client_addr() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    let listener = in_netns(&ns, || {
        TcpListener::bind(SocketAddr::new(lo, 0)).context("storm listener")
    })?;
    let dst = listener.local_addr()?;
    let mut conns = Vec::with_capacity(PAIRS);
    for _ in 0..PAIRS {
        let client = sock::connect(&ns, dst, None)?;
        let server = sock::accept(&listener, Duration::from_secs(5))?;
        conns.push(Conn {
            local: client.local_addr()?,
            peer: client.peer_addr()?,
            client,
            server,
            ka: Some(KA),
            last_recv: Stamp::now(),
        });
    }
    // Keepalive on every socket in one burst once all are connected, so that the timers fire
    // together and no timer fires while the setup's syscalls still run. Why the latter matters:
    // the kprobe rung's programs share a per-CPU busy flag with the classic syscall
    // tracepoints (settings, accept); a timer run that interrupts one of those is skipped by
    // the kernel and counted lost (docs/unseen-probes.md). Connecting with keepalive already
    // on made that happen on every TCG run in kprobe mode (10 to 78 runs of ~9 000).
    let armed = std::time::Instant::now();
    for c in &conns {
        // The accepted side probes too: both ends of every pair count in this namespace.
        sock::set_keepalive(&c.client, KA)?;
        sock::set_keepalive(&c.server, KA)?;
    }
    ctx.notes.push(format!(
        "storm: {PAIRS} pairs, both ends {}/{}/{}, armed in {:.3}s, held {HOLD:?}",
        KA.idle,
        KA.intvl,
        KA.cnt,
        armed.elapsed().as_secs_f64()
    ));
    std::thread::sleep(HOLD);
    // Stop every timer, then give the daemon's unseen audit (a 0.5 s poll that lags one poll)
    // time to compare the final count while the namespace still holds our sockets: once they
    // close, the audit forgets the namespace.
    for c in &conns {
        sock::keepalive_off(&c.client)?;
        sock::keepalive_off(&c.server)?;
    }
    std::thread::sleep(SETTLE);
    Ok(Body {
        flows: vec![],
        conns,
        nstat: vec![],
        app_detect: None,
        whole_namespace: true,
    })
}
