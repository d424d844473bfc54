//! Command line, following Prometheus exporter habits (`--web.listen-address`, `--log.level`).
use std::{net::SocketAddr, path::PathBuf};

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every TCP socket's keepalive settings, as a running daemon sees them.
    Sockets(SocketsArgs),
}

#[derive(Debug, Args)]
pub struct SocketsArgs {
    /// Print JSON (the /sockets document) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only sockets with this local or remote port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only sockets owned by a process with this name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only sockets in this network namespace (inode).
    #[arg(long)]
    pub netns: Option<u32>,
    /// Only sockets with SO_KEEPALIVE on or off.
    #[arg(long, value_parser = ["on", "off"])]
    pub keepalive: Option<String>,
    /// Only sockets at risk (keepalive off, or idle above the daemon's --idle-budget).
    #[arg(long = "at-risk")]
    pub at_risk: bool,
    /// The daemon to ask.
    #[arg(long = "web.listen-address", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    pub listen: SocketAddr,
}

#[derive(Debug, Args)]
pub struct RunArgs {
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

    /// A socket is at risk when keepalive is off or its idle exceeds this (e.g. 350s for an AWS
    /// NLB or NAT gateway, 4m for Azure, 10m for GCE). Units: s, m, h; bare numbers are seconds.
    #[arg(long = "idle-budget", default_value = "350s", value_parser = parse_duration)]
    pub idle_budget: Duration,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 350s, 5m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unit must be s, m or h")),
    };
    if secs == 0 {
        return Err("must be greater than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err("must be a power of two of at least 4096".into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("350s"), Ok(Duration::from_secs(350)));
        assert_eq!(parse_duration("4m"), Ok(Duration::from_secs(240)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("m").is_err());
    }
}
