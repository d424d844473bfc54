//! Kernel cost per program: each of the daemon's BPF programs next to an empty program on the
//! same hook, in the same windows, from the kernel's own run_time_ns / run_cnt
//! (kernel.bpf_stats_enabled=1).
//!
//! Two places measure it, because the host refuses two of the daemon's three hook rungs:
//! `host` (section 1) measures the tracepoint rung on the host kernel; `vm` (section 1b) the
//! fentry and kprobe rungs inside the 6.1 guest `cargo xtask bench` boots. Both reduce their
//! windows with `stats` and load the hooks with the same RST churn, so the two sections'
//! figures are computed alike and can be read side by side.
use crate::holder::HoldOpts;

pub mod host;
mod stats;
pub mod vm;

/// Connections opened and closed with a RST, on the storm's options (its namespace, keepalive
/// on): they cross the accept, setsockopt, state-change and reset hooks (tcp_done_with_error on
/// the fentry and kprobe rungs), each an inventory event, and probe at idle = intvl = 1 s, three
/// probes. `connections` at a time, `churn` of them replaced a second.
fn rst_churn(storm: &HoldOpts, connections: usize, churn: u32) -> HoldOpts {
    HoldOpts {
        connections,
        churn,
        rst: true,
        idle: Some(1),
        intvl: Some(1),
        cnt: Some(3),
        ..storm.clone()
    }
}
