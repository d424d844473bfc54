//! The start-up steps `pipeline::run` takes, in order. Each names what it establishes; any
//! error before `attach` leaves nothing in the kernel, and an error after it drops the
//! `Ebpf`, which detaches everything.
use std::sync::{Arc, Mutex};

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use keepalive_common::{Offsets, RawEvent, Settings};
use log::{info, warn};
use tokio::net::TcpListener;

use crate::{
    error::{Error, Result},
    ingest::decode,
    kernel::{
        attach::{self, Attached, LoadParams},
        btf::KernelBtf,
        calibrate, inventory_offsets,
        loss::KernelLoss,
        offsets, sizing, sysinfo, tracefs,
    },
    service::{
        caps,
        cli::{HookMode, RingSize, RunArgs},
        heap,
    },
    state::{
        inventory::Inventory,
        labels::Attribution,
        owners::Owners,
        workload::{WorkloadConfig, Workloads},
    },
};

/// What the running kernel is, learned before anything is attached.
pub struct KernelFacts {
    pub btf: KernelBtf,
    pub offsets: Offsets,
    pub settings: Settings,
    /// The syscall tracepoints' offsets were found; without them settings changes are unseen.
    pub settings_hooks: bool,
    pub has_done_with_error: bool,
    pub hz: u32,
}

/// Privileges, the BTF (read once), struct offsets, tracefs, the timer callback's address and
/// HZ.
pub fn read_kernel(opts: &RunArgs) -> Result<KernelFacts> {
    sysinfo::check_privileges()?;
    let btf = KernelBtf::read(&opts.btf_path)?;
    let mut offsets = offsets::resolve(&btf.index)?;
    inventory_offsets::fill(&btf.index, &mut offsets)?;
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
        calibrate::keepalive_timer_address(&btf.loader, &offsets),
    ) {
        (_, Ok(addr)) => addr,
        // Only the tracepoint rung filters on the address; forced fentry/kprobe can do without.
        (HookMode::Fentry | HookMode::Kprobe, Err(e)) => {
            warn!("{e}");
            0
        }
        (_, Err(e)) => return Err(e),
    };
    let hz = sysinfo::hz()?;
    let settings = Settings {
        keepalive_timer_fn: timer_fn,
        mib_keepalive: offsets::mib_keepalive(&btf.index)?,
        // TCP_RESOURCE_PROBE_INTERVAL is HZ/2 (include/net/tcp.h), unchanged since 2.6.
        resource_probe_jiffies: hz / 2,
        sock_span: offsets::sock_span(&offsets),
        _pad: 0,
    };
    info!(
        "kernel HZ {hz}, keepalive timer at {timer_fn:#x}, timer member at +{}, socket fields \
         in the first {} bytes",
        offsets.keepalive_timer, settings.sock_span
    );
    Ok(KernelFacts {
        has_done_with_error: offsets::has_done_with_error(&btf.index),
        btf,
        offsets,
        settings,
        settings_hooks,
        hz,
    })
}

/// Binds the web listener. Before attaching: a busy port must not leave programs behind.
pub async fn bind(opts: &RunArgs) -> Result<TcpListener> {
    TcpListener::bind(opts.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: opts.listen.to_string(),
            source,
        })
}

/// Loads the programs and climbs the hook ladder. The BTF is no longer needed afterwards.
/// The maps that hold something per socket are sized from the TCP sockets there are now
/// (`kernel::sizing`); the returned ring sizes (events, run ends) are exported as
/// `keepalive_ring_buffer_bytes` and `keepalive_run_end_ring_bytes`.
pub fn attach(opts: &RunArgs, kernel: KernelFacts) -> Result<(Attached, u32, u32)> {
    let sockets = sizing::tcp_sockets();
    let probing_entries = sizing::probing_entries(sockets);
    let ring_bytes = match opts.ring_bytes {
        RingSize::Auto => sizing::auto_ring_bytes(sockets),
        RingSize::Bytes(n) => n,
    };
    let run_end_bytes = sizing::run_end_ring_bytes(sockets);
    info!(
        "run-end ring {run_end_bytes} bytes: deaths, resets and closes mid-run of up to {} \
         sockets at once, drained before the event ring (a loss there is counted in \
         keepalive_events_lost_total{{stage=\"run_end\"}})",
        u64::from(run_end_bytes) / sizing::RUN_END_RECORD
    );
    info!(
        "{sockets} TCP sockets at start: ring buffer {ring_bytes} bytes ({}), \
         room for {probing_entries} sockets in a probe run at once (a socket beyond that is \
         counted in keepalive_events_lost_total{{stage=\"tracking\"}} and its answer or close \
         is not reported)",
        match opts.ring_bytes {
            RingSize::Auto => "auto: 168 B per socket, 1-64 MiB",
            RingSize::Bytes(_) => "--ring-buffer-bytes",
        }
    );
    let attached = attach::load(&LoadParams {
        offsets: kernel.offsets,
        settings: kernel.settings,
        ring_bytes,
        run_end_bytes,
        probing_entries,
        btf: &kernel.btf.loader,
        btf_path: &opts.btf_path,
        has_done_with_error: kernel.has_done_with_error,
        mode: opts.hook_mode,
        settings_hooks: kernel.settings_hooks,
    })?;
    Ok((attached, ring_bytes, run_end_bytes))
}

/// The maps user space reads: the event ring, the run-end ring, the set of sockets in a probe
/// run, the loss counters.
pub struct Maps {
    pub ring: RingBuf<MapData>,
    pub run_ends: RingBuf<MapData>,
    pub probing: BpfHashMap<MapData, u64, u8>,
    pub loss: KernelLoss,
}

pub fn take_maps(attached: &mut Attached) -> Result<Maps> {
    let loss = KernelLoss::new(&mut attached.ebpf).map_err(Error::Load)?;
    let mut take = |name: &str| {
        attached
            .ebpf
            .take_map(name)
            .ok_or_else(|| Error::Load(format!("map {name} missing")))
    };
    let ring = RingBuf::try_from(take("EVENTS")?).map_err(|e| Error::Load(e.to_string()))?;
    let run_ends = RingBuf::try_from(take("RUN_ENDS")?).map_err(|e| Error::Load(e.to_string()))?;
    let probing = BpfHashMap::try_from(take("PROBING")?).map_err(|e| Error::Load(e.to_string()))?;
    Ok(Maps {
        ring,
        run_ends,
        probing,
        loss,
    })
}

/// Sockets below which start-up scans /proc for their owners beside the walk and waits for it
/// (a few hundred ms at most), so that every socket has its owner when the daemon reports
/// ready; above, the scan runs after start-up (see `first_inventory`).
const WAIT_FOR_OWNERS_BELOW: u64 = 100_000;

/// Every TCP socket that exists now, walked after the hooks are attached (a socket born in
/// between is reported by both, harmlessly). A socket in the middle of a probe run is marked
/// in `probing`: a restart must not lose a run in progress, and the kernel side reports the
/// answer (or the next probe) only for sockets it knows are being probed.
///
/// The walk's records go into the table as the kernel produces them, a chunk at a time, on
/// this thread while the kernel walks the next chunk on another (the whole walk buffered cost
/// 250 bytes a socket of peak memory at a million, and the table waited for the whole walk).
/// Who holds each socket comes from a scan of every process's descriptors: at a million
/// sockets it costs more than the walk (4.1 s against 3.2 s) and, beside it, took a core from
/// it. So on a large host start-up does not scan: the scan is left wanted, the event loop runs
/// it first on a blocking thread and names the owners when it ends (seconds later). Meanwhile
/// the sockets are inventoried, counted and classed, only without their process (no `pid` and
/// `comm` in `/sockets`, counted under no process in the metrics). Returns whether that scan
/// is still to run.
pub fn first_inventory(
    attached: &mut Attached,
    probing: &mut BpfHashMap<MapData, u64, u8>,
    owners: &mut Owners,
    inventory: &Arc<Mutex<Inventory>>,
    hz: u32,
) -> bool {
    let started = std::time::Instant::now();
    let expected = sizing::tcp_sockets();
    let scan = (expected < WAIT_FOR_OWNERS_BELOW).then(|| std::thread::spawn(Owners::scanned));
    let (mut n, mut mid_probe, mut untracked) = (0usize, 0, 0);
    let mut table = std::time::Duration::ZERO;
    let mut inv = inventory.lock().unwrap_or_else(|e| e.into_inner());
    // Room for every socket the kernel counts at once, rather than a table doubled twenty
    // times (each doubling's old table left as a hole).
    inv.reserve(usize::try_from(expected).unwrap_or(0));
    inv.owners_follow = scan.is_none();
    let walked = std::thread::scope(|scope| {
        // A few chunks in flight: the walk runs ahead of the table by that much at most.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let ebpf = &mut attached.ebpf;
        let walker = scope.spawn(move || {
            attach::inventory_each(ebpf, RawEvent::SIZE, &mut |recs| {
                tx.send(recs.to_vec()).is_ok()
            })
        });
        for recs in rx {
            let applying = std::time::Instant::now();
            for rec in decode::records(&recs) {
                let Ok(ev) = decode::decode(rec, hz) else {
                    continue;
                };
                if ev.info.keepalive_on && ev.info.probes_out > 0 {
                    match probing.insert(ev.sk, ev.info.probes_out, 0) {
                        Ok(()) => mid_probe += 1,
                        Err(_) => untracked += 1,
                    }
                }
                inv.apply(&ev, None);
                n += 1;
            }
            table += applying.elapsed();
        }
        walker
            .join()
            .unwrap_or_else(|_| Err("inventory thread panicked".into()))
    });
    inv.owners_follow = false;
    if let Err(e) = walked {
        warn!("startup inventory failed: {e}");
    }
    let owners_at = match scan {
        Some(scan) => {
            let took = owners.install(scan.join().unwrap_or_default());
            let moved = inv.reconcile_owners(owners);
            format!(
                "owners of {moved} from a {:.2} s /proc scan beside it",
                took.as_secs_f64()
            )
        }
        None => {
            // Misses wait for the event loop's scan instead of each starting one.
            owners.defer();
            "owners follow from a /proc scan after start-up".to_string()
        }
    };
    info!(
        "inventory: {n} TCP sockets at startup, {mid_probe} in the middle of a probe run; \
         {:.2} s (table {:.2} s of it, beside the kernel walk); {owners_at}",
        started.elapsed().as_secs_f64(),
        table.as_secs_f64(),
    );
    if untracked > 0 {
        warn!(
            "{untracked} sockets in the middle of a probe run did not fit the PROBING map: \
             their answer, RST or close will not be reported"
        );
    }
    owners.deferred()
}

/// Who sockets belong to: the cgroup2 hierarchy, walked once here and again on a miss.
pub fn attribution() -> Attribution {
    // A cgroup made just before its first socket is only found by a walk: walking at most
    // five times a second names it within 200 ms, and a walk costs a few ms even with
    // thousands of cgroups (a Kubernetes node's).
    let workloads = Workloads::new(WorkloadConfig {
        min_rewalk: std::time::Duration::from_millis(200),
        ..WorkloadConfig::default()
    });
    Attribution::new(workloads.enabled().then_some(workloads))
}

/// Attached and walked: from here on only what `caps::KEPT` lists is needed.
pub fn drop_privileges() -> Result<()> {
    let kept = caps::drop_after_attach()?;
    // Loading parsed the kernel's BTF (several MB of it, for the BTF-typed programs) and the
    // walk buffered every socket: without this the daemon idles at three times its working set.
    heap::release_freed();
    info!("capabilities kept: {}", caps::names(kept).join(" "));
    Ok(())
}
