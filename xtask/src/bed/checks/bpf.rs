//! What is attached while the daemon runs and after `systemctl stop` (`bpftool -j`).

use std::collections::HashSet;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use super::Records;

/// The objects in a `bpftool -j … show` record: (id, program name or linked program id).
fn listed(r: &Records, name: &str) -> Result<Vec<Value>> {
    let v = r.json(name)?;
    Ok(v.as_array()
        .with_context(|| format!("{name} is not a list"))?
        .clone())
}

/// The daemon's programs are named `ka_*` (keepalive-ebpf); systemd loads and replaces its own
/// (`sd_*` cgroup filters) whenever it reloads, so ids alone would not say whose they are.
fn ours(progs: &[Value]) -> HashSet<u64> {
    progs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("ka_")))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

pub(super) fn detached(r: &Records, ev: &mut Vec<String>) -> Result<()> {
    let p = r.props("show-stopped");
    ensure!(
        p.get("ActiveState").map(String::as_str) == Some("inactive")
            && p.get("Result").map(String::as_str) == Some("success"),
        "after stop: {p:?}"
    );
    ensure!(
        ours(&listed(r, "progs-before")?).is_empty(),
        "ka_* programs loaded before the package was installed"
    );
    let running = ours(&listed(r, "progs-running")?);
    ensure!(!running.is_empty(), "no ka_* program while the daemon ran");
    let stopped = listed(r, "progs-stopped")?;
    let left: Vec<u64> = stopped
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .filter(|id| running.contains(id))
        .chain(ours(&stopped))
        .collect();
    ensure!(left.is_empty(), "programs {left:?} still loaded after stop");
    let linked = |name: &str| -> Result<Vec<u64>> {
        Ok(listed(r, name)?
            .iter()
            .filter(|l| {
                l["prog_id"]
                    .as_u64()
                    .is_some_and(|id| running.contains(&id))
            })
            .filter_map(|l| l["id"].as_u64())
            .collect())
    };
    let links = linked("links-running")?;
    let left = linked("links-stopped")?;
    ensure!(left.is_empty(), "links {left:?} still attached after stop");
    ev.push(format!(
        "bpftool: {} ka_* programs and {} links while running, none after stop",
        running.len(),
        links.len()
    ));
    Ok(())
}
