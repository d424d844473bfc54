//! The unit's sandbox as systemd applied it: the live exposure score and the capability sets of
//! the running process, against what the project documents.

use std::fs;

use anyhow::{Context as _, Result, bail, ensure};

use super::{Records, tail};
use crate::deploy_checks::{MAX_EXPOSURE, exposure as exposure_of};

const UNIT_FILE: &str = "deploy/systemd/keepalive-daemon.service";
const OPERATIONS: &str = "docs/operations.md";

pub(super) fn exposure(r: &Records, ev: &mut Vec<String>) -> Result<()> {
    let text = r.text("security");
    let (score, line) = exposure_of(&text).with_context(|| tail(&text))?;
    ev.push(line.clone());
    ensure!(
        score <= MAX_EXPOSURE,
        "{score} is above {MAX_EXPOSURE}: {line}"
    );
    Ok(())
}

/// The capability numbers of the unit's `CapabilityBoundingSet=` line.
fn bounding_set() -> Result<u64> {
    let unit = fs::read_to_string(UNIT_FILE)?;
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("no CapabilityBoundingSet= in the unit")?;
    let mut mask = 0;
    for name in line.split_whitespace() {
        let bit = match name {
            "CAP_DAC_READ_SEARCH" => 2,
            "CAP_NET_RAW" => 13,
            "CAP_SYS_PTRACE" => 19,
            "CAP_SYS_ADMIN" => 21,
            "CAP_PERFMON" => 38,
            "CAP_BPF" => 39,
            other => bail!("the unit names {other}, which this check does not know"),
        };
        mask |= 1u64 << bit;
    }
    Ok(mask)
}

/// The sets docs/operations.md promises a running daemon holds (`CapEff and CapPrm: …`).
fn documented_kept() -> Result<u64> {
    let doc = fs::read_to_string(OPERATIONS)?;
    let hex = doc
        .lines()
        .find_map(|l| l.split("CapEff and CapPrm: ").nth(1))
        .context("docs/operations.md gives no `CapEff and CapPrm:` value")?;
    u64::from_str_radix(hex.trim().trim_end_matches('`'), 16)
        .with_context(|| format!("unreadable mask {hex:?} in docs/operations.md"))
}

pub(super) fn capabilities(r: &Records, ev: &mut Vec<String>) -> Result<()> {
    let kept = documented_kept()?;
    let want = [
        ("CapInh", 0),
        ("CapPrm", kept),
        ("CapEff", kept),
        ("CapBnd", bounding_set()?),
        ("CapAmb", 0),
    ];
    let status = r.text("status-installed");
    for (field, mask) in want {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .with_context(|| format!("no {field} in /proc/<pid>/status"))?;
        ev.push(line.replace('\t', " "));
        let got = u64::from_str_radix(line[field.len() + 1..].trim(), 16)?;
        ensure!(got == mask, "{field} {got:016x}, documented {mask:016x}");
    }
    // Capabilities are per thread: every one of the daemon's threads must have dropped.
    let tasks = r.text("task-caps");
    let mut threads = 0;
    for line in tasks.lines().filter(|l| l.contains(":CapEff:")) {
        threads += 1;
        let hex = line.rsplit(':').next().unwrap_or("").trim();
        ensure!(
            u64::from_str_radix(hex, 16).ok() == Some(kept),
            "a thread still holds {hex}: {line}"
        );
    }
    ensure!(threads > 1, "task-caps lists {threads} threads");
    ev.push(format!("{threads} threads, each CapEff {kept:016x}"));
    Ok(())
}
