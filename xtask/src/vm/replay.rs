//! `vm --all --from-logs`: the matrix from the console logs the last boots left in
//! target/vm/logs, without booting again. For kernels that were run on their own or side by
//! side (the arm64 guest is the slowest, so it is worth starting next to the x86_64 ones); the
//! logs carry everything the matrix shows but the package, which the download cache knows.

use std::{fs, path::PathBuf, time::Duration};

use anyhow::Result;

use super::{apt, kernels::Kernel, report};
use report::Outcome;

pub fn outcome(kernel: &'static Kernel) -> Result<Outcome> {
    let log = PathBuf::from("target/vm/logs").join(format!("{}.log", kernel.name));
    let Ok(text) = fs::read_to_string(&log) else {
        // A row that says so, like a kernel a stopped run never reached.
        return Ok(Outcome {
            kernel: kernel.name.to_owned(),
            error: Some(format!(
                "{}: no console log at {}",
                super::matrix::NOT_RUN_YET,
                log.display()
            )),
            ..Outcome::default()
        });
    };
    // The cached packages only: a log is only worth replaying with the kernel it came from.
    let image = apt::fetch(kernel, false)?;
    let (mut lines, mut boot, mut wall) = (Vec::new(), None, 0.0);
    for raw in text.lines() {
        let (stamp, line) = split_stamp(raw);
        if let Some(t) = stamp {
            wall = t;
            if boot.is_none() && line.contains("kat: ") {
                boot = Some(Duration::from_secs_f64(t));
            }
        }
        lines.push(line.to_owned());
    }
    let mut outcome = Outcome {
        kernel: kernel.name.to_owned(),
        package: image.package,
        version: image.version,
        release: image.release,
        boot,
        wall: Duration::from_secs_f64(wall),
        ..Outcome::default()
    };
    report::parse(&mut outcome, &lines);
    if outcome.verdict.is_none() && outcome.error.is_none() {
        outcome.error = Some(format!(
            "{} ends without a verdict: that run was stopped or timed out",
            log.display()
        ));
    }
    Ok(outcome)
}

/// `[  12.345] text` as qemu.rs writes each console line: the host-side seconds and the text.
fn split_stamp(raw: &str) -> (Option<f64>, &str) {
    raw.strip_prefix('[')
        .and_then(|r| r.split_once("] "))
        .and_then(|(t, line)| Some((Some(t.trim().parse().ok()?), line)))
        .unwrap_or((None, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_split_off_and_other_lines_kept() {
        assert_eq!(
            split_stamp("[  12.500] kat: success"),
            (Some(12.5), "kat: success")
        );
        assert_eq!(split_stamp("[x] not a stamp"), (None, "[x] not a stamp"));
        assert_eq!(split_stamp("plain"), (None, "plain"));
    }
}
