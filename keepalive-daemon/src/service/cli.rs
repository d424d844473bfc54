//! Command line, following Prometheus exporter habits (`--web.listen-address`, `--log.level`).
//! Every run flag also has a key in the `--config.file` TOML file (see `config.rs`); a flag given
//! on the command line wins over the file.
use std::{ffi::OsString, net::SocketAddr, path::PathBuf};

use std::time::Duration;

pub use crate::kernel::sizing::RingSize;
pub use crate::service::duration::parse_duration;
use clap::{
    ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum,
    error::{ContextKind, ContextValue, ErrorKind},
    parser::ValueSource,
};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// key=value pairs, as Prometheus exporters write them.
    Logfmt,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "keepalive-daemon",
    version,
    about = "Watches TCP keepalive from inside the kernel: probes, answers, deaths and their causes.",
    after_help = "Every flag but --config.* can also be set in the --config.file TOML file; \
                  flags given here win over the file. Operators' guide: docs/operations.md."
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
    /// Only established sockets to a non-local peer that keepalive does not cover (off, or
    /// its idle above the peer group's budget): exposed and at risk.
    #[arg(long = "at-risk")]
    pub at_risk: bool,
    /// Only sockets of this process (name).
    #[arg(long)]
    pub process: Option<String>,
    /// Only sockets of this systemd unit (e.g. redis-server.service).
    #[arg(long)]
    pub unit: Option<String>,
    /// Only sockets of this container (short id).
    #[arg(long)]
    pub container: Option<String>,
    /// Only sockets of this Kubernetes pod (name, or uid when the name is unknown).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only sockets of pods in this Kubernetes namespace.
    #[arg(long = "k8s-namespace")]
    pub k8s_namespace: Option<String>,
    /// Only the server (accepted) or client ends.
    #[arg(long, value_parser = ["client", "server"])]
    pub role: Option<String>,
    /// Only sockets whose peer is in this group (loopback, private, public, or a configured one).
    #[arg(long = "peer-group")]
    pub peer_group: Option<String>,
    /// Only sockets silent longer than their peer group's budget without keepalive to cover
    /// them: the path has probably forgotten them.
    #[arg(long)]
    pub exposed: bool,
    /// Highest risk first: exposed, at risk, covered, then the rest; the longest silent first
    /// within each (the daemon keeps only the riskiest `--limit` while sorting).
    #[arg(long, value_parser = ["risk"])]
    pub sort: Option<String>,
    /// At most this many sockets (1 or more).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Group exposed and at-risk sockets by workload and peer group and say what would cover
    /// them (the /advice document).
    #[arg(long, conflicts_with_all = ["at_risk", "exposed", "port", "comm", "netns", "keepalive"])]
    pub advise: bool,
    /// The daemon to ask.
    #[arg(long = "web.listen-address", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Args)]
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
    #[arg(long = "log.level", default_value = "info", value_parser = parse_log_level)]
    pub log_level: log::LevelFilter,

    /// Log line format. Under systemd (JOURNAL_STREAM set) lines carry no timestamp (the journal
    /// adds its own) and a syslog priority prefix.
    #[arg(long = "log.format", value_enum, default_value = "logfmt")]
    pub log_format: LogFormat,

    /// Web configuration (TLS, client certificates, basic auth) in the Prometheus
    /// exporter-toolkit format (YAML). Without it the endpoints are plain HTTP without auth.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// TOML configuration file; flags given on the command line win over its keys.
    #[arg(long = "config.file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Check the configuration, the web configuration, kernel support (BTF, each hook mode) and
    /// privileges without attaching anything; print one line per problem and exit non-zero if
    /// there is any.
    #[arg(long = "config.check")]
    pub config_check: bool,

    /// Kernel BTF to read structure offsets from.
    #[arg(long = "btf.path", default_value = "/sys/kernel/btf/vmlinux")]
    pub btf_path: PathBuf,

    /// Size of the kernel → daemon ring buffer in bytes (power of two, multiple of the page
    /// size), or `auto`: 168 B per TCP socket found at start (a record for each, so that a
    /// partition in which all of them probe at once fits), 1 MiB to 64 MiB. Events that find it
    /// full are counted in keepalive_events_lost_total.
    #[arg(long = "ring-buffer-bytes", default_value_t = RingSize::Auto, value_parser = parse_ring_size)]
    pub ring_bytes: RingSize,

    /// Events buffered per /events reader before a slow reader is disconnected.
    #[arg(long = "web.events-buffer", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub events_buffer: u32,

    /// A socket is at risk when keepalive is off or its idle exceeds this (e.g. 350s for an AWS
    /// NLB or NAT gateway, 4m for Azure, 10m for GCE). Units: s, m, h; bare numbers are seconds.
    #[arg(long = "idle-budget", default_value = "350s", value_parser = parse_duration)]
    pub idle_budget: Duration,

    /// Workload labels on the workload metric families (probes, answers, deaths, detection
    /// time, sockets by keepalive state): a comma-separated list of unit, container, pod,
    /// k8s_namespace, role, port, peer_group, process; empty for none.
    #[arg(long = "metrics.labels", default_value = crate::service::metric_labels::DEFAULT_LABELS, value_parser = crate::service::metric_labels::parse_list)]
    pub metric_labels: crate::service::metric_labels::MetricLabels,

    /// Label sets per workload family beyond which new ones fold into one `other` series
    /// (counted in keepalive_series_overflow_total).
    #[arg(long = "metrics.series-cap", default_value_t = crate::service::metric_labels::DEFAULT_SERIES_CAP, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub series_cap: u32,

    /// A workload's series are removed once it has had no socket and no event for this long.
    #[arg(long = "metrics.series-ttl", default_value = "10m", value_parser = parse_duration)]
    pub series_ttl: Duration,

    /// Peer groups from the config file's `[peers.<group>]` sections (no flag).
    #[arg(skip)]
    pub peers: Vec<crate::service::peer_config::PeerGroupSpec>,
}

/// What the command line said, and which run flags it said explicitly (those win over the
/// config file).
pub struct Parsed {
    pub options: Options,
    matches: ArgMatches,
}

impl Parsed {
    /// True when the run flag whose field is `id` was given on the command line.
    pub fn explicit(&self, id: &str) -> bool {
        matches!(
            self.matches.value_source(id),
            Some(ValueSource::CommandLine)
        )
    }
}

/// Parses the command line. `--help` and `--version` print and exit 0; anything wrong is one
/// line that names the problem (and the allowed values), a usage hint, and exit code 2.
pub fn parse() -> Parsed {
    match try_parse(std::env::args_os()) {
        Ok(p) => p,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            eprintln!("keepalive-daemon: {}", one_line(&e));
            eprintln!(
                "Usage: keepalive-daemon [OPTIONS] [COMMAND]; try 'keepalive-daemon --help'."
            );
            std::process::exit(2);
        }
    }
}

pub fn try_parse<I, T>(args: I) -> Result<Parsed, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = Options::command().try_get_matches_from(args)?;
    let options = Options::from_arg_matches(&matches)?;
    Ok(Parsed { options, matches })
}

/// clap's message, on one line, with the context it otherwise prints below it.
pub fn one_line(e: &clap::Error) -> String {
    let rendered = e.to_string();
    let first = rendered.lines().next().unwrap_or("bad command line");
    let mut line = first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .trim()
        .to_string();
    let strs = |v: &ContextValue| match v {
        ContextValue::String(s) => vec![s.clone()],
        ContextValue::Strings(v) => v.clone(),
        _ => Vec::new(),
    };
    if let Some(valid) = e
        .get(ContextKind::ValidValue)
        .map(strs)
        .filter(|v| !v.is_empty())
        && !line.contains("possible values")
    {
        line.push_str(&format!(" (possible values: {})", valid.join(", ")));
    }
    if let Some(sugg) = e
        .get(ContextKind::SuggestedArg)
        .map(strs)
        .filter(|v| !v.is_empty())
    {
        line.push_str(&format!(" (did you mean '{}'?)", sugg.join("' or '")));
    }
    line
}

pub fn parse_log_level(s: &str) -> Result<log::LevelFilter, String> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Ok(log::LevelFilter::Error),
        "warn" | "warning" => Ok(log::LevelFilter::Warn),
        "info" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        "trace" => Ok(log::LevelFilter::Trace),
        _ => Err(format!(
            "{s:?} is not one of error, warn, info, debug, trace"
        )),
    }
}

pub fn parse_ring_size(s: &str) -> Result<RingSize, String> {
    if s == "auto" {
        return Ok(RingSize::Auto);
    }
    let n: u32 = s
        .parse()
        .map_err(|e| format!("not a number or `auto`: {e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err("must be `auto` or a power of two of at least 4096".into());
    }
    Ok(RingSize::Bytes(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_for(args: &[&str]) -> String {
        let mut argv = vec!["keepalive-daemon"];
        argv.extend_from_slice(args);
        match try_parse(argv) {
            Ok(_) => panic!("{args:?} parsed"),
            Err(e) => one_line(&e),
        }
    }

    /// The one line printed for a bad command line names the flag and what would be right.
    #[test]
    fn bad_flags_make_one_self_sufficient_line() {
        let l = line_for(&["--hook-mode", "sideways"]);
        assert!(
            l.contains("sideways")
                && l.contains("--hook-mode")
                && l.contains("fentry, kprobe, tracepoint"),
            "{l}"
        );
        let l = line_for(&["--web.listen-adress", "x"]);
        assert!(
            l.contains("--web.listen-adress") && l.contains("did you mean '--web.listen-address'"),
            "{l}"
        );
        let l = line_for(&["--ring-buffer-bytes", "1000"]);
        assert!(
            l.contains("--ring-buffer-bytes") && l.contains("power of two"),
            "{l}"
        );
        let l = line_for(&["--log.format", "xml"]);
        assert!(l.contains("logfmt, json"), "{l}");
        let l = line_for(&["--log.level", "loud"]);
        assert!(
            l.contains("--log.level") && l.contains("error, warn, info"),
            "{l}"
        );
        assert!(!line_for(&["--idle-budget"]).is_empty());
    }

    #[test]
    fn ring_size_is_auto_or_a_power_of_two() {
        let p = try_parse(["keepalive-daemon"]).unwrap();
        assert_eq!(p.options.run.ring_bytes, RingSize::Auto);
        let p = try_parse(["keepalive-daemon", "--ring-buffer-bytes", "auto"]).unwrap();
        assert_eq!(p.options.run.ring_bytes, RingSize::Auto);
        let p = try_parse(["keepalive-daemon", "--ring-buffer-bytes", "8388608"]).unwrap();
        assert_eq!(p.options.run.ring_bytes, RingSize::Bytes(8 << 20));
        for bad in ["1000", "2048", "AUTO", "lots"] {
            let l = line_for(&["--ring-buffer-bytes", bad]);
            assert!(
                l.contains("--ring-buffer-bytes") && l.contains("auto"),
                "{l}"
            );
        }
    }

    #[test]
    fn explicit_flags_are_told_apart_from_defaults() {
        let p = try_parse(["keepalive-daemon", "--log.level", "debug"]).unwrap();
        assert!(p.explicit("log_level"));
        assert!(!p.explicit("listen"));
        assert_eq!(p.options.run.listen.port(), DEFAULT_PORT);
    }

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
