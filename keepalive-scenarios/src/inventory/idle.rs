//! Real idle time against the kernel's own report: `/sockets` `last_send_s`/`last_recv_s` next
//! to `ss -tieo`'s lastsnd/lastrcv (ms since the last data segment sent and received). The
//! daemon is read just before and just after ss (starting ss takes most of a second under
//! QEMU's TCG), and ss's ages must lie between the two readings, give or take 1 s.

use super::Ctx;
use super::obs::{Found, Obs};
use super::view::Key;
use crate::cmd;
use anyhow::{Context, Result};
use std::net::SocketAddr;

/// How far the daemon's ages may be from ss's.
const TOLERANCE_S: f64 = 1.0;

pub fn idle_matches_ss(ctx: &Ctx, obs: &Obs, ns: &str, key: Key) -> Result<Found> {
    let q = format!("netns={}&port={}", key.netns, key.local.port());
    let read = || -> Result<super::view::SockView> {
        let list = obs.sockets(&q)?;
        key.find(&list)
            .first()
            .map(|v| (*v).clone())
            .with_context(|| format!("{key} not in /sockets"))
    };
    let v = read()?;
    let text = cmd::run(
        &ctx.env.ip_bin,
        &["netns", "exec", ns, "ss", "-tieonH"],
        None,
    )?;
    let after = read()?;
    let Some((snd, rcv)) = ss_ages(&text, key.local, key.peer) else {
        return Ok((
            vec![format!(
                "ss -tieo has no lastsnd/lastrcv for {key}: {text:.400}"
            )],
            vec![],
        ));
    };
    let mut bad = Vec::new();
    for (what, ours, theirs) in [
        ("last_send_s", v.last_send_s, snd),
        ("last_recv_s", v.last_recv_s, rcv),
    ] {
        match ours {
            Some(o) if (o - theirs).abs() <= TOLERANCE_S => {}
            _ => bad.push(format!("{what} {ours:?}, ss says {theirs:.3}")),
        }
    }
    let note = format!(
        "idle vs ss: send {:?}..{:?}/{snd:.3} recv {:?}..{:?}/{rcv:.3} idle_now {:?}",
        v.last_send_s, after.last_send_s, v.last_recv_s, after.last_recv_s, v.idle_now_s
    );
    Ok((bad, vec![note]))
}

/// lastsnd and lastrcv (seconds) of the connection local → peer in `ss -tieonH` output, whose
/// details follow the address line on indented lines.
pub fn ss_ages(text: &str, local: SocketAddr, peer: SocketAddr) -> Option<(f64, f64)> {
    let fmt = |a: SocketAddr| match a {
        SocketAddr::V4(_) => a.to_string(),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    };
    let (l, p) = (fmt(local), fmt(peer));
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if !(cols.contains(&l.as_str()) && cols.contains(&p.as_str())) {
            continue;
        }
        let mut block = line.to_owned();
        while let Some(next) = lines.peek().filter(|n| n.starts_with(char::is_whitespace)) {
            block.push(' ');
            block.push_str(next);
            lines.next();
        }
        let field = |name: &str| {
            block
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse::<f64>().ok())
                .map(|ms| ms / 1000.0)
        };
        return Some((field("lastsnd:")?, field("lastrcv:")?));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_read_from_the_detail_lines() {
        let text = "ESTAB 0 0 192.0.2.2:40000 198.51.100.2:5000 timer:(keepalive,1.2sec,0) ino:1 sk:2\n\
                    \t cubic wscale:7,7 rto:204 lastsnd:3416 lastrcv:3400 lastack:3000\n\
                    ESTAB 0 0 [2001:db8:c::2]:40001 [2001:db8:5::2]:5000 ino:3\n\
                    \t lastsnd:10 lastrcv:20\n";
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            ss_ages(text, a("192.0.2.2:40000"), a("198.51.100.2:5000")),
            Some((3.416, 3.4))
        );
        assert_eq!(
            ss_ages(text, a("[2001:db8:c::2]:40001"), a("[2001:db8:5::2]:5000")),
            Some((0.01, 0.02))
        );
        assert_eq!(
            ss_ages(text, a("192.0.2.2:1"), a("198.51.100.2:5000")),
            None
        );
    }
}
