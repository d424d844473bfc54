//! Daemon B, started with every socket already open: its start-up inventory, then a re-walk's
//! duration and the event delays while it runs, and its CPU quiet and in a storm next to `ss`.
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{Out, events, listing, topo::Topology};
use crate::{
    Ctx,
    daemon::Daemon,
    holder::{self, HoldOpts},
    report::{bytes, num, percentile},
    sys,
};

/// `/events` readers may fall behind during the partition's burst of events: a big buffer
/// keeps the bench's reader from being dropped as slow, which would end its accounting. Daemon
/// A is given the same: the buffer is 32 bytes a slot, all touched at start (32 MiB, 34 bytes
/// a socket at a million), a fixed cost of the setting that its idle heap must hold too for
/// B's heap above it to be what the sockets cost.
pub(super) const EVENTS_BUFFER: &str = "1048576";

pub fn start(
    ctx: &Ctx,
    base: f64,
    sockets: usize,
    anon_idle: f64,
    out: &mut Out,
) -> Result<Daemon> {
    let mut extra: Vec<&str> = vec!["--web.events-buffer", EVENTS_BUFFER, "--log.level", "info"];
    extra.extend(ctx.scale.daemon_args.iter().map(String::as_str));
    let (t0, exec_at) = (Instant::now(), chrono::Utc::now());
    let d = ctx.start_daemon(&extra, "scale-b")?;
    let healthy = t0.elapsed().as_secs_f64();
    let logged = inventory_line(
        &crate::daemon::scratch_dir().join("daemon-scale-b.log"),
        exec_at,
    );
    let have = d.wait_count(base + sockets as f64, Duration::from_secs(60))?;
    let inventoried = t0.elapsed().as_secs_f64();
    let all = have >= base + sockets as f64;
    out.figure(
        "start-up inventory with every socket present",
        format!(
            "{} s from exec to the inventory gauges counting {} sockets (healthy after {} s)",
            num(inventoried),
            num(have),
            num(healthy)
        ),
        "≤ 5 s",
        None,
    );
    match logged {
        Some((secs, line)) => out.figure(
            "start-up inventory, by the daemon's own log line",
            format!("{} s after exec: `{line}`", num(secs)),
            "≤ 5 s",
            Some(secs <= 5.0),
        ),
        None => out.note(
            "The daemon B log has no `inventory:` line (a daemon without it, or a failed walk)."
                .into(),
        ),
    }
    out.check(
        "start-up inventory found every socket",
        all,
        format!("{} of {}", num(have - base), sockets),
    );
    // Above 100 000 sockets the owners come from a /proc scan the daemon runs after start-up
    // (4 s at a million): sampled over 10 s, the peak is during it, the last after it.
    let mut peak = 0.0f64;
    for _ in 0..20 {
        sys::sleep_s(0.5);
        peak = peak.max(anon_bytes(d.pid()) as f64);
    }
    // The event ring is sized from the sockets at start (168 B each, 64 MiB at most) and
    // mapped into the daemon twice (a wrapped record reads as one): file-backed pages that
    // VmRSS counts, 128 MiB of it at a million sockets against 2 MiB for daemon A's 1 MiB
    // ring. The heap (anonymous pages) is compared with daemon A's; the ring is shown apart.
    let (rss, anon) = (d.rss() as f64, anon_bytes(d.pid()) as f64);
    // Per socket B holds beyond daemon A's idle ones (the host's own, and whatever else
    // opened meanwhile on a shared host, are in B's table too).
    let per_socket = (anon - anon_idle) / (have - base).max(1.0);
    out.figure(
        "daemon B heap (RssAnon) above daemon A's idle heap, per socket, after start-up",
        format!(
            "{} B 10 s after start-up, {} B at the peak while owners were scanned ({} \
             anonymous; VmRSS {}, the rest file-backed: the event ring mapped twice and the \
             binary)",
            num(per_socket),
            num((peak - anon_idle) / (have - base).max(1.0)),
            bytes(anon),
            bytes(rss)
        ),
        "≤ 128 B",
        Some(per_socket <= 128.0),
    );
    out.cmd(format!(
        "{}   # started with every socket open; polled /metrics every 250 ms",
        d.command
    ));
    Ok(d)
}

/// The start-up inventory's log line (`inventory: N TCP sockets at startup…`) and its time
/// after `exec_at`, waiting up to two minutes for it.
fn inventory_line(
    log: &std::path::Path,
    exec_at: chrono::DateTime<chrono::Utc>,
) -> Option<(f64, String)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("msg=\"inventory: ")) {
            let ts = l.strip_prefix("ts=")?.split_whitespace().next()?;
            let at = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
            let msg = l.split_once("msg=\"")?.1.trim_end_matches('"').to_string();
            let secs = (at.with_timezone(&chrono::Utc) - exec_at).num_milliseconds() as f64 / 1e3;
            return Some((secs, msg));
        }
        sys::sleep_s(0.2);
    }
    None
}

/// CPU per second of the daemon over `secs`, and the probe + answer events in it.
fn window(d: &Daemon, secs: f64, mut during: impl FnMut()) -> Result<(f64, f64, f64)> {
    let events = |d: &Daemon| -> Result<f64> {
        let m = d.metrics()?;
        Ok(m.sum("keepalive_probes_total", "") + m.sum("keepalive_probes_answered_total", ""))
    };
    let (e0, c0, t) = (events(d)?, d.cpu_ns(), Instant::now());
    while t.elapsed().as_secs_f64() < secs {
        let tick = Instant::now();
        during();
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let (c1, dt) = (d.cpu_ns(), t.elapsed().as_secs_f64());
    let e1 = events(d)?;
    Ok(((c1 - c0) as f64 / 1e9 / dt, (e1 - e0) / dt, dt))
}

pub fn rewalk_and_cpu(d: &Daemon, t: &Topology, ss_poll: Option<f64>, out: &mut Out) -> Result<()> {
    // The start-up's owner lookups end 8 s after it (inventory/mod.rs `unowned`).
    sys::sleep_s(12.0);
    let (quiet_cpu, _, _) = window(d, 10.0, || {})?;
    let storm = holder::spawn_many(
        &HoldOpts {
            netns: Some(t.storm.path()),
            keepalive: true,
            rate: 10_000,
            ..Default::default()
        },
        2_500,
    )?;
    sys::sleep_s(3.0);
    let mut ss_cpu = 0.0;
    let storm_name = t.storm.name.clone();
    let (storm_cpu, rate, dt) = window(d, 10.0, || {
        if let Ok(r) = listing::ss(&[storm_name.as_str()]) {
            ss_cpu += r.cpu_s;
        }
    })?;
    let ss_storm = ss_cpu / dt;
    // Per event only when the storm's window cost more than the quiet one (another process's
    // work on the host shows in both and can swamp the difference).
    let per_event = if storm_cpu > quiet_cpu {
        (storm_cpu - quiet_cpu) / rate.max(1.0) * 1e6
    } else {
        f64::NAN
    };
    let ss_all = ss_poll.unwrap_or(f64::NAN);
    out.figure(
        "daemon CPU, quiet, vs `ss -tieo` over every socket once a second",
        format!(
            "{} % of a CPU vs ss {} s per poll: {}×",
            num(quiet_cpu * 100.0),
            num(ss_all),
            num(quiet_cpu / ss_all)
        ),
        "≤ 0.1×",
        Some(quiet_cpu / ss_all <= 0.1),
    );
    out.figure(
        "daemon CPU, storm of 5 000 sockets probing every second (and the quiet rest)",
        format!(
            "{} % of a CPU, {} events/s, {} µs userspace per event above quiet; ss over the storm namespace once a second {} % ({}×), over every socket {}×",
            num(storm_cpu * 100.0),
            num(rate),
            num(per_event),
            num(ss_storm * 100.0),
            num(storm_cpu / ss_storm),
            num(storm_cpu / ss_all)
        ),
        "≤ 0.1× ss; ≤ 1 µs per event",
        Some(storm_cpu / ss_all.min(ss_storm) <= 0.1 && per_event <= 1.0),
    );

    // Re-walks: a `/sockets` read walks every namespace's table when the last walk is over a
    // second old (ingest/activity.rs, the same walk as the loss-driven re-walk); a filter that
    // matches nothing leaves only the walk. Meanwhile the storm's events are timed.
    let reader = events::Reader::start(d.port, HashSet::from([t.storm.inode() as u32]))?;
    sys::sleep_s(2.0);
    let lost0 = d.metrics()?.lost();
    let (mut walks, mut windows, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        sys::sleep_s(1.5);
        let (a, w) = (sys::realtime_ns(), Instant::now());
        crate::daemon::get(d.port, "/sockets?port=1")?;
        walks.push(w.elapsed().as_secs_f64());
        windows.push((a, sys::realtime_ns()));
        let w = Instant::now();
        crate::daemon::get(d.port, "/sockets?port=1")?;
        cached.push(w.elapsed().as_secs_f64());
    }
    sys::sleep_s(1.0);
    let log = reader.finish();
    let lost = d.metrics()?.lost() - lost0;
    drop(storm);
    let (mut inside, mut outside): (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    for e in &log.events {
        let delay = (e.read - e.ts) as i64;
        if windows.iter().any(|(a, b)| e.ts >= *a && e.ts <= *b) {
            inside.push(delay);
        } else {
            outside.push(delay);
        }
    }
    let worst = walks.iter().copied().fold(0.0, f64::max);
    let ms = |v: i64| num(v as f64 / 1e6);
    out.figure(
        "re-walk of every namespace's table",
        format!(
            "{} s, {} s, {} s (the same read within a second, no walk: {} s)",
            num(walks[0]),
            num(walks[1]),
            num(walks[2]),
            num(crate::report::median(&cached))
        ),
        "≤ 5 s",
        Some(worst <= 5.0),
    );
    let (n_in, n_out) = (inside.len(), outside.len());
    out.figure(
        "storm events during the walks (kernel → /events reader)",
        format!(
            "{n_in} events emitted during a walk: p50 {} ms, max {} ms; outside the walks {n_out}: p50 {} ms, max {} ms; {} events lost over the walks (host-wide)",
            ms(percentile(&mut inside, 50.0)),
            ms(percentile(&mut inside, 100.0)),
            ms(percentile(&mut outside, 50.0)),
            ms(percentile(&mut outside, 100.0)),
            num(lost)
        ),
        "events keep flowing",
        Some(n_in > 0 && lost == 0.0),
    );
    out.cmd(
        "curl -s '127.0.0.1:<port>/sockets?port=1'   # x3, 1.5 s apart: each walks every table"
            .into(),
    );
    Ok(())
}

/// The process's anonymous resident memory (`RssAnon`): its heap and stacks, without the
/// file-backed mappings (the binary, the event ring).
pub fn anon_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
