//! Prometheus metrics. Every label has a fixed, small set of values (listed per metric), so
//! the series count does not grow with connections, peers or processes.
use std::time::Duration;

use prometheus::{
    Encoder as _, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{
    ingest::icmp::IcmpCounters,
    kernel::{attach::HookStatus, loss::Lost},
    service::metric_labels::{self, MetricLabel},
    sinks::workload_metrics::WorkloadMetrics,
};

pub struct Metrics {
    registry: Registry,
    /// Probes, answers, deaths by cause and detection time, by workload.
    pub workload: WorkloadMetrics,
    /// Probes the namespace's TcpExtTCPKeepAlive counted that no event reported.
    pub probes_unseen: IntCounter,
    /// Connections the namespace's TcpExtTCPAbortOnTimeout counted whose close no event
    /// reported (keepalive deaths among them went unreported).
    pub closes_unseen: IntCounter,
    /// `reason`: see [`crate::state::event::FailReason`].
    pub probes_failed: IntCounterVec,
    /// `stage`: kernel (ring buffer full) | run_end (the run-end ring full: a death, RST or
    /// close mid-run not reported) | nested (hook run skipped) | tracking (a socket that
    /// found the kernel's set of sockets in a probe run full) | decode (malformed record) | icmp
    /// (ICMP queue full).
    pub lost: IntCounterVec,
    pub readers_dropped: IntCounter,
    pub readers: IntGauge,
    pub probing_sockets: IntGauge,
    pub icmp_unreachable: IntCounter,
    pub icmp_namespaces: IntGauge,
    pub icmp_namespaces_skipped: IntCounter,
    /// `hook`: keepalive_timer | probe_sent | death | state_change | reset;
    /// `mode`: fentry | kprobe | tracepoint.
    pub hook_mode: IntGaugeVec,
    pub settings_changes: IntCounter,
    /// Size of the kernel → daemon ring buffer, chosen at start.
    pub ring_bytes: IntGauge,
    /// Size of the ring for deaths, resets and closes mid-run, chosen at start.
    pub run_end_ring_bytes: IntGauge,
    /// `change`: added (an open that was lost) | removed (a close that was lost).
    pub resync: IntCounterVec,
}

pub use super::workload_metrics::TIME_BUCKETS;

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    /// Kernel-side losses read since the last scrape or re-walk check.
    pub fn add_kernel_lost(&self, lost: Lost) {
        self.lost.with_label_values(&["kernel"]).inc_by(lost.ring);
        self.lost
            .with_label_values(&["run_end"])
            .inc_by(lost.run_end);
        self.lost.with_label_values(&["nested"]).inc_by(lost.nested);
        self.lost
            .with_label_values(&["tracking"])
            .inc_by(lost.tracking);
    }

    /// Events lost where an open or close could have been among them, plus probes the kernel
    /// counted that no event reported: what tells the re-walk the inventory may be off.
    pub fn lost_or_unseen(&self) -> u64 {
        let events: u64 = ["kernel", "nested", "decode"]
            .iter()
            .map(|s| self.lost.with_label_values(&[s]).get())
            .sum();
        events + self.probes_unseen.get() + self.closes_unseen.get()
    }

    /// Handles for the ICMP input's counters.
    pub fn icmp_counters(&self) -> IcmpCounters {
        IcmpCounters {
            unreachable: self.icmp_unreachable.clone(),
            namespaces: self.icmp_namespaces.clone(),
            namespaces_skipped: self.icmp_namespaces_skipped.clone(),
            lost: self.lost.with_label_values(&["icmp"]),
        }
    }

    /// With the default workload labels and bounds.
    pub fn new() -> Self {
        let labels = metric_labels::parse_list(metric_labels::DEFAULT_LABELS).unwrap_or_default();
        Self::with_labels(
            &labels.0,
            metric_labels::DEFAULT_SERIES_CAP,
            metric_labels::DEFAULT_SERIES_TTL,
        )
    }

    pub fn with_labels(labels: &[MetricLabel], cap: u32, ttl: Duration) -> Self {
        let r = Registry::new();
        let workload = WorkloadMetrics::new(&r, labels, cap, ttl);
        let lost = IntCounterVec::new(
            Opts::new(
                "keepalive_events_lost_total",
                "Events lost before reaching the sinks, by stage.",
            ),
            &["stage"],
        )
        .expect("valid metric");
        r.register(Box::new(lost.clone())).expect("unique metric");
        for s in ["kernel", "nested", "tracking", "decode", "icmp"] {
            lost.with_label_values(&[s]);
        }
        let hook_mode = IntGaugeVec::new(
            Opts::new(
                "keepalive_hook_mode",
                "Hook family in use for each logical hook (1 = in use).",
            ),
            &["hook", "mode"],
        )
        .expect("valid metric");
        r.register(Box::new(hook_mode.clone()))
            .expect("unique metric");
        let build = IntGaugeVec::new(
            Opts::new("keepalive_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build.clone())).expect("unique metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let resync = IntCounterVec::new(
            Opts::new(
                "keepalive_inventory_resync_corrections_total",
                "Sockets the periodic re-walk of the kernel's socket tables added to or removed from the inventory.",
            ),
            &["change"],
        )
        .expect("valid metric");
        r.register(Box::new(resync.clone())).expect("unique metric");
        for c in ["added", "removed"] {
            resync.with_label_values(&[c]);
        }
        let probes_failed = IntCounterVec::new(
            Opts::new(
                "keepalive_probes_failed_total",
                "Keepalive probes the kernel counted (TcpExtTCPKeepAlive) but could not send; it retries in 0.5 s.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        r.register(Box::new(probes_failed.clone()))
            .expect("unique metric");
        for reason in crate::state::event::FailReason::ALL {
            probes_failed.with_label_values(&[reason.as_str()]);
        }
        Metrics {
            resync,
            probes_failed,
            workload,
            settings_changes: counter(
                &r,
                "keepalive_settings_changes_total",
                "Changes of a socket's effective keepalive configuration.",
            ),
            probes_unseen: counter(
                &r,
                "keepalive_probes_unseen_total",
                "Keepalive probes the kernel counted (TcpExtTCPKeepAlive of the namespace) that no probe event reported.",
            ),
            closes_unseen: counter(
                &r,
                "keepalive_timeout_closes_unseen_total",
                "Connections the kernel ended on a timeout (TcpExtTCPAbortOnTimeout of the namespace: keepalive, retransmission or zero-window probes giving up) that no close event reported; a keepalive death among them was not reported.",
            ),
            lost,
            readers_dropped: counter(
                &r,
                "keepalive_event_readers_dropped_total",
                "/events readers disconnected for falling behind.",
            ),
            readers: gauge(
                &r,
                "keepalive_event_readers",
                "/events readers connected now.",
            ),
            probing_sockets: gauge(
                &r,
                "keepalive_probing_sockets",
                "Sockets with keepalive probes outstanding now.",
            ),
            icmp_unreachable: counter(
                &r,
                "keepalive_icmp_unreachable_total",
                "ICMP destination-unreachable errors quoting a TCP segment.",
            ),
            icmp_namespaces: gauge(
                &r,
                "keepalive_icmp_watched_namespaces",
                "Network namespaces whose ICMP errors are watched.",
            ),
            icmp_namespaces_skipped: counter(
                &r,
                "keepalive_icmp_namespaces_skipped_total",
                "Namespaces not watched because the cap was reached.",
            ),
            ring_bytes: gauge(
                &r,
                "keepalive_ring_buffer_bytes",
                "Size of the kernel to daemon event ring buffer (--ring-buffer-bytes, auto: sized from the TCP sockets at start).",
            ),
            run_end_ring_bytes: gauge(
                &r,
                "keepalive_run_end_ring_bytes",
                "Size of the kernel to daemon ring for what ends a probe run (deaths, resets, closes mid-run), sized from the sockets at start and drained first.",
            ),
            hook_mode,
            registry: r,
        }
    }

    pub fn set_hooks(&self, hooks: &[HookStatus]) {
        for h in hooks {
            self.hook_mode.with_label_values(&[h.hook, h.mode]).set(1);
        }
        // Registered here, once, so the metric set stays as it was where nothing is refused.
        let refused = IntGaugeVec::new(
            Opts::new(
                "keepalive_hook_rung_refused",
                "A rung of the hook ladder the kernel refused in auto mode (1), with its reason.",
            ),
            &["hook", "rung", "reason"],
        )
        .expect("valid metric");
        if self.registry.register(Box::new(refused.clone())).is_err() {
            return;
        }
        for h in hooks {
            for (rung, reason) in &h.refused {
                refused.with_label_values(&[h.hook, rung, reason]).set(1);
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
