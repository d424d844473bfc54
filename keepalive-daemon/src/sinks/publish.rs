//! Where published events go: metrics, stdout JSON lines, and the `/events` broadcast.
use std::{io::Write as _, sync::Arc};

use log::{error, warn};
use tokio::sync::broadcast;

use crate::{
    ingest::decode::Flow,
    sinks::metrics::Metrics,
    state::event::{Cause, Event, EventKind, WallClock},
    state::inventory::{Effective, Entry},
    state::labels::SocketLabels,
    state::owners::{Owner, Owners},
    state::paths::PathChange,
    state::tracker::Outcome,
};

/// One published event as `/events` readers receive it: its JSON line, and what their
/// filters (`socket_filter::EventFilter`) look at, so that no reader parses JSON.
#[derive(Debug)]
pub struct Published {
    pub line: String,
    /// The event's `event` field: probe, answered, dead, settings, path_timeout.
    pub kind: &'static str,
    pub cause: Option<Cause>,
    pub labels: SocketLabels,
}

pub struct Sinks {
    json: bool,
    events: broadcast::Sender<Arc<Published>>,
    pub metrics: Arc<Metrics>,
    pub owners: Owners,
}

impl Sinks {
    pub fn new(
        json: bool,
        events: broadcast::Sender<Arc<Published>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Sinks {
            json,
            events,
            metrics,
            owners: Owners::default(),
        }
    }

    /// A tracker event for the socket with file inode `ino`, whose attribution the inventory
    /// gave (`labels`, empty for a socket it never saw). The owner comes from the socket →
    /// owner table, never from the task the hook ran in (softirq and timers run in whatever
    /// task they interrupted).
    pub fn publish(&mut self, out: Outcome, ino: u64, labels: Option<SocketLabels>) {
        self.publish_owned(out, ino, labels, None);
    }

    /// `publish`, with the owner the inventory knows when it knows one: the owner table is
    /// then not asked (a binary search of every socket on the host).
    pub fn publish_owned(
        &mut self,
        out: Outcome,
        ino: u64,
        labels: Option<SocketLabels>,
        owner: Option<Owner>,
    ) {
        let Outcome::Publish(mut out) = out else {
            return;
        };
        out.labels = labels.unwrap_or_default();
        if let Some(owner) = owner.or_else(|| self.owners.lookup(ino)) {
            out.labels.process = Some(owner.comm.as_str().into());
            out.pid = Some(owner.pid);
            out.comm = Some(owner.comm);
        }
        let w = &self.metrics.workload;
        match out.event {
            EventKind::Probe => w.probe(&out.labels),
            EventKind::ProbeFailed => {
                if let Some(reason) = out.reason {
                    self.metrics
                        .probes_failed
                        .with_label_values(&[reason.as_str()])
                        .inc();
                }
            }
            EventKind::Answered => w.answered(&out.labels),
            EventKind::Dead => {
                if let Some(cause) = out.cause {
                    w.dead(cause, out.detected_after_s, &out.labels);
                }
            }
            EventKind::Settings => {}
        }
        self.write(&out);
    }

    /// A `settings` event for a socket whose effective configuration changed: the entry and
    /// its addresses (`Inventory::flow`).
    pub fn settings(
        &mut self,
        (e, flow): (&Entry, &Flow),
        owner: Option<Owner>,
        labels: SocketLabels,
        before: Effective,
        after: Effective,
        ts: WallClock,
    ) {
        let mut out = Event::new(
            EventKind::Settings,
            ts,
            flow,
            e.probes_out,
            e.own(),
            "tracepoint",
        );
        out.keepalive = after.into();
        out.previous = Some(before.into());
        out.labels = labels;
        if let Some(o) = owner {
            out.pid = Some(o.pid);
            out.comm = Some(o.comm);
            out.thread = o.thread;
        }
        self.metrics.settings_changes.inc();
        self.write(&out);
    }

    /// A `path_timeout` event: a peer group's learned idle-timeout bracket narrowed. A
    /// learned upper bound below the group's budget means the budget is wrong: warned once per
    /// narrowing.
    pub fn path_timeout(&mut self, change: &PathChange) {
        if let (Some(upper), Some(budget)) = (change.upper_s, change.budget_s)
            && upper < f64::from(budget)
        {
            warn!(
                "peer group {}: a middlebox reset a flow after {upper:.1} s of silence, below \
                 its idle budget of {budget} s; lower the group's idle-budget",
                change.peer_group
            );
        }
        let mut line =
            serde_json::to_string(change).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        line.push('\n');
        let labels = SocketLabels {
            peer_group: Some(change.peer_group.as_str().into()),
            ..SocketLabels::default()
        };
        self.write_line(line, change.event, None, labels);
    }

    fn write(&mut self, out: &Event) {
        // Nobody to write to (no --json, no /events reader): no line made, which was most of
        // an event's userspace cost in a probe storm.
        if !self.json && self.events.receiver_count() == 0 {
            return;
        }
        self.write_line(
            out.to_line(),
            out.event.as_str(),
            out.cause,
            out.labels.clone(),
        );
    }

    fn write_line(
        &mut self,
        line: String,
        kind: &'static str,
        cause: Option<Cause>,
        labels: SocketLabels,
    ) {
        if self.json {
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout
                .write_all(line.as_bytes())
                .and_then(|()| stdout.flush())
            {
                // A closed stdout (reader gone) must not stop metrics or /events.
                error!("stdout: {e}; JSON output disabled");
                self.json = false;
            }
        }
        // No receivers is normal: nobody is reading /events; then nothing more is made.
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(Arc::new(Published {
                line,
                kind,
                cause,
                labels,
            }));
        }
    }
}
