//! An `/events` reader that keeps what the partition's accounting needs from every event in
//! the bench's namespaces: its kind, the socket, the probe count and cause, and when it was
//! emitted and read. The daemon sees the whole host; events of other namespaces are counted
//! apart and otherwise ignored.
use std::{
    collections::HashSet,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;
use serde::Deserialize;

use crate::sys;

#[derive(Deserialize)]
struct Line<'a> {
    event: &'a str,
    netns: u32,
    #[serde(borrow)]
    saddr: &'a str,
    sport: u16,
    #[serde(borrow)]
    daddr: &'a str,
    dport: u16,
    probes: u8,
    #[serde(default, borrow)]
    cause: Option<&'a str>,
}

/// One event of a watched namespace.
pub struct Ev {
    pub kind: String,
    pub netns: u32,
    /// saddr:sport-daddr:dport, unique per socket within its namespace.
    pub socket: String,
    pub probes: u8,
    pub cause: Option<String>,
    /// Kernel time (the `ts` field) and the time it was read here, ns since the epoch.
    pub ts: i128,
    pub read: i128,
}

#[derive(Default)]
pub struct Log {
    pub events: Vec<Ev>,
    /// Lines from other namespaces (the host's own traffic, other benchmarks), or valid lines
    /// that describe no connection.
    pub other: u64,
    /// Lines that did not parse.
    pub malformed: u64,
    /// The daemon closed the stream (a reader it found too slow is disconnected).
    pub closed: bool,
}

pub struct Reader {
    stop: Arc<AtomicBool>,
    /// `dead` events of the watched namespaces so far.
    dead: Arc<AtomicU64>,
    handle: Option<JoinHandle<Log>>,
}

impl Reader {
    pub fn start(port: u16, netns: HashSet<u32>) -> Result<Self> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        write!(s, "GET /events HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let dead = Arc::new(AtomicU64::new(0));
        let deaths = dead.clone();
        let handle = std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(4 << 20, s);
            let mut log = Log::default();
            // Bytes, not a String: `read_line` drops what it read when a timeout splits a
            // multi-byte character, and the rest of that line then reads as malformed.
            let mut line = Vec::new();
            let mut body = false;
            while !flag.load(Ordering::Relaxed) {
                match r.read_until(b'\n', &mut line) {
                    Ok(0) => {
                        log.closed = true;
                        break;
                    }
                    Ok(_) if line.ends_with(b"\n") => {
                        if !body {
                            body = line.trim_ascii().is_empty();
                        } else {
                            take(&line, &netns, &mut log, &deaths);
                        }
                        line.clear();
                    }
                    // A read timeout keeps the loop responsive to `stop`; a partial line stays.
                    _ => continue,
                }
            }
            log
        });
        Ok(Reader {
            stop,
            dead,
            handle: Some(handle),
        })
    }

    pub fn dead(&self) -> u64 {
        self.dead.load(Ordering::Relaxed)
    }

    pub fn finish(mut self) -> Log {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

fn take(line: &[u8], netns: &HashSet<u32>, log: &mut Log, dead: &AtomicU64) {
    let read = sys::realtime_ns();
    let Ok(l) = serde_json::from_slice::<Line>(line) else {
        // A valid line of another shape (an event without a connection, such as a notice of
        // lost events) is not a socket's event; only a line that is no JSON is malformed.
        if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok() {
            log.other += 1;
        } else {
            log.malformed += 1;
        }
        return;
    };
    if !netns.contains(&l.netns) {
        log.other += 1;
        return;
    }
    if l.event == "dead" {
        dead.fetch_add(1, Ordering::Relaxed);
    }
    log.events.push(Ev {
        kind: l.event.to_string(),
        netns: l.netns,
        socket: format!("{}:{}-{}:{}", l.saddr, l.sport, l.daddr, l.dport),
        probes: l.probes,
        cause: l.cause.map(str::to_string),
        ts: std::str::from_utf8(line)
            .ok()
            .and_then(crate::daemon::ts_of)
            .unwrap_or(0),
        read,
    });
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
