//! Daemon-side checks: its events for each flow against the expectation, its events against the
//! kernel's TCPKeepAlive counter, and its /metrics deltas against its own JSON stream.

use crate::daemon::Daemon;
use crate::event::{CAUSES, Event, Metrics};
use crate::flow::{Expect, Flow};
use anyhow::Result;
use std::time::SystemTime;

pub struct Outcome {
    pub probes: usize,
    /// `probe_failed` events of the scenario's flows.
    pub failed: usize,
    pub detect: Option<f64>,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

/// `start` is the daemon snapshot taken before the scenario; `inodes` are the scenario's client,
/// router and server namespaces (events there that match no flow are unexpected).
pub fn daemon(
    d: &mut Daemon,
    start: (Metrics, usize, bool),
    flows: &[Flow],
    inodes: [u64; 3],
    nstat_keepalive: u64,
    whole_namespace: bool,
    skips_possible: bool,
) -> Result<Outcome> {
    let mut out = Outcome {
        probes: 0,
        failed: 0,
        detect: None,
        failures: Vec::new(),
        notes: Vec::new(),
    };
    if let Some(status) = d.exited() {
        out.failures.push(format!(
            "daemon exited ({status}); stderr: {}",
            d.stderr_tail(10)
        ));
        return Ok(out);
    }
    let end = d.snapshot()?;
    if !start.2 || !end.2 {
        out.failures.push(
            "daemon metrics/events never went quiet for 150 ms: window comparison unreliable"
                .into(),
        );
    }
    let mut events = Vec::new();
    for r in d.received(start.1..end.1) {
        // `path_timeout` events have a schema of their own, checked by the path scenarios.
        let own_schema = || {
            serde_json::from_str::<serde_json::Value>(&r.line)
                .is_ok_and(|v| v["event"] == "path_timeout")
        };
        match r.event {
            Ok(e) => events.push(e),
            Err(_) if own_schema() => {}
            Err(err) => out
                .failures
                .push(format!("malformed JSON line {:?}: {err}", r.line)),
        }
    }
    check_metrics(
        &events,
        &start.0,
        &end.0,
        whole_namespace && skips_possible,
        &mut out.failures,
    );

    let me = Me::current();
    for flow in flows {
        let (settings, evs): (Vec<&Event>, Vec<&Event>) = events
            .iter()
            .filter(|e| e.is_flow(flow.local, flow.peer))
            .partition(|e| e.event == "settings");
        settings::check(flow, &settings, &mut out.failures);
        out.notes.push(format!(
            "daemon {} {}->{}: [{}]",
            flow.label,
            flow.local,
            flow.peer,
            evs.iter().map(|e| e.brief()).collect::<Vec<_>>().join(" ")
        ));
        out.probes += evs.iter().filter(|e| e.event == "probe").count();
        out.failed += evs.iter().filter(|e| e.event == "probe_failed").count();
        let detect = flow::check(flow, &evs, inodes[0], &me, &mut out.failures);
        out.detect = out.detect.or(detect);
    }
    if whole_namespace {
        let n = |kind: &str| {
            events
                .iter()
                .filter(|e| e.netns == inodes[0] && e.event == kind)
                .count()
        };
        out.probes = n("probe");
        out.failed = n("probe_failed");
        out.notes.push(format!(
            "client namespace: {} probe, {} probe_failed, {} answered events",
            out.probes,
            out.failed,
            n("answered")
        ));
        if n("dead") > 0 {
            out.failures
                .push(format!("{} dead events in the storm", n("dead")));
        }
    }
    for e in &events {
        if inodes.contains(&e.netns)
            && !whole_namespace
            && !flows.iter().any(|f| e.is_flow(f.local, f.peer))
        {
            out.failures.push(format!(
                "unexpected event {} {} in a scenario namespace",
                e.brief(),
                e.endpoints()
            ));
        }
    }
    // Every probe the kernel counted is an event: sent (`probe`) or not (`probe_failed`). The
    // daemon's audit of the same counter (`unseen`) is the safety net for runs no hook saw.
    // Only the kprobe rung may need it (`skips_possible`): the kernel skips kprobe programs
    // while another kprobe or classic tracepoint program, or a bpf() map copy, runs on that CPU
    // (docs/unseen-probes.md); 5.12+ also count those skips (`stage="nested"`, at least the
    // timer's entry and exit per skipped run). Anywhere else an unseen probe is a failure.
    let unseen = (end.0.unseen - start.0.unseen) as u64;
    let nested = (end.0.lost_nested - start.0.lost_nested) as u64;
    let events = (out.probes + out.failed) as u64;
    let gap = nstat_keepalive.saturating_sub(events);
    let by_skips = skips_possible && events < nstat_keepalive && 2 * gap <= nested;
    if events + unseen != nstat_keepalive && !by_skips {
        out.failures.push(format!(
            "daemon probe events {} + probe_failed {} + unseen {unseen} != kernel TCPKeepAlive delta {nstat_keepalive} (skipped program runs counted: {nested})",
            out.probes, out.failed
        ));
    } else if skips_possible && (unseen > 0 || nested > 0) {
        out.notes.push(format!(
            "{gap} probes in timer runs the kernel skipped: {unseen} found by the unseen audit, \
             {nested} skipped program runs counted under stage=\"nested\""
        ));
    }
    if unseen > 0 && !skips_possible {
        out.failures.push(format!(
            "daemon counted {unseen} probes that reached no hook (keepalive_probes_unseen_total)"
        ));
    }
    // Every connection the kernel ended on a timeout had its close seen with the error: the
    // audit of TcpExtTCPAbortOnTimeout counts none missing. The close comes from the state-change
    // tracepoint in every mode, which no kprobe skips.
    let closes_unseen = (end.0.closes_unseen - start.0.closes_unseen) as u64;
    if closes_unseen > 0 {
        out.failures.push(format!(
            "daemon counted {closes_unseen} timeout closes that reached no hook \
             (keepalive_timeout_closes_unseen_total)"
        ));
    }
    Ok(out)
}

/// Every counter increment must have exactly one JSON event and vice versa, over all flows.
/// `skips_explained`: hook runs the kernel skipped (`stage="nested"`) are checked against the
/// namespace's probe count by the caller instead of failing here (the storm).
fn check_metrics(
    events: &[Event],
    m0: &Metrics,
    m1: &Metrics,
    skips_explained: bool,
    failures: &mut Vec<String>,
) {
    let count = |kind: &str, cause: Option<&str>| {
        events
            .iter()
            .filter(|e| e.event == kind && (cause.is_none() || e.cause.as_deref() == cause))
            .count() as f64
    };
    let mut pairs = vec![
        (
            "keepalive_probes_total",
            m1.probes - m0.probes,
            count("probe", None),
        ),
        (
            "keepalive_probes_answered_total",
            m1.answered - m0.answered,
            count("answered", None),
        ),
        (
            "keepalive_probes_failed_total",
            m1.failed - m0.failed,
            count("probe_failed", None),
        ),
    ];
    for cause in CAUSES {
        pairs.push((
            "keepalive_dead_connections_total",
            m1.dead(cause) - m0.dead(cause),
            count("dead", Some(cause)),
        ));
    }
    for (i, (name, delta, json)) in pairs.into_iter().enumerate() {
        let label = if i >= 3 {
            format!("{name}{{cause={}}}", CAUSES[i - 3])
        } else {
            name.to_owned()
        };
        if delta != json {
            failures.push(format!(
                "/metrics {label} delta {delta} but {json} JSON events"
            ));
        }
    }
    let nested = m1.lost_nested - m0.lost_nested;
    let lost = m1.lost - m0.lost - nested;
    if lost != 0.0 {
        failures.push(format!(
            "keepalive_events_lost_total grew by {lost} outside stage=\"nested\""
        ));
    }
    if nested != 0.0 && !skips_explained {
        failures.push(format!(
            "keepalive_events_lost_total{{stage=\"nested\"}} grew by {nested}: hook runs the kernel skipped"
        ));
    }
    for e in events {
        if !matches!(
            e.event.as_str(),
            "probe" | "probe_failed" | "answered" | "dead" | "settings"
        ) {
            failures.push(format!("unknown event type {:?}", e.event));
        }
    }
}

pub(super) struct Me {
    pid: u32,
    comm: String,
}

impl Me {
    fn current() -> Me {
        let comm = std::fs::read_to_string("/proc/self/comm")
            .unwrap_or_default()
            .trim_end()
            .to_owned();
        Me {
            pid: std::process::id(),
            comm,
        }
    }
}

mod drops;
mod flow;
mod settings;
#[cfg(test)]
mod tests;
