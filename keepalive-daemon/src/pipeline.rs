//! attach → decode → per-socket state → sinks (stdout JSON, /events, /metrics, /sockets).
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use keepalive_common::Settings;
use log::{error, info, warn};
use tokio::{
    io::unix::AsyncFd,
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::{Notify, broadcast, mpsc},
};

use crate::{
    attach::{self, LoadParams},
    btf::Btf,
    calibrate,
    cli::{HookMode, RunArgs},
    decode::{self, KernelEvent, Kind},
    error::{Error, Result},
    http::{self, Web},
    icmp,
    inventory::{Inventory, resync},
    inventory_offsets, kernel,
    kernel_loss::KernelLoss,
    metrics::Metrics,
    offsets,
    sinks::Sinks,
    sysctl, tracefs,
    tracker::{self, IcmpHit, Tracker},
};

mod inputs;

/// Everything the event loop hears about besides the ring buffer.
pub enum Input {
    Icmp(IcmpHit),
    Defaults(sysctl::Reading),
    Resync(resync::Walked),
}

pub async fn run(opts: RunArgs, web_config: Option<Arc<crate::webconfig::Watched>>) -> Result<()> {
    // Before anything is attached: a SIGTERM at any point must take the orderly way out.
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Config(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Config(e.to_string()))?;
    crate::notify::status("reading kernel BTF and attaching hooks");
    kernel::check_privileges()?;
    let btf = Btf::from_file(&opts.btf_path)?;
    let mut offsets = offsets::resolve(&btf)?;
    inventory_offsets::fill(&btf, &mut offsets)?;
    tracefs::ensure_mounted();
    let settings_hooks = match tracefs::fill(&mut offsets) {
        Ok(()) => true,
        Err(e) => {
            warn!("{e}: keepalive options set after a connection opens will not be seen");
            false
        }
    };
    let timer_fn = match (
        opts.hook_mode,
        calibrate::keepalive_timer_address(&opts.btf_path, &offsets),
    ) {
        (_, Ok(addr)) => addr,
        // Only the tracepoint rung filters on the address; forced fentry/kprobe can do without.
        (HookMode::Fentry | HookMode::Kprobe, Err(e)) => {
            warn!("{e}");
            0
        }
        (_, Err(e)) => return Err(e),
    };
    let settings = Settings {
        keepalive_timer_fn: timer_fn,
        mib_keepalive: offsets::mib_keepalive(&btf)?,
        _pad: 0,
    };
    let hz = kernel::hz()?;
    info!(
        "kernel HZ {hz}, keepalive timer at {timer_fn:#x}, timer member at +{}",
        offsets.keepalive_timer
    );

    // Bind before attaching: a busy port must not leave programs behind.
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: opts.listen.to_string(),
            source,
        })?;

    let mut attached = attach::load(&LoadParams {
        offsets,
        settings,
        ring_bytes: opts.ring_bytes,
        btf_path: &opts.btf_path,
        has_done_with_error: offsets::has_done_with_error(&btf),
        mode: opts.hook_mode,
        settings_hooks,
    })?;
    drop(btf);

    let metrics = Arc::new(Metrics::new());
    metrics.set_hooks(&attached.hooks);
    let metrics_hooks = attached.hooks.clone();
    let kernel_loss = KernelLoss::new(&mut attached.ebpf).map_err(Error::Load)?;
    let mut take = |name: &str| {
        attached
            .ebpf
            .take_map(name)
            .ok_or_else(|| Error::Load(format!("map {name} missing")))
    };
    let ring = RingBuf::try_from(take("EVENTS")?).map_err(|e| Error::Load(e.to_string()))?;

    let inventory = Arc::new(Mutex::new(Inventory::new(opts.idle_budget)));
    let (events_tx, _) = broadcast::channel(opts.events_buffer as usize);
    let mut sinks = Sinks::new(opts.json, events_tx.clone(), metrics.clone());

    // Hooks first, then the walk: a socket born in between is reported by both, harmlessly.
    let mut probing: aya::maps::HashMap<MapData, u64, u8> =
        aya::maps::HashMap::try_from(take("PROBING")?).map_err(|e| Error::Load(e.to_string()))?;
    match attach::inventory(&mut attached.ebpf) {
        Ok((buf, _)) => {
            let mut inv = inventory.lock().unwrap_or_else(|e| e.into_inner());
            let (mut n, mut mid_probe) = (0, 0);
            for rec in decode::records(&buf) {
                if let Ok(ev) = decode::decode(rec, hz) {
                    // A restart must not lose a run in progress: the kernel side reports the
                    // answer (or the next probe) only for sockets it knows are being probed.
                    if ev.info.keepalive_on
                        && ev.info.probes_out > 0
                        && probing.insert(ev.sk, ev.info.probes_out, 0).is_ok()
                    {
                        mid_probe += 1;
                    }
                    let owner = sinks.owners.lookup(ev.ino);
                    inv.apply(&ev, owner);
                    n += 1;
                }
            }
            info!(
                "inventory: {n} TCP sockets at startup, {mid_probe} in the middle of a probe run"
            );
        }
        Err(e) => warn!("startup inventory failed: {e}"),
    }

    // Attached and walked: from here on only what caps::KEPT lists is needed.
    let kept = crate::caps::drop_after_attach()?;
    // Loading parsed the kernel's BTF (several MB of it, for the BTF-typed programs) and the
    // walk buffered every socket: without this the daemon idles at three times its working set.
    release_freed_heap();
    info!("capabilities kept: {}", crate::caps::names(kept).join(" "));

    let web = Arc::new(Web {
        metrics: metrics.clone(),
        events: events_tx,
        kernel_lost: Mutex::new(kernel_loss),
        telemetry_path: opts.telemetry_path.clone(),
        inventory: inventory.clone(),
        events_buffer: opts.events_buffer as usize,
    });
    let scheme = if web_config.as_ref().is_some_and(|w| w.tls_at_start) {
        "https"
    } else {
        "http"
    };
    let server = tokio::spawn(http::serve(listener, http::router(web.clone()), web_config));

    let (input_tx, input_rx) = mpsc::channel(4096);
    let rescan = Arc::new(Notify::new());
    tokio::spawn(icmp::watch(
        input_tx.clone(),
        rescan.clone(),
        metrics.clone(),
    ));
    tokio::spawn(sysctl::poll_defaults(inventory.clone(), input_tx.clone()));
    let attached = Arc::new(Mutex::new(Some(attached)));
    tokio::spawn(crate::rewalk::run(attached.clone(), web, hz, input_tx));

    let state = LoopState {
        hz,
        tracker: Tracker::new(tracker::realtime_offset_ns()),
        inventory,
        sinks,
        rescan,
        namespaces: HashSet::new(),
        audit: crate::unseen::ProbeAudit::default(),
    };
    let events = tokio::spawn(event_loop(ring, input_rx, state));
    info!("attached; serving on {scheme}://{}", opts.listen);
    let hooks: Vec<String> = metrics_hooks
        .iter()
        .map(|h| format!("{}={}", h.hook, h.mode))
        .collect();
    crate::notify::ready(&format!(
        "serving on {scheme}://{}; hooks {}",
        opts.listen,
        hooks.join(" ")
    ));

    tokio::select! {
        _ = term.recv() => info!("SIGTERM: detaching"),
        _ = int.recv() => info!("SIGINT: detaching"),
        r = server => error!("HTTP server stopped: {r:?}"),
        r = events => error!("event loop stopped: {r:?}"),
    }
    crate::notify::stopping("detaching");
    // Dropping the object detaches every program and frees every map; a re-walk in progress
    // finishes first (it holds the lock), a later one finds nothing.
    drop(attached.lock().unwrap_or_else(|e| e.into_inner()).take());
    Ok(())
}

struct LoopState {
    hz: u32,
    tracker: Tracker,
    inventory: Arc<Mutex<Inventory>>,
    sinks: Sinks,
    rescan: Arc<Notify>,
    namespaces: HashSet<u32>,
    audit: crate::unseen::ProbeAudit,
}

async fn event_loop(ring: RingBuf<MapData>, mut input: mpsc::Receiver<Input>, mut st: LoopState) {
    // SAFETY: the AsyncFd owns the ring buffer map and with it its descriptor.
    let mut ring =
        match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => return error!("ring buffer: {e}"),
        };
    // The kernel wakes us at most about once a millisecond while events flow (`wake_flags` in
    // keepalive-ebpf/src/state.rs): the records written in the millisecond after a wake-up wait
    // for a drain on this tick instead. Such records only exist right after a wake-up, so the
    // tick runs fast only after a wake-up or a drain that found records, and slowly otherwise
    // (an idle daemon should not wake 250 times a second; the slow tick only bounds the odd
    // record that a race left unannounced).
    let tick = tokio::time::sleep(DRAIN_TICK);
    tokio::pin!(tick);
    let mut empty_ticks = 0u32;
    loop {
        tokio::select! {
            () = &mut tick => {
                empty_ticks = if st.drain(ring.get_mut()) > 0 { 0 } else { empty_ticks + 1 };
                let next = if empty_ticks < 3 { DRAIN_TICK } else { DRAIN_SLOW };
                tick.as_mut().reset(tokio::time::Instant::now() + next);
            }
            ready = ring.readable_mut() => {
                let Ok(mut guard) = ready else { return };
                st.drain(guard.get_inner_mut());
                guard.clear_ready();
                empty_ticks = 0;
                // An earlier deadline stays: at high rates wake-ups come every millisecond and
                // must not keep postponing the drain of the last burst's tail.
                let soon = tokio::time::Instant::now() + DRAIN_TICK;
                if tick.deadline() > soon {
                    tick.as_mut().reset(soon);
                }
            }
            Some(msg) = input.recv() => match msg {
                Input::Icmp(hit) => st.tracker.icmp(hit),
                Input::Defaults(read) => {
                    st.defaults(read.defaults);
                    st.audit_probes(&read.probes_sent);
                }
                Input::Resync(walked) => st.resync(walked),
            },
        }
    }
}

/// How long an event written without a wake-up waits in the ring buffer at most.
const DRAIN_TICK: std::time::Duration = std::time::Duration::from_millis(2);
/// The drain tick when no event came for a few ticks.
const DRAIN_SLOW: std::time::Duration = std::time::Duration::from_millis(250);

impl LoopState {
    /// Dispatches every record in the ring; returns how many there were.
    fn drain(&mut self, rb: &mut RingBuf<MapData>) -> usize {
        let mut n = 0;
        while let Some(item) = rb.next() {
            n += 1;
            match decode::decode(&item, self.hz) {
                Ok(ev) => self.dispatch(&ev),
                Err(e) => {
                    warn!("malformed kernel record: {e:?}");
                    self.sinks.metrics.lost.with_label_values(&["decode"]).inc();
                }
            }
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
                }
                // The caller itself when the event came from its syscall; otherwise never a
                // /proc scan per connection: misses are resolved with the next poll.
                let owner = match &ev.task {
                    Some((pid, comm)) => Some(crate::owners::Owner {
                        pid: *pid,
                        comm: comm.clone(),
                    }),
                    None => self.sinks.owners.cached(ev.ino),
                };
                let mut inv = self.inventory.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((before, after)) = inv.apply(ev, owner) {
                    let entry = inv.get(ev.sk).map(|e| (e.clone(), inv.owner(e)));
                    drop(inv);
                    if let Some((e, owner)) = entry {
                        self.sinks.settings(
                            &e,
                            owner,
                            before,
                            after,
                            self.tracker.wall_clock(ev.ts_ns),
                        );
                    }
                }
            }
            _ => {
                if ev.kind == Kind::Probe {
                    self.audit.saw_probe(ev.flow.netns);
                }
                self.inventory
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .apply(ev, None);
                let out = self.tracker.handle(ev);
                self.sinks
                    .metrics
                    .probing_sockets
                    .set(self.tracker.probing() as i64);
                self.sinks.publish(out, ev.ino);
            }
        }
    }
}

/// glibc keeps freed heap for reuse, and a table that grew by doubling leaves the smaller
/// tables it outgrew as holes no later allocation fits: RSS then follows the high-water mark,
/// not the sockets that exist. Trimming returns those pages.
pub fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no arguments to get wrong; it only returns whether memory was released.
    unsafe {
        libc::malloc_trim(0);
    }
}
