//! Section 8's text: the figures with their targets, the checks, how to read them, and the
//! commands behind them.
use super::Out;
use crate::Ctx;

pub fn section(
    ctx: &mut Ctx,
    sockets: usize,
    partition: usize,
    out: &Out,
    err: Option<&anyhow::Error>,
) {
    let r = &mut ctx.report;
    let m = if sockets >= 1_000_000 && sockets.is_multiple_of(1_000_000) {
        format!("{} M", sockets / 1_000_000)
    } else {
        sockets.to_string()
    };
    r.h2(&format!("8. Scale: {m} sockets"));
    r.p(&format!(
        "{sockets} TCP sockets ({} loopback connections, both ends counted) held by holder processes of at most \
         9 000 connections each (the 20 000-descriptor limit) in two network namespaces the bench creates, each \
         holder listening on its own 127.1.x.y address. The kernel's memory for them is read first. Daemon A runs \
         before the first socket opens (its idle RSS), daemon B is started with all of them present (start-up \
         inventory). Then a timer burst and a partition of {partition} connections (1/10 of the sockets' \
         connections) run from a client namespace to a server namespace through a router namespace (veth), whose \
         nftables forward chain drops everything at the cut. Load average at the section's start: {}.",
        sockets / 2,
        crate::sys::loadavg()
    ));
    if let Some(e) = err {
        r.p(&format!(
            "**The section stopped early:** `{e:#}`; the figures below are those measured before."
        ));
    }
    let rows: Vec<Vec<String>> = out
        .rows
        .iter()
        .map(|(what, measured, target, met)| {
            vec![
                what.clone(),
                measured.clone(),
                target.clone(),
                match met {
                    Some(true) => "yes".into(),
                    Some(false) => "**no**".into(),
                    None => "–".into(),
                },
            ]
        })
        .collect();
    r.table(&["measured", "figure", "target", "met"], &rows);
    let checks: Vec<Vec<String>> = out
        .checks
        .iter()
        .map(|(what, ok, detail)| {
            vec![
                what.clone(),
                if *ok {
                    "ok".into()
                } else {
                    "**FAILED**".into()
                },
                detail.clone(),
            ]
        })
        .collect();
    r.p("Correctness checks (the ones `cargo xtask test`'s scale stage fails on, at 40 000 sockets):");
    r.table(&["check", "result", "detail"], &checks);
    for n in &out.notes {
        r.p(n);
    }
    r.commands(&out.cmds);
    for (what, measured, target, met) in &out.rows {
        if let Some(met) = met {
            r.verdict(
                "8 scale",
                &format!("{what}: {target}"),
                measured.clone(),
                *met,
            );
        }
    }
}
