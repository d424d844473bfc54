//! Turns a guest's console into per kernel × mode × scenario results, and renders them as a
//! terminal summary and as docs/kernel-matrix.md.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

/// One scenario in one mode, all address families folded together.
#[derive(Clone, PartialEq, Debug)]
pub enum Cell {
    Pass,
    /// The suite could not run it here (e.g. a client program missing): not a failure, but
    /// shown with its reason so the matrix has no silent gap.
    Skipped(String),
    /// Failed, then passed when the suite ran it again at its end (`--retries 1`, as on the
    /// host): counted as a pass, and shown with its first failure so it is never hidden.
    Flaky(String),
    Fail(String),
}

#[derive(Default, Debug)]
pub struct ModeRun {
    pub results: BTreeMap<String, Cell>,
    /// The suite's own `error: …` line, if it gave up on the mode (e.g. the daemon did not start).
    pub error_line: Option<String>,
    /// The last line the mode printed that was not a scenario result: when the daemon refuses a
    /// mode, this is its one line naming the limitation (the suite prints the daemon's stderr
    /// tail after its error line).
    pub last_note: Option<String>,
    pub exit: Option<i32>,
    pub secs: Option<f64>,
    /// The rung each logical hook ran on (`hooks: hook=rung …`, from the daemon's metrics).
    pub rungs: Vec<(String, String)>,
    /// Rungs the kernel refused before the one used: (hook, rung, the kernel's reason).
    pub refused: Vec<(String, String, String)>,
    /// Scenario → address family → its result, the latest attempt's; `results` folds these.
    families: BTreeMap<String, BTreeMap<String, Cell>>,
    /// The suite has started its closing blocks, which repeat result lines already seen.
    closing: bool,
}

impl ModeRun {
    /// Why a mode produced no results: the suite's error and the daemon's last word.
    pub fn why(&self) -> Option<String> {
        let error = self.error_line.as_deref().map(|e| {
            e.trim_end_matches("stderr tail:")
                .trim_end()
                .trim_end_matches(';')
                .trim()
        });
        let text = match (error, self.last_note.as_deref()) {
            (Some(e), Some(l)) if !l.starts_with("error:") => format!("{e} — {l}"),
            (Some(e), _) => e.to_owned(),
            (None, l) => l?.to_owned(),
        };
        // A table cell, not a log: the full text is in target/vm/logs.
        Some(match text.char_indices().nth(300) {
            Some((i, _)) => format!("{}…", &text[..i]),
            None => text,
        })
    }

    pub fn passed(&self) -> bool {
        self.exit == Some(0)
            && !self.results.is_empty()
            && !self.results.values().any(|c| matches!(c, Cell::Fail(_)))
    }
}

#[derive(Default, Debug)]
pub struct Outcome {
    pub kernel: String,
    pub package: String,
    pub version: String,
    pub release: String,
    pub modes: BTreeMap<String, ModeRun>,
    /// vminit's `kat: success|failure`, or None when the guest never said.
    pub verdict: Option<bool>,
    pub timed_out: bool,
    pub boot: Option<Duration>,
    pub wall: Duration,
    pub error: Option<String>,
    /// Scenarios in the order the suite ran them, which is the order it documents them in.
    pub scenarios: Vec<String>,
}

impl Outcome {
    pub fn passed(&self, wanted_modes: &[String]) -> bool {
        self.verdict == Some(true)
            && !self.timed_out
            && wanted_modes
                .iter()
                .all(|m| self.modes.get(m).is_some_and(ModeRun::passed))
    }
}

/// Reads vminit's protocol: `kat: boot …`, `kat: kernel=R mode=M <suite line>`,
/// `kat: done kernel=R mode=M exit=N secs=S`, `kat: success|failure`.
pub fn parse(outcome: &mut Outcome, lines: &[String]) {
    for line in lines {
        let Some(i) = line.find("kat: ") else {
            continue;
        };
        let rest = &line[i + 5..];
        match rest.trim() {
            "success" => outcome.verdict = Some(true),
            "failure" => outcome.verdict = Some(false),
            _ => {}
        }
        if let Some(err) = rest.strip_prefix("error ") {
            outcome.error = Some(err.to_owned());
        }
        if let Some(done) = rest.strip_prefix("done ") {
            let run = outcome
                .modes
                .entry(field(done, "mode").unwrap_or("?").to_owned())
                .or_default();
            run.exit = field(done, "exit").and_then(|v| v.parse().ok());
            run.secs = field(done, "secs").and_then(|v| v.parse().ok());
            continue;
        }
        let Some(body) = rest.strip_prefix("kernel=") else {
            continue;
        };
        let Some((_, body)) = body.split_once(' ') else {
            continue;
        };
        let Some(mode) = field(body, "mode") else {
            continue;
        };
        // Everything after the `mode=M ` prefix is the suite's own line.
        let payload = body.split_once(' ').map_or("", |(_, p)| p).trim();
        let run = outcome.modes.entry(mode.to_owned()).or_default();
        if let Some(hooks) = payload.strip_prefix("hooks: ") {
            run.rungs = hooks
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            continue;
        }
        if let Some(refusal) = payload.strip_prefix("refused: ") {
            run.refused.push((
                field(refusal, "hook").unwrap_or("?").to_owned(),
                field(refusal, "rung").unwrap_or("?").to_owned(),
                quoted(refusal, "reason").unwrap_or_default(),
            ));
            continue;
        }
        match (field(payload, "scenario"), field(payload, "result")) {
            (Some(scenario), Some(result)) => {
                let family = field(payload, "family").unwrap_or("?");
                if !outcome.scenarios.iter().any(|s| s == scenario) {
                    outcome.scenarios.push(scenario.to_owned());
                }
                let run = outcome.modes.entry(mode.to_owned()).or_default();
                if run.closing {
                    continue;
                }
                let detail = format!("{family}: {}", strip_keys(payload));
                // Families usually skip for one shared reason: say it once.
                let reason = quoted(payload, "detail").unwrap_or(detail.clone());
                let attempt = match result {
                    "success" => Cell::Pass,
                    "skipped" => Cell::Skipped(reason),
                    _ => Cell::Fail(detail),
                };
                let families = run.families.entry(scenario.to_owned()).or_default();
                let previous = families.remove(family);
                let cell = match (previous, attempt) {
                    (Some(Cell::Fail(first)), Cell::Pass) => Cell::Flaky(first),
                    (Some(Cell::Fail(first)), Cell::Fail(_)) => {
                        Cell::Fail(format!("{first} (and again when rerun)"))
                    }
                    (_, attempt) => attempt,
                };
                families.insert(family.to_owned(), cell);
                let folded = fold(families.values());
                run.results.insert(scenario.to_owned(), folded);
            }
            _ if payload.starts_with(FLAKY_HEADER) || payload == FAILED_HEADER => {
                run.closing = true;
            }
            _ if !payload.is_empty() && payload != "success" && payload != "failure" => {
                let note = payload.trim_start_matches("log: ").trim().to_owned();
                if note.starts_with("error:") {
                    run.error_line = Some(note.clone());
                }
                run.last_note = Some(note);
            }
            _ => {}
        }
    }
}

/// The suite's closing blocks (keepalive-scenarios/src/main.rs), which repeat lines above.
const FLAKY_HEADER: &str = "flaky scenarios";
const FAILED_HEADER: &str = "failed scenarios:";

/// A scenario's cell from its families': a failure in any family outweighs a flaky pass, which
/// outweighs a skip, which outweighs a pass. Skip reasons are usually shared: said once.
fn fold<'a>(families: impl Iterator<Item = &'a Cell>) -> Cell {
    let (mut fails, mut flaky, mut skips) = (Vec::new(), Vec::new(), Vec::<&str>::new());
    for cell in families {
        match cell {
            Cell::Fail(d) => fails.push(d.as_str()),
            Cell::Flaky(d) => flaky.push(d.as_str()),
            Cell::Skipped(d) if !skips.contains(&d.as_str()) => skips.push(d),
            Cell::Skipped(_) | Cell::Pass => {}
        }
    }
    if !fails.is_empty() {
        Cell::Fail(fails.join("; "))
    } else if !flaky.is_empty() {
        Cell::Flaky(flaky.join("; "))
    } else if !skips.is_empty() {
        Cell::Skipped(skips.join("; "))
    } else {
        Cell::Pass
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// A failure's detail without the keys the matrix already shows as row and column.
/// Also without measurements the suite did not take (`probes=-`).
fn strip_keys(payload: &str) -> String {
    payload
        .split_whitespace()
        .filter(|w| {
            !["scenario=", "family=", "mode=", "result="]
                .iter()
                .any(|k| w.starts_with(k))
                && !w.ends_with("=-")
                && *w != "detail=\"\""
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The value of `key="…"` (the suite keeps double quotes out of the value).
fn quoted(payload: &str, key: &str) -> Option<String> {
    let start = payload.find(&format!("{key}=\""))? + key.len() + 2;
    let len = payload[start..].find('"')?;
    Some(payload[start..start + len].to_owned()).filter(|v| !v.is_empty())
}

/// What a matrix cell says for a scenario in a mode.
pub fn cell_text(run: Option<&ModeRun>, scenario: &str) -> String {
    let Some(run) = run else {
        return "not run".to_owned();
    };
    match run.results.get(scenario) {
        Some(Cell::Pass) => "pass".to_owned(),
        Some(Cell::Skipped(d)) => format!("skipped: {d}"),
        Some(Cell::Fail(d)) => format!("**FAIL** {d}"),
        Some(Cell::Flaky(d)) => format!("pass (flaky: failed once, passed when rerun; {d})"),
        None => match run.why() {
            Some(why) => format!("n/a: {why}"),
            None => "no result".to_owned(),
        },
    }
}

/// The hooks whose rung depends on the kernel; the others are tracepoints on every rung.
pub const LADDER_HOOKS: &[&str] = &["keepalive_timer", "probe_sent", "death"];

/// The matrix's rung cell for a mode: where each laddered hook ran, and what was refused.
pub fn rung_text(run: Option<&ModeRun>) -> String {
    let Some(run) = run.filter(|r| !r.rungs.is_empty()) else {
        return "-".to_owned();
    };
    let mut parts: Vec<String> = LADDER_HOOKS
        .iter()
        .filter_map(|h| {
            let (_, rung) = run.rungs.iter().find(|(k, _)| k == h)?;
            Some(format!("{h}: {rung}"))
        })
        .collect();
    for (hook, rung, reason) in &run.refused {
        parts.push(format!("{hook}: {rung} refused ({reason})"));
    }
    parts.join("; ")
}

/// One line per failed cell (or per mode/kernel that gave no results), for the end of a log.
pub fn failures(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    for o in outcomes {
        if let Some(e) = &o.error {
            let _ = writeln!(s, "{}: {e}", o.kernel);
        }
        if o.timed_out {
            let _ = writeln!(s, "{}: timed out", o.kernel);
        }
        for (mode, run) in &o.modes {
            for (scenario, cell) in &run.results {
                if let Cell::Fail(detail) = cell {
                    let _ = writeln!(s, "{} {mode} {scenario}: {detail}", o.kernel);
                }
            }
            if run.results.is_empty() {
                let why = run.why().unwrap_or_else(|| "no results".to_owned());
                let _ = writeln!(s, "{} {mode}: {why}", o.kernel);
            }
        }
    }
    s.trim_end().to_owned()
}

pub fn summary(outcomes: &[Outcome], modes: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<6} {:<11} {:>7} {:>7} {:>7} {:>8} {:>8}  result",
        "kernel", "mode", "passed", "skipped", "failed", "boot s", "suite s"
    );
    for o in outcomes {
        let boot = o
            .boot
            .map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64()));
        for mode in modes {
            let run = o.modes.get(mode);
            let count = |want: fn(&Cell) -> bool| {
                run.map_or(0, |r| r.results.values().filter(|c| want(c)).count())
            };
            let secs = run
                .and_then(|r| r.secs)
                .map_or("-".to_owned(), |v| format!("{v:.1}"));
            let result = if o.timed_out {
                "TIMEOUT".to_owned()
            } else if let Some(e) = &o.error {
                format!("ERROR {e}")
            } else if run.is_some_and(ModeRun::passed) {
                "ok".to_owned()
            } else {
                match run.filter(|r| r.results.is_empty()).and_then(ModeRun::why) {
                    Some(why) => format!("FAILED: {why}"),
                    None => "FAILED".to_owned(),
                }
            };
            let _ = writeln!(
                s,
                "{:<6} {:<11} {:>7} {:>7} {:>7} {:>8} {:>8}  {result}",
                o.kernel,
                mode,
                count(|c| matches!(c, Cell::Pass | Cell::Flaky(_))),
                count(|c| matches!(c, Cell::Skipped(_))),
                count(|c| matches!(c, Cell::Fail(_))),
                boot,
                secs
            );
        }
        for (mode, run) in &o.modes {
            for (scenario, cell) in &run.results {
                match cell {
                    Cell::Fail(d) => {
                        let _ = writeln!(s, "  {} {mode} {scenario} FAILED: {d}", o.kernel);
                    }
                    Cell::Skipped(d) => {
                        let _ = writeln!(s, "  {} {mode} {scenario} skipped: {d}", o.kernel);
                    }
                    Cell::Flaky(d) => {
                        let _ = writeln!(s, "  {} {mode} {scenario} flaky: {d}", o.kernel);
                    }
                    Cell::Pass => {}
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests;
