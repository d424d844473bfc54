//! HTTP sink: `/metrics`, `/events` (NDJSON stream), `/sockets`, `/healthz` and a landing
//! page; over TLS and behind basic auth when `--web.config.file` says so.
use std::{
    convert::Infallible,
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use base64::Engine as _;
use bytes::Bytes;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use log::{debug, error};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::broadcast,
};

use crate::{
    service::webconfig::Watched,
    sinks::{
        inventory_metrics,
        metrics::Metrics,
        publish::Published,
        settle::Settle,
        socket_filter::{EventFilter, Filter},
        sockets_stream,
    },
    state::{advice, inventory::Inventory},
};

/// A client that has not sent its request headers (or finished the TLS handshake) by then is
/// dropped, so idle connections cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Web {
    pub metrics: Arc<Metrics>,
    pub events: broadcast::Sender<Arc<Published>>,
    /// Folded into `keepalive_events_lost_total` at each scrape.
    pub kernel_lost: Mutex<crate::kernel::loss::KernelLoss>,
    pub telemetry_path: String,
    pub inventory: Arc<Mutex<Inventory>>,
    /// Events a reader may be behind before it is disconnected (--web.events-buffer).
    pub events_buffer: usize,
    /// The rate-limited walk that refreshes idle times before they are shown.
    pub activity: Arc<crate::ingest::activity::ActivityWalk>,
    /// The work a scrape leaves for after it.
    pub settle: Settle,
}

impl Web {
    /// Refreshes every socket's activity from the kernel (at most once a second, see
    /// `ingest::activity`) before a reader looks at idle times or risk.
    pub async fn fresh_activity(&self) {
        let unwalked = lock(&self.inventory).unwalked;
        // A chunk per hold of the lock: a million sockets under one hold would stall events.
        self.activity
            .fresh(unwalked, |chunk| lock(&self.inventory).refresh(chunk))
            .await;
    }

    pub fn lock_inventory(&self) -> std::sync::MutexGuard<'_, Inventory> {
        lock(&self.inventory)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(landing))
        .route(&web.telemetry_path.clone(), get(metrics))
        .route("/events", get(events))
        .route("/sockets", get(sockets))
        .route("/advice", get(advice))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(web)
}

async fn landing(State(web): State<Arc<Web>>) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><title>keepalive observer</title></head><body>\
         <h1>keepalive observer</h1><p>TCP keepalive seen from inside the kernel.</p><ul>\
         <li><a href=\"{0}\">{0}</a> Prometheus metrics</li>\
         <li><a href=\"/events\">/events</a> live events, one JSON object per line (filters: event, cause, process, unit, container, pod, k8s_namespace, role, peer_group)</li>\
         <li><a href=\"/sockets\">/sockets</a> every TCP socket's keepalive settings (filters: port, comm, netns, keepalive, at_risk, risk, process, unit, container, pod, k8s_namespace, role, peer_group)</li>\
         <li><a href=\"/advice\">/advice</a> exposed and at-risk sockets by workload, and what would cover them</li>\
         <li><a href=\"/healthz\">/healthz</a> liveness</li></ul></body></html>",
        web.telemetry_path
    ))
}

async fn metrics(State(web): State<Arc<Web>>) -> Response {
    if let Ok(mut lost) = web.kernel_lost.lock() {
        web.metrics.add_kernel_lost(lost.refresh());
    }
    let mut text = web.metrics.render();
    text.push_str(&inventory_metrics::render(
        &web.lock_inventory(),
        &web.metrics.workload,
    ));
    // Idle times and classes that only time changed are settled for the next scrape.
    Settle::after_scrape(&web);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn sockets(
    State(web): State<Arc<Web>>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    let filter = match Filter::parse(q.as_deref().unwrap_or("")) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    web.fresh_activity().await;
    match sockets_stream::order(&web, &filter).await {
        Ok(order) => sockets_stream::respond(web, filter, order),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// Exposed and at-risk sockets grouped by workload, with what would cover them (`advice`).
async fn advice(State(web): State<Arc<Web>>) -> Response {
    web.fresh_activity().await;
    let report = advice::advise(&lock(&web.inventory));
    let body = serde_json::to_string(&report).unwrap_or_else(|_| "{}".into());
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Decrements the reader gauge however the stream ends (client gone, or dropped as slow).
struct Reader {
    rx: broadcast::Receiver<Arc<Published>>,
    metrics: Arc<Metrics>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.metrics.readers.dec();
    }
}

/// Each reader has its own position in a bounded broadcast ring, drained by a task of its own
/// into the response as fast as the client reads. A reader that falls a whole buffer behind is
/// disconnected (and counted) instead of slowing the pipeline or other readers, also when the
/// client stops reading altogether (then HTTP stops asking for more, so the task, not the
/// response, notices) and its connection is closed.
async fn events(
    State(web): State<Arc<Web>>,
    kill: Option<axum::Extension<ConnectionKill>>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    let filter = match EventFilter::parse(q.as_deref().unwrap_or("")) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    web.metrics.readers.inc();
    let mut reader = Reader {
        rx: web.events.subscribe(),
        metrics: web.metrics.clone(),
    };
    let (tx, mut body) = tokio::sync::mpsc::channel::<Bytes>(web.events_buffer.max(1));
    tokio::spawn(async move {
        let behind = loop {
            tokio::select! {
                got = reader.rx.recv() => match got {
                    Ok(ev) if !filter.matches(ev.kind, ev.cause, &ev.labels) => {}
                    Ok(ev) => match tx.try_send(Bytes::copy_from_slice(ev.line.as_bytes())) {
                        Ok(()) => {}
                        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => break true,
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break false,
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => break true,
                    Err(broadcast::error::RecvError::Closed) => break false,
                },
                // The client went away: the response (and its receiver) is gone.
                () = tx.closed() => break false,
            }
        };
        if behind {
            reader.metrics.readers_dropped.inc();
            if let Some(axum::Extension(kill)) = kill {
                kill.0.notify_one();
            }
        }
        drop(reader);
    });
    // Every line already queued goes out as one chunk: with TCP_NODELAY (see `serve`) a burst
    // of events then costs a few segments rather than one per line.
    let stream = futures_util::stream::poll_fn(move |cx| match body.poll_recv(cx) {
        std::task::Poll::Ready(Some(first)) => {
            let mut buf = bytes::BytesMut::from(&first[..]);
            while buf.len() < 64 * 1024 {
                match body.try_recv() {
                    Ok(more) => buf.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            std::task::Poll::Ready(Some(Ok::<_, Infallible>(buf.freeze())))
        }
        other => other.map(|b| b.map(Ok::<_, Infallible>)),
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Closes the connection it was handed to: a stuck `/events` client cannot be told to go
/// away over HTTP, since it reads nothing.
#[derive(Clone)]
struct ConnectionKill(Arc<tokio::sync::Notify>);

/// Serves `app` on `listener`: plain HTTP/1.1, or TLS when the web configuration has it, with
/// its basic auth, headers and rate limit in front of every path.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    web: Option<Arc<Watched>>,
) -> io::Result<()> {
    let tls = web.as_ref().is_some_and(|w| w.tls_at_start);
    let app = match &web {
        Some(w) => app.layer(middleware::from_fn_with_state(w.clone(), guard)),
        None => app,
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => {
                // `/events` writes small lines as events come; with Nagle on, a line waits for
                // the reader's delayed ACK (up to 40 ms) whenever an earlier one is unacknowledged.
                let _ = conn.0.set_nodelay(true);
                conn
            }
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin; the listener stays.
                error!("accepting an HTTP connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        let web = web.clone();
        tokio::spawn(async move {
            match (tls, web.and_then(|w| w.current().tls.clone())) {
                (true, Some(config)) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => connection(s, app).await,
                        Ok(Err(e)) => debug!("TLS handshake with {peer}: {e}"),
                        Err(_) => debug!("TLS handshake with {peer}: timed out"),
                    }
                }
                _ => connection(stream, app).await,
            }
        });
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: S, app: Router) {
    let kill = Arc::new(tokio::sync::Notify::new());
    let app = app.layer(axum::Extension(ConnectionKill(kill.clone())));
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::select! {
        r = served => if let Err(e) = r {
            debug!("HTTP connection: {e}");
        },
        () = kill.notified() => debug!("HTTP connection closed: its /events reader fell behind"),
    }
}

/// Rate limit, then basic auth, then the configured response headers, as exporter-toolkit does.
async fn guard(State(web): State<Arc<Watched>>, req: Request, next: Next) -> Response {
    let config = web.current();
    if !web.allow(&config) {
        return (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response();
    }
    let authorized = config.users.is_empty() || {
        let creds = basic_credentials(req.headers().get(header::AUTHORIZATION));
        match creds {
            Some((user, password)) => {
                let (web, config) = (web.clone(), config.clone());
                tokio::task::spawn_blocking(move || web.check_password(&config, &user, &password))
                    .await
                    .unwrap_or(false)
            }
            None => false,
        }
    };
    let mut resp = if authorized {
        next.run(req).await
    } else {
        let mut r = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        r
    };
    for (name, value) in &config.headers {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    resp
}

fn basic_credentials(value: Option<&HeaderValue>) -> Option<(String, String)> {
    let text = value?.to_str().ok()?;
    let (scheme, b64) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_parse() {
        let v = HeaderValue::from_static("Basic YWxpY2U6czNjcjN0OndpdGggY29sb24=");
        assert_eq!(
            basic_credentials(Some(&v)),
            Some(("alice".into(), "s3cr3t:with colon".into()))
        );
        assert_eq!(
            basic_credentials(Some(&HeaderValue::from_static("Bearer abc"))),
            None
        );
        assert_eq!(
            basic_credentials(Some(&HeaderValue::from_static("Basic !!!"))),
            None
        );
        assert_eq!(basic_credentials(None), None);
    }
}
