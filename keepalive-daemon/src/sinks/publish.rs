//! Where published events go: metrics, stdout JSON lines, and the `/events` broadcast.
use std::{io::Write as _, sync::Arc};

use log::{error, warn};
use tokio::sync::broadcast;

use crate::{
    sinks::metrics::Metrics,
    state::event::{Event, EventKind},
    state::inventory::{Effective, Entry},
    state::owners::{Owner, Owners},
    state::paths::PathChange,
    state::tracker::Outcome,
};

pub struct Sinks {
    json: bool,
    events: broadcast::Sender<Arc<str>>,
    pub metrics: Arc<Metrics>,
    pub owners: Owners,
}

impl Sinks {
    pub fn new(json: bool, events: broadcast::Sender<Arc<str>>, metrics: Arc<Metrics>) -> Self {
        Sinks {
            json,
            events,
            metrics,
            owners: Owners::default(),
        }
    }

    pub fn publish(&mut self, out: Outcome, ino: u64) {
        let Outcome::Publish(mut out) = out else {
            return;
        };
        match out.event {
            EventKind::Probe => self.metrics.probes.inc(),
            EventKind::Answered => self.metrics.answered.inc(),
            EventKind::Dead => {
                if let Some(cause) = out.cause {
                    self.metrics.dead.with_label_values(&[cause.as_str()]).inc();
                }
                if let Some(s) = out.detected_after_s {
                    self.metrics.detect_seconds.observe(s);
                }
            }
            EventKind::Settings => {}
        }
        if let Some(owner) = self.owners.lookup(ino) {
            out.pid = Some(owner.pid);
            out.comm = Some(owner.comm);
        }
        self.write(&out);
    }

    /// A `settings` event for a socket whose effective configuration changed.
    pub fn settings(
        &mut self,
        e: &Entry,
        owner: Option<Owner>,
        before: Effective,
        after: Effective,
        ts: String,
    ) {
        let mut out = Event::new(
            EventKind::Settings,
            ts,
            &e.flow,
            e.probes_out,
            e.own,
            "tracepoint",
        );
        out.keepalive = after.into();
        out.previous = Some(before.into());
        if let Some(o) = owner {
            out.pid = Some(o.pid);
            out.comm = Some(o.comm);
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
        self.write_line(line.into());
    }

    fn write(&mut self, out: &Event) {
        self.write_line(out.to_line().into());
    }

    fn write_line(&mut self, line: Arc<str>) {
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
        // No receivers is normal: nobody is reading /events.
        let _ = self.events.send(line);
    }
}
