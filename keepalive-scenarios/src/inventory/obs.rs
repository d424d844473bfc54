//! One daemon as the inventory scenarios observe it: `/sockets`, `/metrics` and its `sockets`
//! subcommand, with every wait bounded by a deadline and its outcome measured.

use super::view::{self, Key, SockView, Want};
use crate::http;
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The promise: settings, sysctl changes and closes show within a second.
pub const PROMPT: Duration = Duration::from_secs(1);
/// How long past the promise a wait goes on, to tell "late" from "never" in the report.
const GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(25);

/// Failures and notes of one check, for `Ctx::record`.
pub type Found = (Vec<String>, Vec<String>);

#[derive(Clone, Debug)]
pub struct Obs {
    pub addr: SocketAddr,
    /// The daemon's --idle-budget in seconds, which at_risk follows.
    pub budget_s: u32,
    /// The daemon binary, for its `sockets` subcommand.
    pub bin: PathBuf,
}

impl Obs {
    pub fn sockets(&self, q: &str) -> Result<Vec<SockView>> {
        view::query(self.addr, q)
    }

    /// Waits until the socket is listed exactly as `want` says. Its keepalive values must be
    /// right within 1 s of `t0` (when the program had set them); its owner may take longer,
    /// because the daemon names the owners of accepted sockets from a periodic /proc scan.
    pub fn expect(&self, key: Key, want: &Want, t0: Instant) -> Result<(Found, Option<SockView>)> {
        let values = Want {
            owner: None,
            cgroup: None,
            ..want.clone()
        };
        // A socket right at the first look was on time, however long the scenario took to
        // look (checks run one after the other); otherwise it is late by when it turned right.
        let (mut values_at, mut last, mut first) = (None, None, true);
        loop {
            let list = self.sockets(&format!("netns={}", key.netns))?;
            let found = key.find(&list);
            if found.len() > 1 {
                return Ok((
                    (vec![format!("{key} listed {} times", found.len())], vec![]),
                    None,
                ));
            }
            let now = t0.elapsed();
            if let Some(v) = found.first() {
                if values_at.is_none() && values.mismatches(v, self.budget_s).is_empty() {
                    values_at = Some(if first { Duration::ZERO } else { now });
                }
                if want.mismatches(v, self.budget_s).is_empty() {
                    let mut fails = want.timer_mismatches(v);
                    let at = values_at.unwrap_or(now);
                    if at > PROMPT {
                        fails.push(format!(
                            "settings reported {:.2}s after they were set (limit 1 s)",
                            at.as_secs_f64()
                        ));
                    }
                    let when = if at.is_zero() {
                        "at first look".to_owned()
                    } else {
                        format!("after {:.2}s", at.as_secs_f64())
                    };
                    let note = format!(
                        "listed as expected {when} (owner at {:.2}s)",
                        now.as_secs_f64()
                    );
                    return Ok(((fails, vec![note]), Some((*v).clone())));
                }
                last = Some((*v).clone());
            }
            first = false;
            if now > GRACE + PROMPT {
                let why = match &last {
                    None => format!("{key} not listed after {:.1}s", now.as_secs_f64()),
                    Some(v) => format!(
                        "{key} after {:.1}s: {}",
                        now.as_secs_f64(),
                        want.mismatches(v, self.budget_s).join(", ")
                    ),
                };
                return Ok(((vec![why], vec![]), last));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until none of `keys` is listed; `since` is when the last of them was closed.
    pub fn gone(&self, keys: &[Key], since: Instant) -> Result<Found> {
        let mut namespaces: Vec<u64> = keys.iter().map(|k| k.netns).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        loop {
            // Each socket still listed, with the state the daemon last saw it in.
            let mut left: Vec<String> = Vec::new();
            for ns in &namespaces {
                let list = self.sockets(&format!("netns={ns}"))?;
                for k in keys {
                    left.extend(k.find(&list).iter().map(|v| format!("{k} ({})", v.state)));
                }
            }
            let now = since.elapsed();
            if left.is_empty() {
                let mut fails = Vec::new();
                if now > PROMPT {
                    fails.push(format!(
                        "closed sockets listed until {:.2}s after close (limit 1 s)",
                        now.as_secs_f64()
                    ));
                }
                return Ok((
                    fails,
                    vec![format!(
                        "{} closed sockets gone after {:.2}s",
                        keys.len(),
                        now.as_secs_f64()
                    )],
                ));
            }
            if now > GRACE {
                return Ok((
                    vec![format!(
                        "still listed {:.1}s after close: {}",
                        now.as_secs_f64(),
                        left.join(" ")
                    )],
                    vec![],
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The sum of the /metrics samples of `name` that carry these labels (whatever workload
    /// labels they carry besides); None when there is no such series.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<Option<f64>> {
        let (code, body) = http::get(self.addr, "/metrics")?;
        if code != 200 {
            bail!("/metrics answered HTTP {code}");
        }
        let matching: Vec<f64> = http::parse_prometheus(&body)
            .into_iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(gk, gv)| gk == k && gv == v))
            })
            .map(|s| s.value)
            .collect();
        Ok((!matching.is_empty()).then(|| matching.iter().sum()))
    }

    /// Waits until a series reads `want`, within 1 s of `t0` (right at the first look counts
    /// as on time, as in `expect`).
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: f64,
        t0: Instant,
    ) -> Result<Found> {
        let mut first = true;
        loop {
            let got = self.metric(name, labels)?;
            let now = t0.elapsed();
            if got == Some(want) {
                let fails = if !first && now > PROMPT {
                    vec![format!(
                        "{name}{labels:?} reached {want} only after {:.2}s",
                        now.as_secs_f64()
                    )]
                } else {
                    vec![]
                };
                return Ok((fails, vec![]));
            }
            first = false;
            if now > GRACE + PROMPT {
                return Ok((
                    vec![format!("{name}{labels:?} is {got:?}, expected {want}")],
                    vec![],
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// A gauge over every socket of the host, minus what `/sockets?<q>` lists outside the
    /// scenario's namespaces: the part that is ours. The host opens and closes sockets of its
    /// own meanwhile, so a sample counts only when the gauge read the same before and after
    /// the list; samples are retried until one matches `want` or `limit` passes.
    pub fn ours(
        &self,
        gauge: (&str, &[(&str, &str)]),
        q: &str,
        ours: &[u64],
        want: f64,
        limit: Duration,
    ) -> Result<Found> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let before = self
                .metric(gauge.0, gauge.1)?
                .with_context(|| format!("{} missing from /metrics", gauge.0))?;
            let outside = self
                .sockets(q)?
                .iter()
                .filter(|v| !ours.contains(&v.netns))
                .count() as f64;
            let after = self.metric(gauge.0, gauge.1)?;
            if after == Some(before) {
                let own = before - outside;
                if own == want {
                    return Ok((
                        vec![],
                        vec![format!(
                            "{}{:?} {before} of which ours {own}",
                            gauge.0, gauge.1
                        )],
                    ));
                }
                seen.push(own);
            }
            if Instant::now() > deadline {
                let msg = format!(
                    "{}{:?} minus other namespaces' sockets ({q}) reads {seen:?}, expected {want}",
                    gauge.0, gauge.1
                );
                return Ok((vec![msg], vec![]));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `keepalive-daemon sockets <args> --web.listen-address <addr>`: its stdout.
    pub fn table(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("sockets")
            .args(args)
            .args(["--web.listen-address", &self.addr.to_string()])
            .output()
            .with_context(|| format!("cannot run {} sockets", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "`sockets {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Checks a table holds each socket's row exactly and, with `only`, nothing else.
    pub fn check_table(&self, table: &str, rows: &[(Key, &Want)], only: bool) -> Vec<String> {
        let mut bad = Vec::new();
        for (key, want) in rows {
            let Some(row) = super::table::table_row(table, key.local, key.peer) else {
                bad.push(format!("table lacks a row for {key}"));
                continue;
            };
            let expect = super::table::table_expect(want, key.local, key.peer);
            if row[..10] != expect[..] {
                bad.push(format!("table row {row:?}, expected {expect:?} + Next"));
            }
            // Columns after Next: IdleNow LastSnd LastRcv PeerGroup Risk.
            let risk = matches!(row.get(15).map(String::as_str), Some("AT-RISK" | "EXPOSED"));
            let local = super::view::local_peer(key.local.ip(), key.peer.ip());
            if risk != (want.at_risk(self.budget_s) && !local) {
                bad.push(format!(
                    "table row {row:?}: Risk column says at risk = {risk}"
                ));
            }
        }
        let n = table
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .count();
        if only && n != rows.len() {
            bad.push(format!(
                "table has {n} rows, expected exactly {}",
                rows.len()
            ));
        }
        bad
    }
}
