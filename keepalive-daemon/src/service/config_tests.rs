//! Tests of the config file's parsing and merging with the command line (config.rs).
use std::time::Duration;

use super::*;

const SHIPPED: &str = include_str!("../../../deploy/config.toml");

fn defaults() -> RunArgs {
    cli::try_parse(["keepalive-daemon"]).unwrap().options.run
}

fn with(text: &str) -> Result<RunArgs> {
    let mut run = defaults();
    apply(
        &mut run,
        text,
        Path::new("/etc/keepalive-daemon/config.toml"),
        |_| false,
    )?;
    validate(&run)?;
    Ok(run)
}

/// The shipped file has every key, commented out, at its default: uncommenting all of
/// them changes nothing.
#[test]
fn shipped_file_documents_every_key_at_its_default() {
    let uncommented: String = SHIPPED
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.contains(" = ") || rest.starts_with('[') => rest.to_string(),
            _ => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect();
    // Every key is present (deny_unknown_fields catches misspellings; this catches omissions).
    for key in [
        "json = ",
        "hook-mode = ",
        "ring-buffer-bytes = ",
        "idle-budget = ",
        "[web]",
        "listen-address = ",
        "telemetry-path = ",
        "events-buffer = ",
        "config-file = ",
        "[log]",
        "level = ",
        "format = ",
        "[btf]",
        "path = ",
    ] {
        assert!(
            uncommented.lines().any(|l| l.starts_with(key)),
            "deploy/config.toml lacks {key}"
        );
    }
    let from_file = with(&uncommented).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format!("{from_file:?}"), format!("{:?}", defaults()));
    // And the shipped file as is (all commented) is valid too.
    with(SHIPPED).unwrap();
}

#[test]
fn keys_map_to_settings() {
    let r = with(
        "json = true\nhook-mode = \"tracepoint\"\nring-buffer-bytes = 65536\nidle-budget = \"4m\"\n\
         [web]\nlisten-address = \"[::1]:9999\"\ntelemetry-path = \"/m\"\nevents-buffer = 64\nconfig-file = \"web.yml\"\n\
         [log]\nlevel = \"debug\"\nformat = \"json\"\n[btf]\npath = \"/tmp/vmlinux\"\n",
    )
    .unwrap();
    assert!(r.json);
    assert_eq!(r.hook_mode, HookMode::Tracepoint);
    assert_eq!(r.ring_bytes, cli::RingSize::Bytes(65536));
    assert_eq!(
        with("ring-buffer-bytes = \"auto\"\n").unwrap().ring_bytes,
        cli::RingSize::Auto
    );
    assert_eq!(r.idle_budget, Duration::from_secs(240));
    assert_eq!(r.listen.to_string(), "[::1]:9999");
    assert_eq!(r.telemetry_path, "/m");
    assert_eq!(r.events_buffer, 64);
    assert_eq!(
        r.web_config_file.as_deref(),
        Some(Path::new("/etc/keepalive-daemon/web.yml"))
    );
    assert_eq!(r.log_level, log::LevelFilter::Debug);
    assert_eq!(r.log_format, LogFormat::Json);
    assert_eq!(r.btf_path, Path::new("/tmp/vmlinux"));
    assert_eq!(
        with("idle-budget = 90\n").unwrap().idle_budget,
        Duration::from_secs(90)
    );
}

#[test]
fn flags_win_over_the_file() {
    let parsed = cli::try_parse([
        "keepalive-daemon",
        "--log.level",
        "warn",
        "--web.listen-address",
        "127.0.0.1:1",
    ])
    .unwrap();
    let mut run = parsed.options.run.clone();
    apply(
        &mut run,
        "[log]\nlevel = \"debug\"\nformat = \"json\"\n[web]\nlisten-address = \"127.0.0.1:2\"\n",
        Path::new("c.toml"),
        |id| parsed.explicit(id),
    )
    .unwrap();
    assert_eq!(run.log_level, log::LevelFilter::Warn);
    assert_eq!(run.listen.port(), 1);
    assert_eq!(
        run.log_format,
        LogFormat::Json,
        "keys without a flag on the command line come from the file"
    );
}

/// Each mistake is one line naming the file, the key and what would be right.
#[test]
fn mistakes_are_one_clear_line() {
    for (text, want) in [
        (
            "[web]\nlisten-adress = \"x\"\n",
            "c.toml:2:1: unknown field `listen-adress`",
        ),
        (
            "hook-mode = \"sideways\"\n",
            "hook-mode: \"sideways\" is not one of auto",
        ),
        (
            "ring-buffer-bytes = 1000\n",
            "ring-buffer-bytes: must be `auto` or a power of two",
        ),
        (
            "ring-buffer-bytes = \"big\"\n",
            "ring-buffer-bytes: not a number or `auto`",
        ),
        ("idle-budget = \"5 parsecs\"\n", "idle-budget:"),
        (
            "[web]\nlisten-address = \"localhost\"\n",
            "web.listen-address: \"localhost\" is not an address",
        ),
        (
            "[web]\ntelemetry-path = \"/events\"\n",
            "telemetry-path \"/events\" is taken",
        ),
        ("[web]\nevents-buffer = 2\n", "events-buffer 2 is not in"),
        (
            "[log]\nlevel = \"loud\"\n",
            "log.level: \"loud\" is not one of",
        ),
        ("json = \"yes\"\n", "c.toml:1:8: invalid type"),
        ("[web\n", "c.toml:1:"),
        (
            "[peers.nat]\ncidrs = [\"10.0.0.1/8\"]\n",
            "c.toml: peers.nat.cidrs: \"10.0.0.1/8\" has host bits set",
        ),
        (
            "[peers.nat]\ncidrs = [\"10.0.0.0/8\"]\nidle-budget = \"aws-elb\"\n",
            "peers.nat.idle-budget: ",
        ),
        ("[peers.nat]\ncdirs = []\n", "unknown field `cdirs`"),
    ] {
        let mut run = defaults();
        let err = apply(&mut run, text, Path::new("c.toml"), |_| false)
            .and_then(|()| validate(&run))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text:?}: {err}");
        assert!(!err.contains('\n'), "{text:?}: not one line: {err}");
        assert!(matches!(Error::Config(String::new()).exit_code(), 2));
    }
}
