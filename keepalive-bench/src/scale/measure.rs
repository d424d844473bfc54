//! The daemon at full size: RSS per socket, `/metrics` and promtool, `/sockets` streamed, the
//! `sockets` command and `ss -tieo` on daemon A (started before the sockets); then daemon B,
//! started with every socket present, for the start-up inventory, the re-walk, CPU and the
//! partition (`startup.rs`, `partition.rs`).
use std::{collections::HashSet, process::Command, time::Duration};

use anyhow::{Result, bail};

use super::{Out, listing, partition, quiet::Quiet, startup, topo::Topology};
use crate::{
    Ctx,
    daemon::{self, Daemon},
    report::{bytes, median, num},
    sys,
};

pub fn run(ctx: &Ctx, t: &Topology, q: Quiet, partition_conns: usize, out: &mut Out) -> Result<()> {
    let Quiet {
        holders,
        daemon: a,
        rss_idle,
        anon_idle,
        base,
        sockets,
    } = q;
    let ours: HashSet<u32> = t.quiet.iter().map(|n| n.inode() as u32).collect();
    let check = ctx.scale.check;
    out.part("daemon RSS per socket", |out| {
        rss(&a, rss_idle, base, sockets, check, out)
    });
    out.part("/metrics", |out| scrape(&a, check, out));
    let mut served = None;
    out.part("/sockets", |out| {
        // The inventory lists the holders' listening sockets too, one per holder.
        served = Some(listings(&a, &ours, sockets + holders.len(), out)?);
        Ok(())
    });
    out.part("keepalive-daemon sockets", |out| cli(ctx, &a, out));
    let mut ss_poll = None;
    if !check {
        out.part("ss -tieo next to /sockets", |out| {
            let names: Vec<&str> = t.quiet.iter().map(|n| n.name.as_str()).collect();
            let r = listing::ss(&names)?;
            out.cmd("ip netns exec <each namespace> ss -tieo   # wall time; CPU from getrusage(RUSAGE_CHILDREN)".into());
            let (wall, cpu) = served.unwrap_or((f64::NAN, f64::NAN));
            out.figure(
                "`ss -tieo` over the same sockets, next to `/sockets`",
                format!(
                    "ss: {} s wall, {} s CPU, {} sockets listed, {}; /sockets: {} s wall, {} s daemon CPU ({}× ss's CPU)",
                    num(r.wall.as_secs_f64()),
                    num(r.cpu_s),
                    r.lines,
                    bytes(r.bytes as f64),
                    num(wall),
                    num(cpu),
                    num(cpu / r.cpu_s)
                ),
                "compared",
                None,
            );
            ss_poll = Some(r.cpu_s);
            Ok(())
        });
    }
    drop(a);
    let mut b = None;
    out.part("start-up inventory", |out| {
        b = Some(startup::start(ctx, base, sockets, anon_idle, out)?);
        Ok(())
    });
    let Some(b) = b else {
        bail!("daemon B did not start: nothing after the start-up ran");
    };
    if !check {
        out.part("re-walk and CPU", |out| {
            startup::rewalk_and_cpu(&b, t, ss_poll, out)
        });
    }
    out.part("burst and partition", |out| {
        partition::run(&b, t, partition_conns, out)
    });
    drop(b);
    drop(holders);
    Ok(())
}

fn rss(d: &Daemon, idle: f64, base: f64, sockets: usize, check: bool, out: &mut Out) -> Result<()> {
    sys::sleep_s(3.0);
    let have = d.wait_sockets(base + sockets as f64, Duration::from_secs(5))? - base;
    let now = d.rss() as f64;
    // The daemon trims its heap every 30 s (rewalk::INTERVAL): the lowest sample over one
    // interval is what it holds, without the holes a growing table leaves.
    let mut low = now;
    if !check {
        for _ in 0..35 {
            sys::sleep_s(1.0);
            low = low.min(d.rss() as f64);
        }
    }
    let per = (low - idle) / have.max(1.0);
    out.figure(
        "daemon RSS above idle, per socket",
        format!(
            "{} B ({} idle, {} with {} sockets; {} B right after they opened, before a heap trim)",
            num(per),
            bytes(idle),
            bytes(low),
            num(have),
            num((now - idle) / have.max(1.0))
        ),
        "≤ 128 B",
        Some(per <= 128.0),
    );
    out.cmd(format!(
        "grep VmRSS /proc/{}/status   # idle, then each second for 35 s",
        d.pid()
    ));
    Ok(())
}

fn scrape(d: &Daemon, check: bool, out: &mut Out) -> Result<()> {
    let n = if check { 5 } else { 20 };
    let mut times = Vec::new();
    let mut body = String::new();
    let started = std::time::Instant::now();
    // At most a minute of scrapes: at a million sockets one may take seconds.
    while times.len() < n && (times.len() < 3 || started.elapsed().as_secs() < 60) {
        let (t, b) = daemon::get(d.port, "/metrics")?;
        times.push(t.as_secs_f64() * 1e3);
        body = b;
    }
    let n = times.len();
    let med = median(&times);
    let max = times.iter().copied().fold(0.0, f64::max);
    out.figure(
        "`/metrics` scrape",
        format!(
            "median {} ms, max {} ms of {n} ({}, {} series)",
            num(med),
            num(max),
            bytes(body.len() as f64),
            body.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .count()
        ),
        "≤ 20 ms",
        Some(med <= 20.0),
    );
    let file = daemon::scratch_dir().join("scale-metrics.txt");
    std::fs::write(&file, &body)?;
    let r = listing::run_counted(
        Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", file.display())),
    )?;
    let problems = r.stderr.trim().to_string().replace('\n', "; ");
    let clean = r.ok && r.lines == 0 && problems.is_empty();
    out.figure(
        "`promtool check metrics` on that body",
        if clean {
            "clean".into()
        } else {
            format!("not clean: {problems}")
        },
        "clean",
        Some(clean),
    );
    out.check("promtool check metrics clean", clean, problems);
    out.cmd(format!("curl -s 127.0.0.1:{}/metrics   # x{n}, time to the last byte; the last body through promtool check metrics", d.port));
    Ok(())
}

/// `/sockets` in full, filtered, and limited and sorted by risk; returns the full listing's
/// (wall seconds, daemon CPU seconds).
fn listings(d: &Daemon, ours: &HashSet<u32>, sockets: usize, out: &mut Out) -> Result<(f64, f64)> {
    let cpu0 = d.cpu_ns();
    let mut full = listing::stream(d.port, "/sockets", d.pid(), ours)?;
    let cpu = (d.cpu_ns() - cpu0) as f64 / 1e9;
    if full.ours < sockets as u64 && d.metrics()?.lost() > 0.0 {
        // Sockets whose events were lost while they opened join at the next loss-driven
        // re-walk (every 30 s, ingest/rewalk.rs).
        out.note(format!(
            "The first `/sockets` listed {} of the bench's {sockets} sockets (events lost while they opened); \
             the check uses a second listing after the daemon's next re-walk.",
            full.ours
        ));
        sys::sleep_s(35.0);
        full = listing::stream(d.port, "/sockets", d.pid(), ours)?;
    }
    if full.status != 200 {
        bail!("/sockets answered {}", full.status);
    }
    out.figure(
        "`/sockets`, every socket",
        format!(
            "{} s ({} s to the first byte), {} rows, {}, daemon CPU {} s; daemon RSS +{} while serving",
            num(full.total.as_secs_f64()),
            num(full.first_byte.as_secs_f64()),
            full.rows,
            bytes(full.bytes as f64),
            num(cpu),
            bytes(full.peak_rss_growth as f64)
        ),
        "streamed: bounded memory",
        Some(full.peak_rss_growth < 64 << 20),
    );
    out.check(
        "/sockets lists every socket of the bench's namespaces",
        full.ours == sockets as u64,
        format!(
            "{} rows in the bench's namespaces, {sockets} sockets opened (listeners included)",
            full.ours
        ),
    );
    for (what, path) in [
        (
            "`/sockets?keepalive=off` (filter)",
            "/sockets?keepalive=off",
        ),
        (
            "`/sockets?sort=risk&limit=100`",
            "/sockets?sort=risk&limit=100",
        ),
    ] {
        let r = listing::stream(d.port, path, d.pid(), ours)?;
        let said = if r.status == 200 {
            format!(
                "{} s, {} rows, {}, daemon RSS +{}",
                num(r.total.as_secs_f64()),
                r.rows,
                bytes(r.bytes as f64),
                bytes(r.peak_rss_growth as f64)
            )
        } else {
            format!("HTTP {}: not supported by this daemon", r.status)
        };
        let met = (r.status == 200).then(|| !path.contains("limit") || r.rows <= 100);
        out.figure(what, said, "usable at this size", met);
    }
    out.cmd(format!(
        "curl -s '127.0.0.1:{}/sockets[?keepalive=off | ?sort=risk&limit=100]'   # streamed and counted, RSS sampled every 10 ms",
        d.port
    ));
    Ok((full.total.as_secs_f64(), cpu))
}

fn cli(ctx: &Ctx, d: &Daemon, out: &mut Out) -> Result<()> {
    let mut args = vec!["--keepalive", "off", "--limit", "100"];
    let mut r = listing::cli(&ctx.daemon_bin, d.port, &args)?;
    let mut note = "";
    if !r.ok && r.stderr.contains("limit") {
        args.truncate(2);
        r = listing::cli(&ctx.daemon_bin, d.port, &args)?;
        note = " (this daemon has no --limit: without it)";
    }
    if !r.ok {
        bail!(
            "keepalive-daemon sockets {}: {}",
            args.join(" "),
            r.stderr.trim()
        );
    }
    out.figure(
        "`keepalive-daemon sockets --keepalive off --limit 100`",
        format!("{} s, {} lines{note}", num(r.wall.as_secs_f64()), r.lines),
        "usable at this size",
        Some(r.wall.as_secs_f64() <= 30.0),
    );
    out.cmd(format!(
        "keepalive-daemon sockets --web.listen-address 127.0.0.1:{} {}",
        d.port,
        args.join(" ")
    ));
    Ok(())
}
