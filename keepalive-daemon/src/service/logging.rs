//! Log lines on stderr in logfmt (`ts=… level=info msg="…"`) or JSON, the formats Prometheus
//! exporters use. When stderr is the journal (systemd sets JOURNAL_STREAM to its device and
//! inode), lines start with a syslog priority (`<6>`) so `journalctl -p warning` works, and
//! carry no timestamp: the journal keeps its own.
use std::{fmt::Write as _, io::Write as _, os::unix::fs::MetadataExt as _};

use log::{Level, LevelFilter};

use crate::service::cli::LogFormat;

pub fn init(level: LevelFilter, format: LogFormat) {
    let journal = stderr_is_journal();
    env_logger::Builder::new()
        .filter_level(level)
        .format(move |buf, record| {
            let ts = (!journal).then(|| {
                chrono::Utc::now()
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string()
            });
            let line = render(
                format,
                ts.as_deref(),
                record.level(),
                &record.args().to_string(),
            );
            if journal {
                write!(buf, "<{}>", priority(record.level()))?;
            }
            writeln!(buf, "{line}")
        })
        .target(env_logger::Target::Stderr)
        .write_style(env_logger::WriteStyle::Never)
        .init();
}

/// The last line of a failed run: `keepalive-daemon: <what went wrong>` on stderr, with the
/// error priority when stderr is the journal.
pub fn fatal(msg: impl std::fmt::Display) {
    let prefix = if stderr_is_journal() { "<3>" } else { "" };
    eprintln!("{prefix}keepalive-daemon: {msg}");
}

/// True when JOURNAL_STREAM names stderr's device and inode (a child that inherited the variable
/// but not the descriptor does not count, as systemd documents).
pub fn stderr_is_journal() -> bool {
    names_stderr(std::env::var("JOURNAL_STREAM").ok().as_deref())
}

fn names_stderr(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(md) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().is_ok_and(|d| d == md.dev())
        && ino.parse::<u64>().is_ok_and(|i| i == md.ino())
}

fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

pub fn render(format: LogFormat, ts: Option<&str>, level: Level, msg: &str) -> String {
    match format {
        LogFormat::Json => {
            let mut obj = serde_json::Map::new();
            if let Some(ts) = ts {
                obj.insert("ts".into(), ts.into());
            }
            obj.insert("level".into(), level_name(level).into());
            obj.insert("msg".into(), msg.into());
            serde_json::Value::Object(obj).to_string()
        }
        LogFormat::Logfmt => {
            let mut s = String::new();
            if let Some(ts) = ts {
                let _ = write!(s, "ts={ts} ");
            }
            let _ = write!(s, "level={} msg={}", level_name(level), logfmt_value(msg));
            s
        }
    }
}

fn logfmt_value(v: &str) -> String {
    if !v.is_empty()
        && !v.contains(|c: char| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control())
    {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_lines() {
        assert_eq!(
            render(
                LogFormat::Logfmt,
                Some("2026-01-01T00:00:00.000Z"),
                Level::Info,
                "attached; serving on http://127.0.0.1:19180"
            ),
            "ts=2026-01-01T00:00:00.000Z level=info msg=\"attached; serving on http://127.0.0.1:19180\""
        );
        assert_eq!(
            render(LogFormat::Logfmt, None, Level::Warn, "x"),
            "level=warn msg=x"
        );
        assert_eq!(
            render(LogFormat::Logfmt, None, Level::Error, "a \"b\"\nc"),
            "level=error msg=\"a \\\"b\\\"\\nc\""
        );
        assert_eq!(
            render(LogFormat::Logfmt, None, Level::Error, ""),
            "level=error msg=\"\""
        );
    }

    #[test]
    fn json_lines() {
        let v: serde_json::Value =
            serde_json::from_str(&render(LogFormat::Json, Some("t"), Level::Debug, "a \"b\""))
                .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ts": "t", "level": "debug", "msg": "a \"b\""})
        );
        let v: serde_json::Value =
            serde_json::from_str(&render(LogFormat::Json, None, Level::Info, "m")).unwrap();
        assert!(v.get("ts").is_none());
    }

    #[test]
    fn journal_needs_the_matching_descriptor() {
        // Not stderr's device and inode: not the journal, whatever the variable says.
        assert!(!names_stderr(Some("1:1")));
        assert!(!names_stderr(None));
        assert!(!names_stderr(Some("garbage")));
        let md = std::fs::metadata("/proc/self/fd/2").unwrap();
        assert!(names_stderr(Some(&format!("{}:{}", md.dev(), md.ino()))));
    }
}
