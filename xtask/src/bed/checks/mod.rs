//! Judges the test bed's records (target/bed/<kernel>/results, written by guest.sh). Each check
//! reads the raw output of the command the guest ran and compares it with what the project
//! documents: the capability sets in docs/operations.md, the unit's bounding set, the exposure
//! ceiling the deploy checks enforce offline.

mod bpf;
mod journal;
mod privileges;

use std::{
    collections::HashMap,
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

/// The service and the client address guest.sh sets up.
const SERVICE: &str = "redis-server.service";
const CLIENT: &str = "10.231.0.2";
const CONNECTIONS: usize = 2;

pub struct Report {
    pub passed: usize,
    pub failed: Vec<String>,
    /// Lines worth quoting in a note: the live score, the capability sets, the death.
    pub evidence: Vec<String>,
}

struct Records<'a>(&'a Path);

/// One check: the records in, evidence lines out, an error saying what differed.
type Check = dyn Fn(&Records, &mut Vec<String>) -> Result<()>;

impl Records<'_> {
    fn text(&self, name: &str) -> String {
        fs::read_to_string(self.0.join(name)).unwrap_or_default()
    }
    fn rc(&self, name: &str) -> Option<i32> {
        self.text(&format!("{name}.rc")).trim().parse().ok()
    }
    /// `systemctl show` output as a map.
    fn props(&self, name: &str) -> HashMap<String, String> {
        self.text(name)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
    fn json(&self, name: &str) -> Result<Value> {
        serde_json::from_str(&self.text(name)).with_context(|| format!("{name} is not JSON"))
    }
}

pub fn judge(dir: &Path) -> Result<Report> {
    let r = Records(dir);
    let mut report = Report {
        passed: 0,
        failed: Vec::new(),
        evidence: Vec::new(),
    };
    let checks: &[(&str, &Check)] = &[
        ("the boot finished with no failed unit", &booted),
        ("apt installs the package", &|r, _| rc_zero(r, "install")),
        ("the unit is active (running) through READY=1", &ready),
        (
            "systemd-analyze security on the live unit",
            &privileges::exposure,
        ),
        (
            "the process holds exactly the documented capabilities",
            &privileges::capabilities,
        ),
        ("/metrics passes promtool check metrics", &|r, _| {
            promtool(&r.text("metrics-installed"))
        }),
        ("systemctl restart relearns the connections", &relearned),
        (
            "an upgrade keeps the config edit and restarts the service",
            &upgraded,
        ),
        (
            "the death is counted with the service's unit label",
            &death_metrics,
        ),
        (
            "the death is in the journal with the unit label",
            &journal::death_journal,
        ),
        (
            "the journal holds the daemon's lines at their priorities",
            &journal::priorities,
        ),
        (
            "a broken config fails the unit with an error line",
            &journal::broken_config,
        ),
        (
            "systemctl stop leaves no program or link attached",
            &bpf::detached,
        ),
        ("apt purge removes the config and the unit", &purged),
    ];
    for (name, check) in checks {
        match check(&r, &mut report.evidence) {
            Ok(()) => report.passed += 1,
            Err(e) => report.failed.push(format!("{name}: {e:#}")),
        }
    }
    Ok(report)
}

fn rc_zero(r: &Records, name: &str) -> Result<()> {
    match r.rc(name) {
        Some(0) => Ok(()),
        rc => bail!("`{name}` exited {rc:?}: {}", tail(&r.text(name))),
    }
}

pub(super) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

fn booted(r: &Records, ev: &mut Vec<String>) -> Result<()> {
    let state = r.text("system-running");
    ensure!(
        state.trim() == "running",
        "is-system-running says {:?} (journal-all has the failed units)",
        state.trim()
    );
    ev.push(format!(
        "{} on {}",
        r.text("boot-time").lines().next().unwrap_or(""),
        r.text("kernel").trim()
    ));
    Ok(())
}

fn ready(r: &Records, _: &mut Vec<String>) -> Result<()> {
    let p = r.props("show-installed");
    let want = [
        // Type=notify: systemd calls the unit active only once READY=1 arrives.
        ("Type", "notify"),
        ("ActiveState", "active"),
        ("SubState", "running"),
        ("NRestarts", "0"),
        ("UnitFileState", "enabled"),
    ];
    for (k, v) in want {
        ensure!(
            p.get(k).map(String::as_str) == Some(v),
            "{k}={:?}, expected {v}",
            p.get(k)
        );
    }
    // STATUS= comes with READY=1 (service/notify.rs): the daemon's own line, not systemd's.
    ensure!(
        p.get("StatusText").is_some_and(|s| !s.is_empty()),
        "no StatusText: the daemon sent no STATUS= with READY=1"
    );
    Ok(())
}

fn promtool(metrics: &str) -> Result<()> {
    use std::io::Write as _;
    ensure!(metrics.contains("keepalive_"), "empty or foreign scrape");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(metrics.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn relearned(r: &Records, ev: &mut Vec<String>) -> Result<()> {
    let before = r.props("show-installed");
    let after = r.props("show-restarted");
    ensure!(
        after.get("ActiveState").map(String::as_str) == Some("active"),
        "after restart: {after:?}"
    );
    ensure!(
        after.get("MainPID") != before.get("MainPID"),
        "MainPID unchanged"
    );
    let rows = r.json("sockets-restarted")?;
    let rows = rows.as_array().context("/sockets is not an array")?;
    let ours: Vec<&Value> = rows
        .iter()
        .filter(|s| s["sport"] == 6379 && s["daddr"] == CLIENT)
        .collect();
    for s in &ours {
        ensure!(
            s["unit"] == SERVICE
                && s["keepalive"] == true
                && s["idle_s"] == 2
                && s["intvl_s"] == 1
                && s["cnt"] == 3
                && s["comm"] == "redis-server",
            "a connection relearned wrong: {s}"
        );
    }
    ensure!(
        ours.len() == CONNECTIONS,
        "/sockets?unit={SERVICE} lists {} of the {CONNECTIONS} client connections",
        ours.len()
    );
    ev.push(format!(
        "after restart /sockets?unit={SERVICE}: {} rows, both client connections with idle 2 intvl 1 cnt 3",
        rows.len()
    ));
    Ok(())
}

fn upgraded(r: &Records, ev: &mut Vec<String>) -> Result<()> {
    rc_zero(r, "upgrade")?;
    let version = r.text("version-upgraded");
    ensure!(version.contains("+bedupgrade"), "installed: {version:?}");
    ensure!(
        r.text("config-upgraded").contains("json = true"),
        "the edit to the conffile is gone: {:?}",
        r.text("config-upgraded")
    );
    let before = r.props("show-restarted");
    let after = r.props("show-upgraded");
    ensure!(
        after.get("ActiveState").map(String::as_str) == Some("active")
            && after.get("MainPID") != before.get("MainPID"),
        "not restarted by the upgrade: before {before:?}, after {after:?}"
    );
    ev.push(format!("upgraded to {}", version.trim().replace('\t', " ")));
    Ok(())
}

fn death_metrics(r: &Records, ev: &mut Vec<String>) -> Result<()> {
    let metrics = r.text("metrics-dead");
    promtool(&metrics)?;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("keepalive_dead_connections_total{")
                && l.contains("cause=\"timeout\"")
                && l.contains(&format!("unit=\"{SERVICE}\""))
        })
        .context(
            "no keepalive_dead_connections_total{cause=\"timeout\",unit=\"redis-server.service\"}",
        )?;
    ev.push(line.to_owned());
    ensure!(
        line.ends_with(&format!(" {CONNECTIONS}")),
        "expected {CONNECTIONS} deaths: {line}"
    );
    Ok(())
}

fn purged(r: &Records, _: &mut Vec<String>) -> Result<()> {
    rc_zero(r, "purge")?;
    ensure!(
        r.rc("etc-after-purge") != Some(0),
        "/etc/keepalive-daemon survives: {}",
        r.text("etc-after-purge")
    );
    ensure!(
        r.rc("unit-after-purge") != Some(0),
        "the unit survives purge"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Records of a guest that did nothing: no check may pass on them.
    #[test]
    fn nothing_recorded_passes_nothing() {
        std::env::set_current_dir(crate::exec::workspace_root()).unwrap();
        let empty = std::env::temp_dir().join(format!("bed-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let report = super::judge(&empty).unwrap();
        std::fs::remove_dir_all(&empty).unwrap();
        assert_eq!(report.passed, 0, "{:?}", report.evidence);
        assert_eq!(report.failed.len(), 14);
    }
}
