//! The daemon's one error type. Each variant names the problem in words an operator can act on;
//! `main` prints it on one line and exits with [`Error::exit_code`].
use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad command line or configuration: {0}")]
    Config(String),
    #[error(
        "kernel BTF at {path}: {reason} (this daemon needs a kernel with CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Btf { path: PathBuf, reason: String },
    #[error("kernel structure {0} not found in BTF; this kernel is not supported")]
    MissingType(String),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "cannot find tcp_keepalive_timer's address by arming a keepalive timer on loopback: {0}"
    )]
    Calibration(String),
    #[error(
        "not permitted to load eBPF programs: run as root (CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN)"
    )]
    Privileges,
    #[error("hook {hook} in {mode} mode: the kernel refused it: {reason}")]
    HookRefused {
        hook: &'static str,
        mode: &'static str,
        reason: String,
    },
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("cannot drop capabilities after attaching: {0}")]
    Caps(String),
}

impl Error {
    /// Distinct exit codes so scripts and tests can tell failures apart without parsing text.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => 2,
            Error::Btf { .. } | Error::MissingType(_) => 3,
            Error::Privileges | Error::Caps(_) => 4,
            Error::HookRefused { .. } | Error::Calibration(_) | Error::Load(_) => 5,
            Error::Listen { .. } => 6,
            Error::Io { .. } => 7,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
