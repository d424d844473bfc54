//! The daemon's command line as an operator meets it: --help names every flag, --version the
//! crate's version, and a bad flag or value exits 2 with one line saying what is wrong. No root
//! needed: nothing here gets as far as the kernel.
use std::process::Command;
mod service_support;

use service_support::BIN;

#[test]
fn help_version_and_bad_flags() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--web.listen-address",
        "--web.telemetry-path",
        "--web.config.file",
        "--log.level",
        "--log.format",
        "--config.file",
        "--config.check",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("keepalive-daemon {}", env!("CARGO_PKG_VERSION"))
    );
    for (args, want) in [
        (
            &["--log.format", "xml"][..],
            "possible values: logfmt, json",
        ),
        (
            &["--web.listen-adress=1"][..],
            "did you mean '--web.listen-address'",
        ),
        (
            &["--config.file", "/nonexistent.toml"][..],
            "/nonexistent.toml",
        ),
        (
            &["--web.telemetry-path", "/events"][..],
            "is taken by another endpoint",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("");
        assert!(
            first.starts_with("keepalive-daemon: ") && first.contains(want),
            "{args:?}: {err}"
        );
    }
}
