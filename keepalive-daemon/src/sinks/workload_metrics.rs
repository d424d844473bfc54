//! The workload metric families: probes, answers, deaths by cause and the measured detection
//! time, each labelled with the operator's chosen workload labels (`--metrics.labels`), each
//! bounded by `series::Book` (cap, fold into `other`, expiry of vanished workloads).
use std::{
    collections::HashSet,
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::{
    service::metric_labels::MetricLabel,
    sinks::{
        hot_series::{Hit, HotSeries},
        series::{self, Book, Key},
    },
    state::{event::Cause, labels::SocketLabels},
};

/// Bucket bounds shared by the time histograms: the keepalive settings operators use, and the
/// middlebox idle timeouts they must stay under (350 s AWS, 240 s Azure, 600 s GCE).
pub const TIME_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 240.0, 350.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0, 7200.0,
    7875.0, 14400.0,
];

/// The families, in `keepalive_series_overflow_total{family}`'s words.
pub const FAMILIES: [&str; 5] = [
    "keepalive_probes_total",
    "keepalive_probes_answered_total",
    "keepalive_dead_connections_total",
    "keepalive_dead_detection_seconds",
    "keepalive_sockets",
];
const PROBES: usize = 0;
const ANSWERED: usize = 1;
const DEAD: usize = 2;
const DETECT: usize = 3;
pub const SOCKETS: usize = 4;

pub struct WorkloadMetrics {
    labels: Vec<MetricLabel>,
    ttl: Duration,
    probes: IntCounterVec,
    answered: IntCounterVec,
    /// `cause` first, then the workload labels.
    dead: IntCounterVec,
    detect: HistogramVec,
    overflow: IntCounterVec,
    books: Mutex<[Book; 5]>,
    /// The probe and answer counters recent events counted into (the per-event families).
    hot: Mutex<[HotSeries; 2]>,
}

impl WorkloadMetrics {
    pub fn new(r: &Registry, labels: &[MetricLabel], cap: u32, ttl: Duration) -> Self {
        let names: Vec<&str> = labels.iter().map(|l| l.name()).collect();
        let with_cause: Vec<&str> = std::iter::once("cause")
            .chain(names.iter().copied())
            .collect();
        let counter = |name: &str, help: &str, names: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), names).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let probes = counter(
            FAMILIES[PROBES],
            "Keepalive probes sent that were not yet answered when sent, by workload.",
            &names,
        );
        let answered = counter(
            FAMILIES[ANSWERED],
            "Probe runs the peer answered, by workload.",
            &names,
        );
        let dead = counter(
            FAMILIES[DEAD],
            "Connections keepalive declared dead, by cause and workload.",
            &with_cause,
        );
        let detect = HistogramVec::new(
            HistogramOpts::new(
                FAMILIES[DETECT],
                "Measured time from the peer's last sign of life to keepalive declaring it dead, by workload.",
            )
            .buckets(TIME_BUCKETS.to_vec()),
            &names,
        )
        .expect("valid metric");
        r.register(Box::new(detect.clone())).expect("unique metric");
        let overflow = counter(
            "keepalive_series_overflow_total",
            "Workload label sets folded into the `other` series because the family reached --metrics.series-cap.",
            &["family"],
        );
        for f in FAMILIES {
            overflow.with_label_values(&[f]);
        }
        // Every family (and every cause) has a series from the start, under the empty
        // workload: rate() and alerts need one, and a family with no series at all is not
        // exported. Nothing is known about a connection nobody has reported yet.
        let empty: Vec<&str> = vec![""; names.len()];
        for c in Cause::ALL {
            let mut v = vec![c.as_str()];
            v.extend(&empty);
            dead.with_label_values(&v);
        }
        probes.with_label_values(&empty);
        answered.with_label_values(&empty);
        detect.with_label_values(&empty);
        // The empty workload's pre-made series takes one of the cap's places in every family.
        let cap = cap as usize;
        let books = std::array::from_fn(|_| {
            let mut b = Book::new(cap);
            b.admit(vec![String::new(); names.len()], Instant::now());
            b
        });
        WorkloadMetrics {
            labels: labels.to_vec(),
            ttl,
            probes,
            answered,
            dead,
            detect,
            overflow,
            books: Mutex::new(books),
            hot: Mutex::new(Default::default()),
        }
    }

    pub fn labels(&self) -> &[MetricLabel] {
        &self.labels
    }

    /// The key `l` counts under in `family`, counting a fold.
    fn admit(&self, family: usize, l: &SocketLabels) -> Key {
        let key = series::key(&self.labels, l);
        let mut books = self.books.lock().unwrap_or_else(|e| e.into_inner());
        let (key, folded) = books[family].admit(key, Instant::now());
        if folded {
            self.overflow.with_label_values(&[FAMILIES[family]]).inc();
        }
        key
    }

    pub fn probe(&self, l: &SocketLabels) {
        self.count_hot(PROBES, &self.probes, l);
    }

    pub fn answered(&self, l: &SocketLabels) {
        self.count_hot(ANSWERED, &self.answered, l);
    }

    /// One event of a per-event family (`PROBES` or `ANSWERED`, which are also the indices of
    /// their `hot` slots): through the kept counter when `l` has one, else the front door.
    fn count_hot(&self, family: usize, vec: &IntCounterVec, l: &SocketLabels) {
        let now = Instant::now();
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        match hot[family].count(l, now) {
            Hit::Counted => {}
            Hit::CountedTouch => {
                let key = series::key(&self.labels, l);
                let mut books = self.books.lock().unwrap_or_else(|e| e.into_inner());
                books[family].admit(key, now);
            }
            Hit::Miss => {
                let k = self.admit(family, l);
                let counter = vec.with_label_values(&refs(&k));
                counter.inc();
                hot[family].keep(l, counter, now);
            }
        }
    }

    pub fn dead(&self, cause: Cause, detected_after_s: Option<f64>, l: &SocketLabels) {
        let k = self.admit(DEAD, l);
        let mut v = vec![cause.as_str()];
        v.extend(refs(&k));
        self.dead.with_label_values(&v).inc();
        if let Some(s) = detected_after_s {
            let k = self.admit(DETECT, l);
            self.detect.with_label_values(&refs(&k)).observe(s);
        }
    }

    /// The key a group of live sockets is shown under in a scrape-time family.
    pub fn admit_sockets(&self, key: Key) -> Key {
        let mut books = self.books.lock().unwrap_or_else(|e| e.into_inner());
        let (key, folded) = books[SOCKETS].admit(key, Instant::now());
        if folded {
            self.overflow.with_label_values(&[FAMILIES[SOCKETS]]).inc();
        }
        key
    }

    /// At each scrape, with the label sets that have sockets now: those stay; the others are
    /// forgotten once `ttl` has passed since their last event, and their series removed.
    pub fn expire(&self, live: &HashSet<Key>) {
        let now = Instant::now();
        // Lock order: `hot` before `books`, as in `count_hot`. Kept counters may belong to
        // series removed below.
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        hot.iter_mut().for_each(HotSeries::clear);
        let mut books = self.books.lock().unwrap_or_else(|e| e.into_inner());
        for book in books.iter_mut() {
            book.touch(live, now);
        }
        // The empty workload keeps its pre-made series (see `new`).
        let named = |k: &Key| k.iter().any(|v| !v.is_empty());
        for k in books[PROBES]
            .expire(now, self.ttl, live)
            .iter()
            .filter(|k| named(k))
        {
            let _ = self.probes.remove_label_values(&refs(k));
        }
        for k in books[ANSWERED]
            .expire(now, self.ttl, live)
            .iter()
            .filter(|k| named(k))
        {
            let _ = self.answered.remove_label_values(&refs(k));
        }
        for k in books[DEAD]
            .expire(now, self.ttl, live)
            .into_iter()
            .filter(|k| named(k))
        {
            for c in Cause::ALL {
                let mut v = vec![c.as_str()];
                v.extend(refs(&k));
                let _ = self.dead.remove_label_values(&v);
            }
        }
        for k in books[DETECT]
            .expire(now, self.ttl, live)
            .iter()
            .filter(|k| named(k))
        {
            let _ = self.detect.remove_label_values(&refs(k));
        }
        books[SOCKETS].expire(now, self.ttl, live);
    }
}

fn refs(k: &Key) -> Vec<&str> {
    k.iter().map(String::as_str).collect()
}
