//! The pipeline assembled: kernel → ingest → state → sinks. `run` is the daemon's life as a
//! sequence of named steps (`startup`), the event loop that joins the stages (`event_loop`,
//! `inputs`), and the orderly exit; `check` runs the same kernel steps without attaching.
use std::collections::VecDeque;
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use log::{error, info};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{Notify, broadcast, mpsc},
};

use crate::{
    error::{Error, Result},
    ingest::{activity::ActivityWalk, icmp, rewalk, sysctl, unseen::CounterAudit},
    kernel::{
        attach::{Attached, HookStatus},
        clock,
    },
    service::{cli::RunArgs, notify, webconfig::Watched},
    sinks::{
        http::{self, Web},
        metrics::Metrics,
        publish::Sinks,
    },
    state::{inventory::Inventory, owners::OwnerCheck, peers::Peers, tracker::Tracker},
};

pub mod check;
mod event_loop;
mod inputs;
mod startup;

pub async fn run(opts: RunArgs, web_config: Option<Arc<Watched>>) -> Result<()> {
    // Before anything is attached: a SIGTERM at any point must take the orderly way out.
    let mut signals = Signals::install()?;
    notify::status("reading kernel BTF and attaching hooks");
    let kernel = startup::read_kernel(&opts)?;
    let hz = kernel.hz;
    let listener = startup::bind(&opts).await?;
    let (mut attached, ring_bytes, run_end_bytes) = startup::attach(&opts, kernel)?;
    let mut maps = startup::take_maps(&mut attached)?;
    let hooks = attached.hooks.clone();

    let metrics = Arc::new(Metrics::with_labels(
        &opts.metric_labels.0,
        opts.series_cap,
        opts.series_ttl,
    ));
    metrics.set_hooks(&attached.hooks);
    metrics.ring_bytes.set(i64::from(ring_bytes));
    metrics.run_end_ring_bytes.set(i64::from(run_end_bytes));
    let budget_s = u32::try_from(opts.idle_budget.as_secs()).unwrap_or(u32::MAX);
    let inventory = Arc::new(Mutex::new(
        Inventory::new(opts.idle_budget).with_peers(Peers::new(budget_s, &opts.peers)),
    ));
    lock(&inventory).set_attribution(startup::attribution());
    let (events_tx, _) = broadcast::channel(opts.events_buffer as usize);
    let mut sinks = Sinks::new(opts.json, events_tx.clone(), metrics.clone());
    // What was lost before the start-up walk began: that walk covers it (`rewalk::run`).
    metrics.add_kernel_lost(maps.loss.refresh());
    let lost_before_walk = metrics.lost_or_unseen();
    let scan_wanted = startup::first_inventory(
        &mut attached,
        &mut maps.probing,
        &mut sinks.owners,
        &inventory,
        hz,
    );
    startup::drop_privileges()?;

    let attached = Arc::new(Mutex::new(Some(attached)));
    let web = Arc::new(Web {
        metrics: metrics.clone(),
        events: events_tx,
        kernel_lost: Mutex::new(maps.loss),
        telemetry_path: opts.telemetry_path.clone(),
        inventory: inventory.clone(),
        events_buffer: opts.events_buffer as usize,
        activity: Arc::new(ActivityWalk::new(attached.clone(), hz)),
        settle: Default::default(),
    });
    let scheme = match web_config.as_ref().is_some_and(|w| w.tls_at_start) {
        true => "https",
        false => "http",
    };
    let server = tokio::spawn(http::serve(listener, http::router(web.clone()), web_config));

    let (input_rx, rescan) = spawn_inputs(&attached, &web, hz, lost_before_walk);
    let state = event_loop::LoopState {
        hz,
        tracker: Tracker::new(clock::realtime_offset_ns()),
        inventory,
        sinks,
        rescan,
        namespaces: HashSet::new(),
        audit: CounterAudit::default(),
        abort_audit: CounterAudit::default(),
        owner_check: OwnerCheck::new(),
        refreshing: None,
        scan_wanted,
        ends: VecDeque::new(),
        taken_ns: 0,
        caught_up_ns: 0,
        audited_ns: 0,
    };
    let events = tokio::spawn(event_loop::event_loop(
        maps.ring,
        maps.run_ends,
        input_rx,
        state,
    ));
    info!("attached; serving on {scheme}://{}", opts.listen);
    notify::ready(&format!(
        "serving on {scheme}://{}; hooks {}",
        opts.listen,
        hook_list(&hooks)
    ));

    tokio::select! {
        why = signals.next() => info!("{why}: detaching"),
        r = server => error!("HTTP server stopped: {r:?}"),
        r = events => error!("event loop stopped: {r:?}"),
    }
    notify::stopping("detaching");
    // Dropping the object detaches every program and frees every map; a re-walk in progress
    // finishes first (it holds the lock), a later one finds nothing.
    drop(attached.lock().unwrap_or_else(|e| e.into_inner()).take());
    Ok(())
}

/// The inputs besides the ring buffer, each its own task sending to the event loop: ICMP
/// errors (rescanned when the loop meets a new namespace), the namespace sysctl poll and the
/// inventory re-walk.
fn spawn_inputs(
    attached: &Arc<Mutex<Option<Attached>>>,
    web: &Arc<Web>,
    hz: u32,
    lost_before_walk: u64,
) -> (mpsc::Receiver<crate::ingest::Input>, Arc<Notify>) {
    let (tx, rx) = mpsc::channel(4096);
    let rescan = Arc::new(Notify::new());
    tokio::spawn(icmp::watch(
        tx.clone(),
        rescan.clone(),
        web.metrics.icmp_counters(),
    ));
    let inv = web.inventory.clone();
    tokio::spawn(sysctl::poll_defaults(
        move || lock(&inv).namespaces(),
        tx.clone(),
    ));
    let (w, begin, abandon) = (web.clone(), web.inventory.clone(), web.inventory.clone());
    let callbacks = rewalk::Callbacks {
        lost: Box::new(move || {
            let lost = lock(&w.kernel_lost).refresh();
            w.metrics.add_kernel_lost(lost);
            w.metrics.lost_or_unseen()
        }),
        begin: Box::new(move || lock(&begin).begin_walk()),
        abandon: Box::new(move || lock(&abandon).abandon_walk()),
    };
    tokio::spawn(rewalk::run(
        attached.clone(),
        callbacks,
        hz,
        tx,
        lost_before_walk,
    ));
    (rx, rescan)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn hook_list(hooks: &[HookStatus]) -> String {
    let list: Vec<String> = hooks
        .iter()
        .map(|h| format!("{}={}", h.hook, h.mode))
        .collect();
    list.join(" ")
}

/// SIGTERM and SIGINT, installed first.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        let install = |kind| signal(kind).map_err(|e| Error::Config(e.to_string()));
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
