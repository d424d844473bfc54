//! attach → decode → per-socket state → sinks (stdout JSON, /events, /metrics).
use std::{
    collections::HashSet,
    io::Write as _,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
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
    cli::{HookMode, Options},
    decode::{self, KernelEvent},
    error::{Error, Result},
    event::EventKind,
    http::{self, KernelLost, Web},
    icmp, kernel,
    metrics::Metrics,
    offsets,
    owners::Owners,
    tracker::{self, IcmpHit, Outcome, Tracker},
};

pub async fn run(opts: Options) -> Result<()> {
    let btf = Btf::from_file(&opts.btf_path)?;
    let offsets = offsets::resolve(&btf)?;
    let timer_fn = match (opts.hook_mode, kernel::keepalive_timer_address()) {
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
    info!("kernel HZ {hz}, keepalive timer at {timer_fn:#x}, timer member at +{}", offsets.keepalive_timer);

    // Bind before attaching: a busy port must not leave programs behind.
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| Error::Listen { addr: opts.listen.to_string(), source })?;

    let mut attached = attach::load(&LoadParams {
        offsets,
        settings,
        ring_bytes: opts.ring_bytes,
        btf_path: &opts.btf_path,
        has_done_with_error: offsets::has_done_with_error(&btf),
        mode: opts.hook_mode,
    })?;
    drop(btf);

    let metrics = Arc::new(Metrics::new());
    metrics.set_hooks(&attached.hooks);
    let mut take = |name: &str| attached.ebpf.take_map(name).ok_or_else(|| Error::Load(format!("map {name} missing")));
    let ring = RingBuf::try_from(take("EVENTS")?).map_err(|e| Error::Load(e.to_string()))?;
    let lost: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(take("LOST")?).map_err(|e| Error::Load(e.to_string()))?;

    let (events_tx, _) = broadcast::channel(opts.events_buffer as usize);
    let web = Arc::new(Web {
        metrics: metrics.clone(),
        events: events_tx.clone(),
        kernel_lost: Mutex::new(KernelLost::new(lost)),
        telemetry_path: opts.telemetry_path.clone(),
    });
    let server = tokio::spawn(async move { axum::serve(listener, http::router(web)).await });

    let (icmp_tx, icmp_rx) = mpsc::channel(4096);
    let rescan = Arc::new(Notify::new());
    tokio::spawn(icmp::watch(icmp_tx, rescan.clone(), metrics.clone()));

    let sinks = Sinks { json: opts.json, events: events_tx, metrics: metrics.clone(), owners: Owners::default() };
    let events = tokio::spawn(event_loop(ring, hz, icmp_rx, rescan, sinks));
    info!("attached; serving on http://{}", opts.listen);

    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Config(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Config(e.to_string()))?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: detaching"),
        _ = int.recv() => info!("SIGINT: detaching"),
        r = server => error!("HTTP server stopped: {r:?}"),
        r = events => error!("event loop stopped: {r:?}"),
    }
    // Dropping the object detaches every program and frees every map.
    drop(attached);
    Ok(())
}

struct Sinks {
    json: bool,
    events: broadcast::Sender<Arc<str>>,
    metrics: Arc<Metrics>,
    owners: Owners,
}

async fn event_loop(
    ring: RingBuf<MapData>,
    hz: u32,
    mut icmp_rx: mpsc::Receiver<IcmpHit>,
    rescan: Arc<Notify>,
    mut sinks: Sinks,
) {
    let mut tracker = Tracker::new(tracker::realtime_offset_ns());
    let mut namespaces: HashSet<u32> = HashSet::new();
    // SAFETY: the AsyncFd owns the ring buffer map and with it its descriptor.
    let mut ring = match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => return error!("ring buffer: {e}"),
    };
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let Ok(mut guard) = ready else { return };
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    match decode::decode(&item, hz) {
                        Ok(ev) => {
                            if namespaces.insert(ev.flow.netns) {
                                rescan.notify_one();
                            }
                            publish(&mut tracker, &ev, &mut sinks);
                        }
                        Err(e) => {
                            warn!("malformed kernel record: {e:?}");
                            sinks.metrics.lost.with_label_values(&["decode"]).inc();
                        }
                    }
                }
                guard.clear_ready();
            }
            Some(hit) = icmp_rx.recv() => tracker.icmp(hit),
        }
    }
}

fn publish(tracker: &mut Tracker, ev: &KernelEvent, sinks: &mut Sinks) {
    let Outcome::Publish(mut out) = tracker.handle(ev) else {
        sinks.metrics.probing_sockets.set(tracker.probing() as i64);
        return;
    };
    sinks.metrics.probing_sockets.set(tracker.probing() as i64);
    match out.event {
        EventKind::Probe => sinks.metrics.probes.inc(),
        EventKind::Answered => sinks.metrics.answered.inc(),
        EventKind::Dead => {
            if let Some(cause) = out.cause {
                sinks.metrics.dead.with_label_values(&[cause.as_str()]).inc();
            }
        }
    }
    if let Some(owner) = sinks.owners.lookup(ev.ino) {
        out.pid = Some(owner.pid);
        out.comm = Some(owner.comm);
    }
    let line: Arc<str> = out.to_line().into();
    if sinks.json {
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout.write_all(line.as_bytes()).and_then(|()| stdout.flush()) {
            // A closed stdout (reader gone) must not stop metrics or /events.
            error!("stdout: {e}; JSON output disabled");
            sinks.json = false;
        }
    }
    // No receivers is normal: nobody is reading /events.
    let _ = sinks.events.send(line);
}
