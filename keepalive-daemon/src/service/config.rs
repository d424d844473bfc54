//! The `--config.file` TOML file. Its keys are the run flags: `--web.listen-address` is
//! `listen-address` in `[web]`, `--hook-mode` is `hook-mode` at the top. Every key is optional
//! and defaults to the flag's default (`deploy/config.toml` lists them all); a flag given on the
//! command line wins over the file. Relative paths in the file are relative to its directory.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use clap::ValueEnum as _;
use serde::Deserialize;

use crate::{
    error::{Error, Result},
    service::{
        cli::{self, HookMode, LogFormat, Parsed, RunArgs},
        metric_labels, peer_config,
    },
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    json: Option<bool>,
    hook_mode: Option<String>,
    ring_buffer_bytes: Option<RingBytes>,
    idle_budget: Option<Duration>,
    #[serde(default)]
    web: Web,
    #[serde(default)]
    log: Log,
    #[serde(default)]
    btf: Btf,
    #[serde(default)]
    metrics: MetricsSection,
    /// `[peers.<group>]`: networks and their idle budgets (`peer_config`).
    #[serde(default)]
    peers: BTreeMap<String, peer_config::PeerFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Web {
    listen_address: Option<String>,
    telemetry_path: Option<String>,
    events_buffer: Option<u32>,
    config_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Log {
    level: Option<String>,
    format: Option<String>,
}

/// `[metrics]`: the workload labels and their bounds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MetricsSection {
    labels: Option<Vec<String>>,
    series_cap: Option<u32>,
    series_ttl: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Btf {
    path: Option<PathBuf>,
}

/// `"auto"` or a number of bytes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RingBytes {
    Text(String),
    Bytes(u64),
}

/// `"350s"`, `"5m"` or a bare number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Duration {
    Text(String),
    Seconds(u64),
}

/// Paths the HTTP server serves itself; the telemetry path must not take one of them.
const RESERVED_PATHS: &[&str] = &["/", "/events", "/sockets", "/advice", "/healthz"];

/// The effective run settings: defaults, then the config file, then explicit flags.
pub fn resolve(parsed: &Parsed) -> Result<RunArgs> {
    let mut run = parsed.options.run.clone();
    if let Some(path) = run.config_file.clone() {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))?;
        apply(&mut run, &text, &path, |id| parsed.explicit(id))?;
    }
    validate(&run)?;
    Ok(run)
}

/// Overlays the file's keys on `run`, except where `explicit(field)` says the command line set it.
fn apply(
    run: &mut RunArgs,
    text: &str,
    path: &Path,
    explicit: impl Fn(&str) -> bool,
) -> Result<()> {
    let file: File = toml::from_str(text).map_err(|e| Error::Config(toml_error(path, text, &e)))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let bad = |key: &str, why: String| {
        Error::Config(format!("config file {}: {key}: {why}", path.display()))
    };
    let take = |id: &str| !explicit(id);

    if let (true, Some(v)) = (take("json"), file.json) {
        run.json = v;
    }
    if let (true, Some(v)) = (take("hook_mode"), &file.hook_mode) {
        run.hook_mode = HookMode::from_str(v, true).map_err(|_| {
            bad(
                "hook-mode",
                format!("{v:?} is not one of auto, fentry, kprobe, tracepoint"),
            )
        })?;
    }
    if let (true, Some(v)) = (take("ring_bytes"), &file.ring_buffer_bytes) {
        let text = match v {
            RingBytes::Text(s) => s.clone(),
            RingBytes::Bytes(n) => n.to_string(),
        };
        run.ring_bytes = cli::parse_ring_size(&text).map_err(|e| bad("ring-buffer-bytes", e))?;
    }
    if let (true, Some(v)) = (take("idle_budget"), &file.idle_budget) {
        let text = match v {
            Duration::Text(s) => s.clone(),
            Duration::Seconds(n) => n.to_string(),
        };
        run.idle_budget = cli::parse_duration(&text).map_err(|e| bad("idle-budget", e))?;
    }
    if let (true, Some(v)) = (take("listen"), &file.web.listen_address) {
        run.listen = v.parse::<SocketAddr>().map_err(|_| {
            bad(
                "web.listen-address",
                format!("{v:?} is not an address like 127.0.0.1:19180 or [::1]:19180"),
            )
        })?;
    }
    if let (true, Some(v)) = (take("telemetry_path"), &file.web.telemetry_path) {
        run.telemetry_path = v.clone();
    }
    if let (true, Some(v)) = (take("events_buffer"), file.web.events_buffer) {
        run.events_buffer = v;
    }
    if let (true, Some(v)) = (take("web_config_file"), &file.web.config_file) {
        run.web_config_file = (!v.as_os_str().is_empty()).then(|| dir.join(v));
    }
    if let (true, Some(v)) = (take("log_level"), &file.log.level) {
        run.log_level = cli::parse_log_level(v).map_err(|e| bad("log.level", e))?;
    }
    if let (true, Some(v)) = (take("log_format"), &file.log.format) {
        run.log_format = LogFormat::from_str(v, true)
            .map_err(|_| bad("log.format", format!("{v:?} is not one of logfmt, json")))?;
    }
    if let (true, Some(v)) = (take("btf_path"), &file.btf.path) {
        run.btf_path = dir.join(v);
    }
    if let (true, Some(v)) = (take("metric_labels"), &file.metrics.labels) {
        run.metric_labels =
            metric_labels::parse_list(&v.join(",")).map_err(|e| bad("metrics.labels", e))?;
    }
    if let (true, Some(v)) = (take("series_cap"), file.metrics.series_cap) {
        if !(1..=100_000).contains(&v) {
            return Err(bad(
                "metrics.series-cap",
                format!("{v} is not in 1..=100000"),
            ));
        }
        run.series_cap = v;
    }
    if let (true, Some(v)) = (take("series_ttl"), &file.metrics.series_ttl) {
        let text = match v {
            Duration::Text(s) => s.clone(),
            Duration::Seconds(n) => n.to_string(),
        };
        run.series_ttl = cli::parse_duration(&text).map_err(|e| bad("metrics.series-ttl", e))?;
    }
    run.peers = peer_config::parse(&file.peers)
        .map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))?;
    Ok(())
}

/// Checks that span flags and file alike (clap checks single values; these are the cross-field
/// and range rules).
pub fn validate(run: &RunArgs) -> Result<()> {
    let p = &run.telemetry_path;
    if !p.starts_with('/') || p.len() < 2 || p.contains(['?', '#', ' ', '{', '}', '*']) {
        return Err(Error::Config(format!(
            "web.telemetry-path {p:?} must be a plain absolute path like /metrics"
        )));
    }
    if RESERVED_PATHS.contains(&p.as_str()) {
        return Err(Error::Config(format!(
            "web.telemetry-path {p:?} is taken by another endpoint ({})",
            RESERVED_PATHS.join(", ")
        )));
    }
    if !(16..=1_048_576).contains(&run.events_buffer) {
        return Err(Error::Config(format!(
            "web.events-buffer {} is not in 16..=1048576",
            run.events_buffer
        )));
    }
    Ok(())
}

/// One line: file, line, column and what is wrong (toml's own rendering spans several lines).
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before
                .rfind('\n')
                .map_or(before.len(), |i| before.len() - i - 1)
                + 1;
            format!("config file {}:{line}:{col}: {msg}", path.display())
        }
        None => format!("config file {}: {msg}", path.display()),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
