//! decode → per-socket state → sinks, per kernel event, on the daemon's own code.
//!
//! It runs the daemon's own library code (decode, tracker, sinks), not a copy; end to end
//! throughput is in keepalive-bench's section 3.

use keepalive_daemon::{
    ingest::decode,
    kernel::clock,
    sinks::{metrics, publish as sinks},
    state::{inventory, labels, owners, tracker},
};
use std::{hint::black_box, os::unix::fs::MetadataExt as _, sync::Arc};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keepalive_common::{EV_ANSWERED, EV_PROBE, FLAG_KEEPALIVE_ON, FLAG_TIMER_PENDING, RawEvent};

/// Sockets in the synthetic storm; each yields a `probe` then an `answered`, as in section 3.
const SOCKETS: usize = 1024;
const HZ: u32 = 250;

fn record(i: usize, kind: u8, ino: u64) -> Vec<u8> {
    let mut saddr = [0u8; 16];
    saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    // Zeroed, then filled: the record grows fields over time, and zero is what the kernel
    // side leaves in the ones it does not set.
    // SAFETY: RawEvent is plain integers; all-zero is a valid value.
    let mut raw: RawEvent = unsafe { std::mem::zeroed() };
    raw.ts_ns = 1_000_000_000 + i as u64 * 1000;
    raw.sk = 0xffff_8880_0000_0000 + (i as u64) * 4096;
    raw.ino = ino;
    raw.kind = kind;
    raw.state = 1;
    raw.probes = 1;
    raw.family = 2;
    raw.sport = 40_000 + i as u16;
    raw.dport = 20_000;
    raw.ns_cnt = 9;
    raw.netns = 4_026_532_000;
    raw.ns_idle_jiffies = HZ;
    raw.ns_intvl_jiffies = HZ;
    raw.saddr = saddr;
    raw.daddr = saddr;
    raw.flags = FLAG_KEEPALIVE_ON | FLAG_TIMER_PENDING;
    raw.probes_out = if kind == EV_PROBE { 1 } else { 0 };
    raw.timer_expires = 4_294_967_290 + 250;
    raw.jiffies = 4_294_967_290;
    // SAFETY: the bytes of a repr(C) value of plain integers.
    unsafe { std::slice::from_raw_parts((&raw const raw).cast::<u8>(), RawEvent::SIZE) }.to_vec()
}

/// `probe, answered` for every socket, interleaved the way a storm delivers them.
fn storm(ino: u64) -> Vec<Vec<u8>> {
    let mut v = Vec::with_capacity(2 * SOCKETS);
    for kind in [EV_PROBE, EV_ANSWERED] {
        for i in 0..SOCKETS {
            v.push(record(i, kind, ino));
        }
    }
    v
}

/// The pipeline of `LoopState::dispatch` for probe events: tracker, the probing gauge, sinks.
struct Pipeline {
    tracker: tracker::Tracker,
    sinks: sinks::Sinks,
    /// What the inventory says of the socket (the daemon looks it up per event).
    labels: labels::SocketLabels,
}

impl Pipeline {
    fn new(tx: tokio::sync::broadcast::Sender<Arc<sinks::Published>>) -> Self {
        let metrics = Arc::new(metrics::Metrics::new());
        Pipeline {
            tracker: tracker::Tracker::new(clock::realtime_offset_ns()),
            sinks: sinks::Sinks::new(false, tx, metrics),
            labels: labels::SocketLabels {
                process: Some("bench".into()),
                unit: Some("bench.service".into()),
                slice: Some("system.slice".into()),
                role: Some(labels::Role::Client),
                peer_group: Some("loopback".into()),
                ..labels::SocketLabels::default()
            },
        }
    }

    fn dispatch(&mut self, ev: &decode::KernelEvent) {
        let out = self.tracker.handle(ev);
        self.sinks
            .metrics
            .probing_sockets
            .set(self.tracker.probing() as i64);
        self.sinks.publish(out, ev.ino, Some(self.labels.clone()));
    }
}

/// Sizes of the per-socket structures, for the memory section of BENCHMARKS.md (written next
/// to criterion's own results, where keepalive-bench reads them).
fn write_sizes() {
    use std::mem::size_of;
    let json = format!(
        "{{\"inventory_entry\":{},\"flow\":{},\"socket_info\":{},\"owner\":{},\"keepalive\":{}}}",
        size_of::<inventory::Entry>(),
        size_of::<decode::Flow>(),
        size_of::<decode::SocketInfo>(),
        size_of::<owners::Owner>(),
        size_of::<decode::Keepalive>()
    );
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/criterion");
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(format!("{dir}/keepalive-sizes.json"), json);
}

fn bench(c: &mut Criterion) {
    write_sizes();
    // A real socket of this process: its owner is found by the one /proc scan below and then
    // served from the cache, as for a long-lived connection in the daemon.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let ino = std::fs::metadata(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&listener)
    ))
    .map(|m| m.ino())
    .unwrap_or(0);
    let records = storm(ino);
    let n = records.len() as u64;
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(n));

    g.bench_function("decode", |b| {
        b.iter(|| {
            for r in &records {
                black_box(decode::decode(black_box(r), HZ).ok());
            }
        })
    });

    g.bench_function("decode_tracker", |b| {
        let mut t = tracker::Tracker::new(clock::realtime_offset_ns());
        b.iter(|| {
            for r in &records {
                if let Ok(ev) = decode::decode(r, HZ) {
                    black_box(t.handle(&ev));
                }
            }
        })
    });

    let (tx, _) = tokio::sync::broadcast::channel(4096);
    let mut p = Pipeline::new(tx);
    p.sinks.owners.lookup(ino);
    g.bench_function("decode_tracker_sinks", |b| {
        b.iter(|| {
            for r in &records {
                if let Ok(ev) = decode::decode(r, HZ) {
                    p.dispatch(&ev);
                }
            }
        })
    });

    // With one /events reader subscribed: each line is also queued, and taken off here as the
    // reader task would (without the socket write).
    let (tx, mut rx) = tokio::sync::broadcast::channel(4096);
    let mut p = Pipeline::new(tx);
    p.sinks.owners.lookup(ino);
    g.bench_function("decode_tracker_sinks_reader", |b| {
        b.iter(|| {
            for r in &records {
                if let Ok(ev) = decode::decode(r, HZ) {
                    p.dispatch(&ev);
                }
                while let Ok(line) = rx.try_recv() {
                    black_box(line);
                }
            }
        })
    });
    g.finish();
    drop(listener);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3)).sample_size(20);
    targets = bench
}
criterion_main!(benches);
