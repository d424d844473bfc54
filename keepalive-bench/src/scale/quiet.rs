//! The quiet million: holders in the bench's namespaces, each with its own 127.x.y.z listener,
//! keepalive varied from one holder to the next (off, namespace default, per-socket timers,
//! TCP_USER_TIMEOUT) but nothing probing for an hour. The kernel's memory for them is read
//! around the opening, with the daemon already running (its own memory is not slab) so that its
//! idle RSS is known before the first socket.
use std::{net::Ipv4Addr, time::Instant};

use anyhow::{Result, bail};

use super::{MARGIN, Out, topo::Topology};
use crate::{
    Ctx,
    daemon::Daemon,
    holder::{self, HoldOpts, Holder},
    report::{bytes, num},
    sys,
};

pub struct Quiet {
    pub holders: Vec<Holder>,
    /// Daemon A: started before the sockets.
    pub daemon: Daemon,
    pub rss_idle: f64,
    /// Its anonymous (heap) part: what daemon B's heap is compared with.
    pub anon_idle: f64,
    /// Sockets in its inventory before the bench's (the host's own).
    pub base: f64,
    /// Sockets the bench opened (both ends).
    pub sockets: usize,
}

/// A /proc/meminfo field in bytes.
pub fn meminfo(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == field).then(|| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?
        })
        .unwrap_or(0)
        * 1024
}

/// Holder `i`'s keepalive: five kinds, so the inventory sees every configuration.
fn settings(i: usize, o: &mut HoldOpts) -> &'static str {
    match i % 5 {
        0 => "off",
        1 => {
            o.keepalive = true;
            "on, namespace default"
        }
        2 => {
            (o.keepalive, o.idle, o.intvl, o.cnt) = (true, Some(3600), Some(30), Some(5));
            "on, 3600/30/5 per socket"
        }
        3 => {
            (o.keepalive, o.idle, o.intvl, o.cnt) = (true, Some(7200), Some(75), Some(9));
            o.user_timeout = Some(30_000);
            "on, 7200/75/9 and TCP_USER_TIMEOUT 30 s"
        }
        _ => {
            (o.keepalive, o.idle) = (true, Some(5400));
            "on, idle 5400 per socket"
        }
    }
}

pub fn open_and_measure(ctx: &Ctx, t: &Topology, sockets: usize, out: &mut Out) -> Result<Quiet> {
    let conns = sockets / 2;
    let mut extra = vec!["--web.events-buffer", super::startup::EVENTS_BUFFER];
    extra.extend(ctx.scale.daemon_args.iter().map(String::as_str));
    let daemon = ctx.start_daemon(&extra, "scale-a")?;
    sys::sleep_s(3.0);
    let base = daemon.wait_sockets(0.0, std::time::Duration::from_secs(1))?;
    let rss_idle = daemon.rss() as f64;
    let anon_idle = super::startup::anon_bytes(daemon.pid()) as f64;
    let lost0 = daemon.metrics()?.lost();
    let parallel = 4;
    let rate = (ctx.scale.open_rate / parallel as u32).max(100);
    let mut opts = Vec::new();
    let mut left = conns;
    let mut kinds = Vec::new();
    while left > 0 {
        let i = opts.len();
        let n = left.min(holder::PER_PROCESS);
        let mut o = HoldOpts {
            netns: Some(t.quiet[i % t.quiet.len()].path()),
            connections: n,
            rate,
            addr: Some(Ipv4Addr::new(127, 1, (i / 200) as u8, (i % 200 + 1) as u8)),
            ..Default::default()
        };
        let kind = settings(i, &mut o);
        if i < 5 {
            kinds.push(kind);
        }
        opts.push(o);
        left -= n;
    }
    let (slab0, sunr0, avail0) = (
        meminfo("Slab"),
        meminfo("SUnreclaim"),
        meminfo("MemAvailable"),
    );
    let started = Instant::now();
    let mut holders = Vec::new();
    for chunk in opts.chunks(parallel) {
        if super::interrupted() {
            bail!("interrupted");
        }
        if (meminfo("MemAvailable") as f64) < MARGIN {
            bail!(
                "MemAvailable fell below {} after {} connections: stopped opening",
                bytes(MARGIN),
                holders
                    .iter()
                    .map(|h: &Holder| h.connections)
                    .sum::<usize>()
            );
        }
        holders.extend(holder::spawn_parallel(chunk, parallel)?);
    }
    let open_s = started.elapsed().as_secs_f64();
    // Freed socket memory comes back to slab lazily (RCU): let it settle before reading.
    sys::sleep_s(2.0);
    let (slab1, sunr1, avail1) = (
        meminfo("Slab"),
        meminfo("SUnreclaim"),
        meminfo("MemAvailable"),
    );
    let per = |a: u64, b: u64| (b as f64 - a as f64) / sockets as f64;
    out.figure(
        "kernel memory for the sockets (slab)",
        format!(
            "{} per socket ({} in all; unreclaimable {} per socket), MemAvailable {}{}",
            bytes(per(slab0, slab1)),
            bytes(slab1 as f64 - slab0 as f64),
            bytes(per(sunr0, sunr1)),
            // Other work on the host moves it too, either way.
            if avail1 <= avail0 { "−" } else { "+" },
            bytes((avail0 as f64 - avail1 as f64).abs())
        ),
        "measured first",
        None,
    );
    out.figure(
        "opening them",
        format!(
            "{conns} connections ({sockets} sockets) in {} s by {} holders ({parallel} at a time, {} connections/s asked) in {} namespaces",
            num(open_s),
            holders.len(),
            ctx.scale.open_rate,
            t.quiet.len()
        ),
        "paced",
        None,
    );
    out.note(format!(
        "Keepalive of the quiet sockets, by holder (repeating): {}; the second namespace's default idle is \
         5400 s. Nothing probes for at least an hour, so the only events come from opening them.",
        kinds.join("; ")
    ));
    out.cmd(daemon.command.clone());
    out.cmd(format!(
        "{}   # x{} (≤ {} connections each, {} kinds of settings, 127.1.x.y listeners, alternating namespaces)",
        holders[0].command,
        holders.len(),
        holder::PER_PROCESS,
        kinds.len()
    ));
    out.cmd(
        "grep -E 'Slab|SUnreclaim|MemAvailable' /proc/meminfo   # before and after opening".into(),
    );
    let have = daemon.wait_count(base + sockets as f64, std::time::Duration::from_secs(70))?;
    let lost = daemon.metrics()?.lost() - lost0;
    out.figure(
        "inventory after opening",
        format!(
            "{} of {sockets} sockets; {} events lost while they opened",
            num(have - base),
            num(lost)
        ),
        "all inventoried",
        Some(have - base >= sockets as f64),
    );
    Ok(Quiet {
        holders,
        daemon,
        rss_idle,
        anon_idle,
        base,
        sockets,
    })
}
