//! Section 3b, the criterion micro-benchmark (benches/pipeline.rs): per-event cost of the daemon's own
//! decode → tracker → sinks code, without the kernel, the ring buffer or wake-ups.
use std::process::Command;

use anyhow::{Context as _, Result};
use serde::Deserialize;

use crate::{Ctx, report::num, sys};

const BENCHES: &[(&str, &str)] = &[
    ("decode", "decode a ring-buffer record"),
    (
        "decode_tracker",
        "+ per-socket state (tracker) and the RFC 3339 timestamp",
    ),
    (
        "decode_tracker_sinks",
        "+ metrics, owner lookup (cached), JSON line, broadcast with no reader",
    ),
    (
        "decode_tracker_sinks_reader",
        "+ one `/events` reader taking each line off the broadcast",
    ),
];

/// Events per iteration in benches/pipeline.rs (1024 sockets × probe + answered).
const PER_ITER: f64 = 2048.0;

#[derive(Deserialize)]
struct Estimate {
    point_estimate: f64,
}

#[derive(Deserialize)]
struct Estimates {
    median: Estimate,
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let cmd = "cargo bench -p keepalive-bench --bench pipeline";
    // The bench profile inherits release: with the daemon and this crate already built in
    // release by `cargo xtask bench`, only the benchmark itself compiles here.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    sys::run(Command::new(cargo).args(["bench", "-p", "keepalive-bench", "--bench", "pipeline"]))?;
    let mut rows = Vec::new();
    let mut full = f64::NAN;
    for (id, what) in BENCHES {
        let path = format!("target/criterion/pipeline/{id}/new/estimates.json");
        let e: Estimates =
            serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| path.clone())?)?;
        let ns_per_event = e.median.point_estimate / PER_ITER;
        let rate = 1e9 / ns_per_event;
        if *id == "decode_tracker_sinks_reader" {
            full = rate;
        }
        rows.push(vec![
            format!("`{id}`"),
            (*what).to_string(),
            num(ns_per_event),
            num(rate),
        ]);
    }
    let r = &mut ctx.report;
    r.h2("3b. Event pipeline micro-benchmark (criterion)");
    r.p("`benches/pipeline.rs` runs the daemon's own library code: `ingest::decode`, `state::tracker` and \
         `state::event`, `sinks::publish` and `sinks::metrics`, `state::owners` (end to end the kernel and \
         wake-ups dominate — section 3 has that). A synthetic storm of 1024 \
         sockets, each a `probe` then an `answered` event, is run through the steps of `LoopState::dispatch`; \
         criterion median of 20 samples, one CPU, nothing else of the bench running.");
    r.table(
        &["benchmark", "steps", "ns per event", "events/s on one CPU"],
        &rows,
    );
    if let Ok(text) = std::fs::read_to_string("target/criterion/keepalive-sizes.json")
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
    {
        let b = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        r.p(&format!(
                "Sizes of the per-socket structures as compiled (`size_of`, bytes; section 4 explains what they \
                 cost per socket): inventory `Entry` {} (of which `Flow` {}, `SocketInfo` {}, owner `Owner` {} plus \
                 its `comm` string on the heap, own `Keepalive` {}).",
                b("inventory_entry"), b("flow"), b("socket_info"), b("owner"), b("keepalive")
            ));
    }
    r.commands(&[cmd.to_string()]);
    r.verdict(
        "3b micro-benchmark",
        "≥ 50 000 events/s (decode → state → sinks)",
        format!("{} events/s", num(full)),
        full >= 50_000.0,
    );
    Ok(())
}
