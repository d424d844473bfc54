//! Peer up but unreachable: the router answers every probe with ICMP host unreachable. Linux
//! ignores ICMP errors quoting a keepalive probe (its sequence snd_una − 1 is out of window),
//! so the application sees ETIMEDOUT exactly as for a silent drop; only an observer that
//! notices the ICMP errors can tell the cause apart.

use super::{Body, Ctx, Expect};
use crate::nft;
use crate::sock::FAST;
use crate::topology::Family;
use anyhow::Result;

pub fn run(ctx: &mut Ctx) -> Result<Body> {
    let (conn, detect, window) = super::crashed::times_out(ctx, &nft::unreachable_flow, "reject")?;
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
        whole_namespace: false,
    })
}
