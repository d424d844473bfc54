//! HTTP sink: `/metrics`, `/events` (NDJSON stream), `/healthz` and a landing page.
use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, PerCpuArray};
use axum::{
    Router,
    body::Body,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::{inventory::Inventory, inventory_metrics, metrics::Metrics, socket_filter::Filter};

/// The kernel's count of events that found the ring buffer full, folded into
/// `keepalive_events_lost_total{stage="kernel"}` at each scrape.
pub struct KernelLost {
    map: PerCpuArray<MapData, u64>,
    seen: u64,
}

impl KernelLost {
    pub fn new(map: PerCpuArray<MapData, u64>) -> Self {
        KernelLost { map, seen: 0 }
    }

    fn refresh(&mut self, metrics: &Metrics) {
        let Ok(values) = self.map.get(&0, 0) else { return };
        let total: u64 = values.iter().sum();
        if total > self.seen {
            metrics.lost.with_label_values(&["kernel"]).inc_by(total - self.seen);
            self.seen = total;
        }
    }
}

pub struct Web {
    pub metrics: Arc<Metrics>,
    pub events: broadcast::Sender<Arc<str>>,
    pub kernel_lost: Mutex<KernelLost>,
    pub telemetry_path: String,
    pub inventory: Arc<Mutex<Inventory>>,
}

pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(landing))
        .route(&web.telemetry_path.clone(), get(metrics))
        .route("/events", get(events))
        .route("/sockets", get(sockets))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(web)
}

async fn landing(State(web): State<Arc<Web>>) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><title>keepalive observer</title></head><body>\
         <h1>keepalive observer</h1><p>TCP keepalive seen from inside the kernel.</p><ul>\
         <li><a href=\"{0}\">{0}</a> Prometheus metrics</li>\
         <li><a href=\"/events\">/events</a> live events, one JSON object per line</li>\
         <li><a href=\"/sockets\">/sockets</a> every TCP socket's keepalive settings (filters: port, comm, netns, keepalive, at_risk)</li>\
         <li><a href=\"/healthz\">/healthz</a> liveness</li></ul></body></html>",
        web.telemetry_path
    ))
}

async fn metrics(State(web): State<Arc<Web>>) -> Response {
    if let Ok(mut lost) = web.kernel_lost.lock() {
        lost.refresh(&web.metrics);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        {
            let mut text = web.metrics.render();
            text.push_str(&inventory_metrics::render(&web.inventory.lock().unwrap_or_else(|e| e.into_inner())));
            text
        },
    )
        .into_response()
}

async fn sockets(State(web): State<Arc<Web>>, axum::extract::RawQuery(q): axum::extract::RawQuery) -> Response {
    let filter = match Filter::parse(q.as_deref().unwrap_or("")) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let inv = web.inventory.lock().unwrap_or_else(|e| e.into_inner());
    let mut list: Vec<_> = inv.entries().map(|e| inv.view(e)).filter(|v| filter.matches(v)).collect();
    drop(inv);
    list.sort_by(|a, b| (a.netns, a.sport, a.dport).cmp(&(b.netns, b.sport, b.dport)));
    let body = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Decrements the reader gauge however the stream ends (client gone, or dropped as slow).
struct Reader {
    rx: broadcast::Receiver<Arc<str>>,
    metrics: Arc<Metrics>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.metrics.readers.dec();
    }
}

/// Each reader has its own position in a bounded broadcast ring: a reader that falls a full
/// ring behind is disconnected (and counted) instead of slowing the pipeline or other readers.
async fn events(State(web): State<Arc<Web>>) -> Response {
    web.metrics.readers.inc();
    let reader = Reader {
        rx: web.events.subscribe(),
        metrics: web.metrics.clone(),
    };
    let stream = futures_util::stream::unfold(reader, |mut r| async move {
        match r.rx.recv().await {
            Ok(line) => Some((Ok::<_, Infallible>(Bytes::copy_from_slice(line.as_bytes())), r)),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                r.metrics.readers_dropped.inc();
                None
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
