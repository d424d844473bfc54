//! What the event loop does with its inputs other than the ring buffer: the periodic
//! namespace poll (defaults, probe audit, owners, sweep) and a finished re-walk.
use std::collections::HashMap;

use log::{debug, info, warn};

use super::event_loop::LoopState;
use crate::{
    ingest::{rewalk::Walked, sysctl::NsDefaults},
    kernel::clock::monotonic_ns,
};

/// The kernel counts a probe just before the program's event is committed: an audit waits for
/// the rings to be drained this long past the counts it compares.
const AUDIT_MARGIN_NS: u64 = 50_000_000;

/// Sockets moved by one owner check above which the heap is trimmed after it.
const MANY_MOVED: usize = 16_384;
/// Sockets reconciled per hold of the inventory lock: a few ms.
const RECONCILE_CHUNK: usize = 16_384;

impl LoopState {
    pub(super) fn defaults(&mut self, all: HashMap<u32, NsDefaults>) {
        self.resolve_owners();
        self.check_owners();
        self.inventory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refresh_attribution();
        let swept = self.tracker.sweep(monotonic_ns());
        if swept > 0 {
            warn!("{swept} probe runs ended unseen (events lost); forgotten");
            self.sinks
                .metrics
                .probing_sockets
                .set(self.tracker.probing() as i64);
        }
        let now = self.tracker.wall_clock(monotonic_ns());
        for (netns, d) in all {
            let mut inv = self.inventory.lock().unwrap_or_else(|e| e.into_inner());
            let changed = inv.set_defaults(netns, d);
            let entries: Vec<_> = changed
                .iter()
                .filter_map(|(sk, b, a)| {
                    let e = inv.get(*sk)?;
                    Some((e.clone(), inv.flow(e), inv.owner(e), inv.labels(e), *b, *a))
                })
                .collect();
            drop(inv);
            for (e, flow, owner, labels, before, after) in entries {
                self.sinks
                    .settings((&e, &flow), owner, labels, before, after, now);
            }
        }
    }

    /// The kernel's counts against the events dispatched (see `unseen`). Each audit compares
    /// the counts of the previous audited poll with the events dispatched by now, so it runs
    /// only once every record committed before those counts arrived has been dispatched:
    /// in a 200 000-socket partition the daemon fell seconds behind the kernel, and comparing
    /// one poll late took 107 000 deaths still on their way for unseen ones. While the rings
    /// never run empty, audits wait.
    pub(super) fn audit(&mut self, probes_sent: &HashMap<u32, u64>, aborts: &HashMap<u32, u64>) {
        if self.caught_up_ns < self.audited_ns.saturating_add(AUDIT_MARGIN_NS) {
            return;
        }
        self.audited_ns = monotonic_ns();
        self.audit_probes(probes_sent);
        self.audit_aborts(aborts);
    }

    /// Probes the kernel counted that no event reported (see `unseen`): counted and said.
    fn audit_probes(&mut self, sent: &HashMap<u32, u64>) {
        for (netns, n) in self.audit.audit(sent) {
            self.sinks.metrics.probes_unseen.inc_by(n);
            warn!(
                "{n} keepalive probes sent in network namespace {netns} reached no hook \
                 (kernel TcpExtTCPKeepAlive ahead of the probe events); counted in \
                 keepalive_probes_unseen_total"
            );
        }
    }

    /// Connections the kernel ended on a timeout whose close no event reported: a keepalive
    /// death among them went unreported (the kernel called none of our programs for it,
    /// docs/unseen-probes.md), so it is counted and said.
    fn audit_aborts(&mut self, aborts: &HashMap<u32, u64>) {
        for (netns, n) in self.abort_audit.audit(aborts) {
            self.sinks.metrics.closes_unseen.inc_by(n);
            warn!(
                "{n} connections in network namespace {netns} ended on a timeout with no close \
                 event (kernel TcpExtTCPAbortOnTimeout ahead of the closes seen); any keepalive \
                 death among them is not reported; counted in keepalive_timeout_closes_unseen_total"
            );
        }
    }

    pub(super) fn resync(&mut self, walked: Walked) {
        let owners = &self.sinks.owners;
        let c = {
            let mut inv = self.inventory.lock().unwrap_or_else(|e| e.into_inner());
            inv.reconcile(&walked, |ino| owners.cached(ino))
        };
        // The walk read every socket's activity too: taken in chunks between drains (see
        // `refresh_some`), since a million sockets under one hold stalled events for seconds.
        self.refreshing = Some((walked.events, 0));
        if c.added + c.removed > 0 {
            info!(
                "inventory re-walk: {} sockets added, {} removed (their events were lost)",
                c.added, c.removed
            );
            self.sinks
                .metrics
                .resync
                .with_label_values(&["added"])
                .inc_by(c.added as u64);
            self.sinks
                .metrics
                .resync
                .with_label_values(&["removed"])
                .inc_by(c.removed as u64);
        }
    }

    /// Who holds each socket now (see `OwnerCheck`): a socket handed to a forked worker or over
    /// a Unix socket, or whose owner exited, is attributed to its holder again.
    fn check_owners(&mut self) {
        let pids = self
            .inventory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .owner_pids();
        if !self.owner_check.due(&pids) {
            return;
        }
        if !self.sinks.owners.inline() {
            // Seconds at a few hundred thousand sockets: on a blocking thread instead.
            self.scan_wanted = true;
            return;
        }
        let took = self.sinks.owners.rescan_now();
        self.owners_scanned(took);
    }

    /// After a /proc scan, here or on a blocking thread: the next check, and every socket
    /// that changed hands (or had no owner) takes the one the scan names.
    pub(super) fn owners_scanned(&mut self, took: std::time::Duration) {
        self.owner_check.done(took);
        // A chunk per hold of the lock (see `reconcile_owners_at`).
        let (mut moved, mut from) = (0, Some(0));
        while let Some(at) = from {
            let (n, next) = self
                .inventory
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reconcile_owners_at(&self.sinks.owners, at, RECONCILE_CHUNK);
            moved += n;
            from = next;
        }
        if moved > 0 {
            debug!("owner check: {moved} sockets changed hands ({took:?} /proc scan)");
        }
        // The scan's tables and the list of moved sockets were the size of the inventory
        // (after a start-up that left the owners to this scan, every socket moved).
        if moved >= MANY_MOVED {
            crate::service::heap::release_freed();
        }
    }

    /// Owners of sockets that had no file when first seen (accepted sockets), or whose owner
    /// lookup hit the rescan rate limit. Runs with each sysctl poll.
    fn resolve_owners(&mut self) {
        let unowned = self
            .inventory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unowned();
        let found: Vec<_> = unowned
            .into_iter()
            .filter_map(|(sk, ino)| Some((sk, self.sinks.owners.lookup(ino)?)))
            .collect();
        let mut inv = self.inventory.lock().unwrap_or_else(|e| e.into_inner());
        for (sk, owner) in found {
            inv.set_owner(sk, owner);
        }
    }
}
