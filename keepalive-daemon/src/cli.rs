//! Command line, following Prometheus exporter habits (`--web.listen-address`, `--log.level`).
use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, ValueEnum};

/// Default port: the Prometheus exporter range 9100-9999 is fully allocated, so we sit outside
/// it on a port no well-known exporter or IANA-registered service uses.
pub const DEFAULT_PORT: u16 = 19180;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookMode {
    /// Best rung per hook: fentry/fexit, then kprobe, then tracepoint.
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

impl HookMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HookMode::Auto => "auto",
            HookMode::Fentry => "fentry",
            HookMode::Kprobe => "kprobe",
            HookMode::Tracepoint => "tracepoint",
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "keepalive-daemon",
    version,
    about = "Watches TCP keepalive from inside the kernel: probes, answers, deaths and their causes."
)]
pub struct Options {
    /// Write every event as one JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,

    /// Which hook family to use; a forced family the kernel refuses is an error.
    #[arg(long = "hook-mode", value_enum, default_value = "auto")]
    pub hook_mode: HookMode,

    /// Address for /metrics, /events, /healthz. Loopback by default: events name peers and
    /// processes (see docs/security.md).
    #[arg(long = "web.listen-address", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    pub listen: SocketAddr,

    /// Path of the metrics endpoint.
    #[arg(long = "web.telemetry-path", default_value = "/metrics")]
    pub telemetry_path: String,

    /// error, warn, info, debug or trace.
    #[arg(long = "log.level", default_value = "info")]
    pub log_level: log::LevelFilter,

    /// Kernel BTF to read structure offsets from.
    #[arg(long = "btf.path", default_value = "/sys/kernel/btf/vmlinux")]
    pub btf_path: PathBuf,

    /// Size of the kernel → daemon ring buffer in bytes (power of two, multiple of the page
    /// size). Events that find it full are counted in keepalive_events_lost_total.
    #[arg(long = "ring-buffer-bytes", default_value_t = 256 * 1024, value_parser = parse_ring_size)]
    pub ring_bytes: u32,

    /// Events buffered per /events reader before a slow reader is disconnected.
    #[arg(long = "web.events-buffer", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub events_buffer: u32,
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err("must be a power of two of at least 4096".into());
    }
    Ok(n)
}
