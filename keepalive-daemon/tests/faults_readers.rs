//! Never wait for a slow client: `/events` readers that stop reading are dropped and counted
//! while the live ones get every event and scrapes stay fast, during a keepalive storm in a
//! namespace the test creates.
mod common;
mod faults_support;
mod netns;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::*;
use faults_support::*;
use netns::{Netns, Storm};

/// Ten `/events` readers, five of which never read: the stuck ones are disconnected and
/// counted, the live ones get every event, and scrapes stay fast throughout.
#[test]
fn stuck_event_readers_are_dropped_not_waited_for() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    // 8192 events per reader (several seconds of this storm) absorb any stall of a reader that
    // keeps reading, even on a loaded machine; the stuck ones, whose socket buffers fill within
    // a few hundred events, fall a whole buffer behind within the storm's ten seconds.
    let mut r =
        start_with(&["--json", "--web.events-buffer", "8192"], Stdio::piped()).expect("daemon");
    let lines = collect_stdout(&mut r);
    let ns = Netns::new("rdr");
    let done = Arc::new(AtomicBool::new(false));
    let mut live = Vec::new();
    for _ in 0..5 {
        let (port, done) = (r.port, done.clone());
        live.push(thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            write!(s, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            while !done.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        }));
    }
    let stuck: Vec<_> = (0..5)
        .map(|_| netns::stuck_reader(r.port, "/events"))
        .collect();
    thread::sleep(Duration::from_millis(300));

    let storm = Storm::open(&ns, 1000, 1);
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let t = Instant::now();
        assert!(body(r.port, "/metrics").contains("keepalive_probes_total"));
        slowest = slowest.max(t.elapsed());
        thread::sleep(Duration::from_millis(200));
    }
    drop(storm);
    thread::sleep(Duration::from_secs(2));
    let page = body(r.port, "/metrics");
    done.store(true, Ordering::Relaxed);
    let streams: Vec<String> = live.into_iter().map(|h| h.join().unwrap()).collect();
    drop(stuck);

    assert!(
        slowest < Duration::from_millis(500),
        "a scrape took {slowest:?} during the storm"
    );
    let dropped = metric(&page, "keepalive_event_readers_dropped_total");
    assert_eq!(dropped, Some(5.0), "stuck readers dropped");
    let want = events_in(&lines, ns.inode, "probe").len();
    assert!(want > 600, "storm produced only {want} probes");
    let needle = format!("\"netns\":{},", ns.inode);
    for s in &streams {
        let got = s
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("\"event\":\"probe\""))
            .count();
        assert_eq!(got, want, "a live reader missed events");
    }
    stop(r);
}
