//! The event loop: drains the ring buffer, hands each record through decode → tracker and
//! inventory → sinks, and takes the other inputs (ICMP, namespace polls, re-walks).
use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use log::{error, warn};
use tokio::{
    io::unix::AsyncFd,
    sync::{Notify, mpsc},
};

use crate::{
    ingest::{
        Input,
        decode::{self, KernelEvent, Kind},
        unseen::{self, CounterAudit},
    },
    kernel::clock::monotonic_ns,
    sinks::publish::Sinks,
    state::{
        inventory::Inventory,
        owners::{OwnerCheck, Owners},
        tracker::Tracker,
    },
};

pub(super) struct LoopState {
    pub(super) hz: u32,
    pub(super) tracker: Tracker,
    pub(super) inventory: Arc<Mutex<Inventory>>,
    pub(super) sinks: Sinks,
    pub(super) rescan: Arc<Notify>,
    pub(super) namespaces: HashSet<u32>,
    pub(super) audit: CounterAudit,
    /// TcpExtTCPAbortOnTimeout against the keepalive deaths and the other closes with a
    /// timeout's error.
    pub(super) abort_audit: CounterAudit,
    pub(super) owner_check: OwnerCheck,
    /// A re-walk's records whose activity is still to be taken, and how far it got.
    pub(super) refreshing: Option<(Vec<KernelEvent>, usize)>,
    /// A /proc scan too slow for the event loop is wanted (see `Owners::inline`).
    pub(super) scan_wanted: bool,
    /// Run ends taken from their ring, waiting for the event ring to reach their time.
    pub(super) ends: VecDeque<KernelEvent>,
    /// When the latest `take_ends` began (monotonic ns).
    pub(super) taken_ns: u64,
    /// Every record committed to either ring before this time has been dispatched: the time
    /// the last drain that emptied the event ring began (`inputs.rs` `audit`).
    pub(super) caught_up_ns: u64,
    /// When the kernel counts the audits hold as "previous" arrived.
    pub(super) audited_ns: u64,
}

pub(super) async fn event_loop(
    ring: RingBuf<MapData>,
    run_ends: RingBuf<MapData>,
    mut input: mpsc::Receiver<Input>,
    mut st: LoopState,
) {
    // SAFETY: the AsyncFd owns the ring buffer map and with it its descriptor.
    let mut ring =
        match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => return error!("ring buffer: {e}"),
        };
    // SAFETY: as above, for the run-end ring.
    let mut ends =
        match unsafe { AsyncFd::register_with_interest(run_ends, tokio::io::Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => return error!("run-end ring buffer: {e}"),
        };
    // The kernel wakes us at most once every 5 ms while events flow (`wake_flags` in
    // keepalive-ebpf/src/emit.rs; it counts on the three fast empty ticks below lasting
    // longer): the records written in the milliseconds after a wake-up wait
    // for a drain on this tick instead. Such records only exist right after a wake-up, so the
    // tick runs fast only after a wake-up or a drain that found records, and slowly otherwise
    // (an idle daemon should not wake 250 times a second; the slow tick only bounds the odd
    // record that a race left unannounced).
    let tick = tokio::time::sleep(DRAIN_TICK);
    tokio::pin!(tick);
    let mut empty_ticks = 0u32;
    let mut owner_scan: Option<tokio::task::JoinHandle<Owners>> = None;
    loop {
        st.scan_wanted |= st.sinks.owners.take_wanted();
        if owner_scan.is_none() && std::mem::take(&mut st.scan_wanted) {
            owner_scan = Some(tokio::task::spawn_blocking(Owners::scanned));
        }
        tokio::select! {
            scanned = async { owner_scan.as_mut().expect("guarded").await }, if owner_scan.is_some() => {
                owner_scan = None;
                match scanned {
                    Ok(table) => {
                        let took = st.sinks.owners.install(table);
                        st.owners_scanned(took);
                    }
                    // The table never came: another (start-up may have deferred every
                    // lookup to this one).
                    Err(_) => st.scan_wanted = true,
                }
            }
            () = &mut tick => {
                st.take_ends(ends.get_mut());
                let n = st.drain(ring.get_mut());
                let more = st.refresh_some();
                empty_ticks = if n > 0 { 0 } else { empty_ticks + 1 };
                let next = match (n, empty_ticks) {
                    _ if more => DRAIN_TICK,
                    (MAX_DRAIN.., _) => std::time::Duration::ZERO,
                    (_, 0..3) => DRAIN_TICK,
                    _ => DRAIN_SLOW,
                };
                tick.as_mut().reset(tokio::time::Instant::now() + next);
                if n >= MAX_DRAIN {
                    tokio::task::yield_now().await;
                }
            }
            ready = ring.readable_mut() => {
                let Ok(mut guard) = ready else { return };
                st.take_ends(ends.get_mut());
                let n = st.drain(guard.get_inner_mut());
                // A drain cut short leaves the ring readable: the next turn of the loop comes
                // back for the rest, after the other inputs had their chance.
                if n < MAX_DRAIN {
                    guard.clear_ready();
                }
                drop(guard);
                if n >= MAX_DRAIN {
                    tokio::task::yield_now().await;
                }
                empty_ticks = 0;
                // An earlier deadline stays: at high rates wake-ups come every millisecond and
                // must not keep postponing the drain of the last burst's tail.
                let soon = tokio::time::Instant::now() + DRAIN_TICK;
                if tick.deadline() > soon {
                    tick.as_mut().reset(soon);
                }
            }
            ready = ends.readable_mut() => {
                let Ok(mut guard) = ready else { return };
                st.take_ends(guard.get_inner_mut());
                guard.clear_ready();
                drop(guard);
                st.drain(ring.get_mut());
            }
            Some(msg) = input.recv() => match msg {
                Input::Icmp(hit) => st.tracker.icmp(hit),
                Input::Defaults(read) => {
                    st.defaults(read.defaults);
                    st.audit(&read.probes_sent, &read.timeout_aborts);
                }
                Input::Resync(walked) => st.resync(walked),
            },
        }
    }
}

/// How long an event written without a wake-up waits in the ring buffer at most.
const DRAIN_TICK: std::time::Duration = std::time::Duration::from_millis(2);
/// Records dispatched per drain at most: a drain that never ends (a partition's probes, a
/// re-walk's records, a slow owner lookup) would starve signals, scrapes and the other inputs.
/// 16 384 records take a few ms.
const MAX_DRAIN: usize = 16_384;
/// The drain tick when no event came for a few ticks.
const DRAIN_SLOW: std::time::Duration = std::time::Duration::from_millis(250);

impl LoopState {
    /// Takes the activity of the next `MAX_DRAIN` sockets of a re-walk; whether more remain.
    fn refresh_some(&mut self) -> bool {
        let Some((events, done)) = &mut self.refreshing else {
            return false;
        };
        let end = (*done + MAX_DRAIN).min(events.len());
        self.inventory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refresh(&events[*done..end]);
        *done = end;
        if end < events.len() {
            return true;
        }
        self.refreshing = None;
        // Once the walk's own buffers are gone too.
        crate::service::heap::release_freed();
        false
    }

    /// Takes every record of the run-end ring (deaths, RSTs, closes mid-run) out of the kernel
    /// before each drain of the event ring, so that a flood of probe events can never leave
    /// them without room. They are dispatched in time order with the event ring's records
    /// (`ends_until`): a death before the probe that preceded it would read as a probe after
    /// death. At most one per socket in a run, so the queue stays bounded.
    fn take_ends(&mut self, rb: &mut RingBuf<MapData>) {
        self.taken_ns = monotonic_ns();
        while let Some(item) = rb.next() {
            if let Some(ev) = self.decoded(&item) {
                self.ends.push_back(ev);
            }
        }
    }

    /// A ring record as an event; a malformed one is logged and counted.
    fn decoded(&self, item: &[u8]) -> Option<KernelEvent> {
        decode::decode(item, self.hz)
            .map_err(|e| {
                warn!("malformed kernel record: {e:?}");
                self.sinks.metrics.lost.with_label_values(&["decode"]).inc();
            })
            .ok()
    }

    /// Dispatches what one record stands for: the answer its timer run found first, the
    /// event itself, and the close right after it (`KernelEvent::answered`, `closes`: the
    /// kernel folds them to save ring space at bursts and partitions).
    fn dispatch_record(&mut self, ev: &KernelEvent) {
        let folded = |kind, probes, errno| KernelEvent {
            kind,
            probes,
            errno,
            answered: None,
            closes: false,
            ..ev.clone()
        };
        if let Some(probes) = ev.answered {
            self.dispatch(&folded(Kind::Answered, probes, 0));
        }
        self.dispatch(ev);
        if ev.closes {
            // A death's close carries no error (the death is the timeout the abort audit
            // counts); a close mid-run carries the socket's (keepalive-ebpf `closed_mid_run`).
            let errno = if ev.kind == Kind::Closed { ev.errno } else { 0 };
            self.dispatch(&folded(Kind::Gone, 0, errno));
        }
    }

    /// Dispatches the queued run ends stamped up to `ts_ns`.
    fn ends_until(&mut self, ts_ns: u64) {
        while self.ends.front().is_some_and(|e| e.ts_ns <= ts_ns) {
            if let Some(ev) = self.ends.pop_front() {
                self.dispatch_record(&ev);
            }
        }
    }

    /// Dispatches the records in the ring, `MAX_DRAIN` at most; returns how many there were.
    fn drain(&mut self, rb: &mut RingBuf<MapData>) -> usize {
        let mut n = 0;
        while n < MAX_DRAIN
            && let Some(item) = rb.next()
        {
            n += 1;
            if let Some(ev) = self.decoded(&item) {
                self.ends_until(ev.ts_ns);
                self.dispatch_record(&ev);
            }
        }
        // The event ring is empty: what it had before the queued run ends has been dispatched.
        if n < MAX_DRAIN {
            self.ends_until(u64::MAX);
            self.caught_up_ns = self.taken_ns;
        }
        n
    }

    fn dispatch(&mut self, ev: &KernelEvent) {
        if self.namespaces.insert(ev.flow.netns) {
            self.rescan.notify_one();
        }
        match ev.kind {
            Kind::Open | Kind::Gone | Kind::Settings | Kind::Walked | Kind::Rearmed => {
                if ev.kind == Kind::Gone {
                    self.tracker.handle(ev);
                    if unseen::is_timeout_abort(ev.errno) {
                        self.abort_audit.saw(ev.flow.netns);
                    }
                }
                // The caller itself when the event came from its syscall; otherwise never a
                // /proc scan per connection: misses are resolved with the next poll.
                let owner = match &ev.task {
                    Some((pid, thread)) => Some(self.sinks.owners.from_task(*pid, thread)),
                    None => self.sinks.owners.cached(ev.ino),
                };
                // The thread that made the call, when it is the socket's owner.
                let thread = owner
                    .as_ref()
                    .and_then(|o| Some((o.pid, o.thread.clone()?)));
                let mut inv = self.inventory.lock().unwrap_or_else(|e| e.into_inner());
                if ev.kind == Kind::Gone {
                    inv.paths.forget(ev.sk);
                }
                if let Some((before, after)) = inv.apply(ev, owner) {
                    let entry = inv
                        .get(ev.sk)
                        .map(|e| (e.clone(), inv.flow(e), inv.owner(e), inv.labels(e)));
                    drop(inv);
                    if let Some((e, flow, mut owner, labels)) = entry {
                        if let (Some(o), Some((pid, t))) = (&mut owner, thread)
                            && o.pid == pid
                        {
                            o.thread = Some(t);
                        }
                        self.sinks.settings(
                            (&e, &flow),
                            owner,
                            labels,
                            before,
                            after,
                            self.tracker.wall_clock(ev.ts_ns),
                        );
                    }
                }
            }
            _ => {
                // The kernel's TcpExtTCPKeepAlive counts failed sends too (before transmit).
                if matches!(ev.kind, Kind::Probe | Kind::ProbeFailed) {
                    self.audit.saw(ev.flow.netns);
                }
                // A keepalive death is a timeout abort the kernel counted; its close carries no
                // error, so that it is counted once (keepalive-ebpf ends.rs `state_changed`).
                if ev.kind == Kind::Timeout {
                    self.abort_audit.saw(ev.flow.netns);
                }
                let (labels, owner, path) = {
                    let mut inv = self.inventory.lock().unwrap_or_else(|e| e.into_inner());
                    inv.apply(ev, None);
                    let group = inv.peers.classify(ev.flow.daddr).clone();
                    let ts = self.tracker.wall_clock(ev.ts_ns);
                    let owner = inv.get(ev.sk).and_then(|e| inv.owner(e));
                    (
                        inv.labels_of(ev.sk),
                        owner,
                        inv.paths.observe(ev, &group, ts),
                    )
                };
                if let Some(change) = path {
                    self.sinks.path_timeout(&change);
                }
                let out = self.tracker.handle(ev);
                self.sinks
                    .metrics
                    .probing_sockets
                    .set(self.tracker.probing() as i64);
                self.sinks.publish_owned(out, ev.ino, labels, owner);
            }
        }
    }
}
