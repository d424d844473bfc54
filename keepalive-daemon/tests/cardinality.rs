//! Workload labels stay bounded: 2 000 distinct systemd units, each with a probing
//! connection, against a series cap of 50. Every workload family shows at most cap + 1 series
//! (the `other` fold), the folds are counted, and once the connections close the units'
//! series leave /metrics after the configured time.
mod common;
mod netns;

use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use common::*;
use netns::{Netns, set_keepalive};

const WORKLOADS: usize = 2000;
const CAP: usize = 50;

/// The units' cgroups; the test process is moved back and the tree removed on drop.
struct Units {
    mount: PathBuf,
    home: PathBuf,
    top: PathBuf,
}

impl Units {
    fn dir(&self, i: usize) -> PathBuf {
        self.top.join(format!("system.slice/kat-w{i}.service"))
    }
}

impl Drop for Units {
    fn drop(&mut self) {
        let _ = fs::write(self.home.join("cgroup.procs"), "0");
        for i in 0..WORKLOADS {
            let _ = fs::remove_dir(self.dir(i));
        }
        let _ = fs::remove_dir(self.top.join("system.slice"));
        let _ = fs::remove_dir(&self.top);
        let _ = &self.mount;
    }
}

/// Sample lines of `family` (name and labels) in a page.
fn series<'a>(page: &'a str, family: &str) -> Vec<&'a str> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .collect()
}

#[test]
fn two_thousand_workloads_stay_within_the_cap_and_leave() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mount) = keepalive_daemon::state::workload::Cgroup2Mount::detect().map(|m| m.path)
    else {
        eprintln!("no cgroup2 mount: nothing to test");
        return;
    };
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let units = Units {
        home: mount.join(own.trim_start_matches('/')),
        top: mount.join(format!("kat-card-{}", std::process::id())),
        mount,
    };
    for i in 0..WORKLOADS {
        fs::create_dir_all(units.dir(i)).unwrap();
    }
    let d = start(&[
        "--metrics.labels",
        "unit",
        "--metrics.series-cap",
        &CAP.to_string(),
        "--metrics.series-ttl",
        "5s",
    ])
    .expect("daemon starts");

    // One probing connection per unit: the process joins the unit's cgroup, so the socket it
    // creates carries it, then goes home.
    let ns = Netns::new("card");
    let dirs: Vec<PathBuf> = (0..WORKLOADS).map(|i| units.dir(i)).collect();
    let home = units.home.clone();
    let held = ns.within(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = thread::spawn(move || {
            (0..WORKLOADS)
                .map(|_| listener.accept().unwrap().0)
                .collect::<Vec<_>>()
        });
        let mut clients = Vec::with_capacity(WORKLOADS);
        for dir in &dirs {
            fs::write(dir.join("cgroup.procs"), "0").unwrap();
            let c = TcpStream::connect(addr).unwrap();
            set_keepalive(&c, 1, 1, 5);
            clients.push(c);
        }
        fs::write(home.join("cgroup.procs"), "0").unwrap();
        (clients, accept.join().unwrap())
    });

    // Probes every second from every unit: the counters and the socket gauges fill up.
    // Generous: on a loaded machine the first probes of 2 000 sockets take a while to be seen.
    let deadline = Instant::now() + Duration::from_secs(90);
    let page = loop {
        thread::sleep(Duration::from_secs(1));
        let page = body(d.port, "/metrics");
        // The socket gauges fold at scrape time, after the counter is rendered: the next
        // page shows them.
        let folded = |family: &str| {
            metric(
                &page,
                &format!("keepalive_series_overflow_total{{family=\"{family}\"}}"),
            )
            .unwrap_or(0.0)
        };
        let enough = |family| folded(family) >= (WORKLOADS - CAP) as f64 - 5.0;
        if (enough("keepalive_probes_total") && enough("keepalive_sockets"))
            || Instant::now() > deadline
        {
            break page;
        }
    };
    for family in [
        "keepalive_probes_total",
        "keepalive_probes_answered_total",
        "keepalive_sockets_at_risk",
    ] {
        let n = series(&page, family).len();
        assert!(n <= CAP + 1, "{family}: {n} series, cap {CAP}");
        assert!(
            series(&page, family)
                .iter()
                .any(|l| l.contains("unit=\"other\"")),
            "{family}: no `other` series"
        );
        eprintln!("{family}: {n} series");
    }
    // Two series (keepalive on/off) per label set.
    let sockets = series(&page, "keepalive_sockets").len();
    assert!(
        sockets <= 2 * (CAP + 1),
        "keepalive_sockets: {sockets} series"
    );
    for family in ["keepalive_probes_total", "keepalive_sockets"] {
        let folded = metric(
            &page,
            &format!("keepalive_series_overflow_total{{family=\"{family}\"}}"),
        )
        .unwrap_or(0.0);
        eprintln!("{family}: {folded} label sets folded");
        assert!(
            folded >= (WORKLOADS - CAP) as f64 - 5.0,
            "{family}: only {folded} folds counted"
        );
    }

    // The units go away: their series leave once the 5 s have passed.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        thread::sleep(Duration::from_secs(1));
        let page = body(d.port, "/metrics");
        let left = series(&page, "keepalive_probes_total")
            .into_iter()
            .filter(|l| l.contains("kat-w"))
            .count();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} series of closed units still exported"
        );
    }
    stop(d);
}
