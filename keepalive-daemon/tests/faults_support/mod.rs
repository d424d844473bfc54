//! Helpers of the fault tests (faults*.rs): the daemon's `--json` event stream collected while
//! a test runs, and waiting for a condition with a deadline. Each fault test is its own crate
//! and declares `mod common;` next to this module, whose `Running` these read.
#![allow(dead_code)] // each test file uses its own subset

use std::{
    io::{BufRead as _, BufReader},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::common::Running;

/// Reads the daemon's `--json` stdout into memory from a thread.
pub fn collect_stdout(r: &mut Running) -> Arc<Mutex<Vec<serde_json::Value>>> {
    let out = r.child.stdout.take().expect("piped stdout");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                sink.lock().unwrap().push(v);
            }
        }
    });
    lines
}

pub fn events_in(
    lines: &Mutex<Vec<serde_json::Value>>,
    netns: u64,
    kind: &str,
) -> Vec<serde_json::Value> {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["netns"].as_u64() == Some(netns) && v["event"] == kind)
        .cloned()
        .collect()
}

/// Polls `ok` every 100 ms; fails the test, naming `what`, when `limit` passes first.
pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
