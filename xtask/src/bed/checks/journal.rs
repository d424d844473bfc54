//! The daemon's lines in the journal: its events (with `json = true`), the syslog priorities of
//! its log lines, and the one error line of a failed start.

use std::collections::HashMap;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use super::{CLIENT, CONNECTIONS, Records, SERVICE};

/// The journal's entries for the unit (`journalctl -o json`: one object per line).
fn journal(r: &Records) -> Vec<Value> {
    r.text("journal")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn message(e: &Value) -> &str {
    e["MESSAGE"].as_str().unwrap_or("")
}

/// Entries the daemon itself wrote (systemd's own lines about the unit are excluded).
fn daemon_lines(entries: &[Value]) -> impl Iterator<Item = &Value> {
    entries
        .iter()
        .filter(|e| e["SYSLOG_IDENTIFIER"] == "keepalive-daemon")
}

pub(super) fn death_journal(r: &Records, ev: &mut Vec<String>) -> Result<()> {
    let entries = journal(r);
    let deaths: Vec<(&Value, Value)> = daemon_lines(&entries)
        .filter_map(|e| Some((e, serde_json::from_str::<Value>(message(e)).ok()?)))
        .filter(|(_, m)| m["event"] == "dead" && m["unit"] == SERVICE)
        .collect();
    ensure!(
        deaths.len() == CONNECTIONS,
        "{} dead events for {SERVICE} in the journal, expected {CONNECTIONS} (one per connection)",
        deaths.len()
    );
    for (entry, event) in &deaths {
        ensure!(
            event["cause"] == "timeout" && event["daddr"] == CLIENT,
            "{event}"
        );
        ensure!(
            entry["PRIORITY"] == "6",
            "an event at priority {}",
            entry["PRIORITY"]
        );
    }
    ev.push(format!("journal: {}", message(deaths[0].0)));
    Ok(())
}

pub(super) fn priorities(r: &Records, ev: &mut Vec<String>) -> Result<()> {
    let entries = journal(r);
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for e in daemon_lines(&entries) {
        let msg = message(e);
        let prio = e["PRIORITY"].as_str().unwrap_or("?");
        // A prefix the journal did not take as a priority would show up in the text.
        ensure!(
            !(msg.starts_with('<') && msg[1..].starts_with(|c: char| c.is_ascii_digit())),
            "an unparsed priority prefix: {msg}"
        );
        for (level, want) in [
            ("level=info", "6"),
            ("level=warn", "4"),
            ("level=error", "3"),
        ] {
            if msg.contains(level) {
                ensure!(prio == want, "{level} line at priority {prio}: {msg}");
                *seen.entry(level).or_default() += 1;
            }
        }
    }
    ensure!(
        daemon_lines(&entries)
            .any(|e| message(e).contains("capabilities kept") && e["PRIORITY"] == "6"),
        "no `capabilities kept` info line"
    );
    ev.push(format!("journal priorities by level: {seen:?}"));
    Ok(())
}

pub(super) fn broken_config(r: &Records, ev: &mut Vec<String>) -> Result<()> {
    ensure!(r.rc("start-broken") != Some(0), "systemctl start succeeded");
    let p = r.props("show-broken");
    ensure!(
        p.get("Result").map(String::as_str) == Some("exit-code")
            && p.get("ExecMainStatus").is_some_and(|s| s != "0"),
        "{p:?}"
    );
    let entries = journal(r);
    let errors: Vec<&str> = daemon_lines(&entries)
        .filter(|e| e["PRIORITY"] == "3")
        .map(message)
        .collect();
    let line = errors
        .iter()
        .find(|m| m.contains("sideways"))
        .with_context(|| format!("no error line names the bad value: {errors:?}"))?;
    ev.push(format!(
        "broken config: exit {}, journal (priority 3): {line}",
        p["ExecMainStatus"]
    ));
    Ok(())
}
