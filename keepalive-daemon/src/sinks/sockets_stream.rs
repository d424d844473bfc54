//! `/sockets` written as it is read: the inventory is visited in chunks of `CHUNK` sockets per
//! hold of its lock, each chunk's matching rows serialised and sent before the next is taken.
//! Built whole, the answer cost 1 000 MiB at a million sockets and held the lock (and with it
//! the event loop) for seconds; streamed, it holds one chunk and one order (16 bytes a socket,
//! or 24 per matching socket with `sort=risk`, `limit` of them at most, and never more than
//! `RISK_SORT_MAX`: see `check_bounded`).
use std::{cmp::Reverse, collections::BinaryHeap, convert::Infallible, sync::Arc};

use axum::{
    body::Body,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{
    sinks::{http::Web, socket_filter::Filter},
    state::inventory::{Risk, SocketView},
};

/// Sockets visited per hold of the inventory lock.
const CHUNK: usize = 4096;
/// Rows serialised per message to the client: about 300 KiB. With 4 096 rows a message (2.5
/// MiB), the messages queued and in flight made most of what serving every row cost.
const ROWS: usize = 512;

/// Where a socket goes in the default order: namespace, local port, remote port (then the
/// socket itself, so that the order is total).
fn place(v: &SocketView) -> u64 {
    (u64::from(v.netns) << 32) | (u64::from(v.sport) << 16) | u64::from(v.dport)
}

/// `sort=risk`: smaller is riskier. Exposed first, then at risk, covered, local, listeners,
/// the rest; the longest silent first within a class.
fn rank(v: &SocketView) -> (u8, Reverse<u32>, u64) {
    let class = match v.risk {
        Risk::Exposed => 0,
        Risk::AtRisk => 1,
        Risk::Covered => 2,
        Risk::Local => 3,
        Risk::Listener => 4,
        Risk::None => 5,
    };
    let idle_ms = v.idle_now_s.map_or(0, |s| (s * 1000.0) as u32);
    (class, Reverse(idle_ms), place(v))
}

/// The most sockets `sort=risk` orders at once: its heap holds 24 bytes per socket it keeps.
pub const RISK_SORT_MAX: usize = 100_000;

/// `sort=risk` keeps `limit` sockets, or every matching one without a limit: refused when that
/// could exceed `RISK_SORT_MAX` (`sockets`: how many the inventory holds), so that no query
/// makes the daemon hold the whole table a second time.
pub fn check_bounded(filter: &Filter, sockets: usize) -> Result<(), String> {
    let kept = filter.limit.unwrap_or(usize::MAX).min(sockets);
    if filter.by_risk && kept > RISK_SORT_MAX {
        return Err(format!(
            "sort=risk orders at most {RISK_SORT_MAX} sockets at once and {sockets} are \
             inventoried: add limit=N with N at most {RISK_SORT_MAX}"
        ));
    }
    Ok(())
}

pub fn respond(web: Arc<Web>, filter: Filter) -> Response {
    let (tx, mut rx) = mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        let order = order(&web, &filter).await;
        let limit = filter.limit.unwrap_or(usize::MAX);
        let (mut sent, mut buf) = (0usize, b"[".to_vec());
        for chunk in order.chunks(ROWS) {
            {
                let inv = web.lock_inventory();
                for sk in chunk {
                    if sent == limit {
                        break;
                    }
                    let Some(e) = inv.get(*sk) else { continue };
                    let v = inv.view(e);
                    // Ordered by risk, the order pass already filtered (and the rest of the
                    // socket may have changed since: the row shows it as it is now).
                    if !filter.by_risk && !filter.matches(&v) {
                        continue;
                    }
                    if sent > 0 {
                        buf.push(b',');
                    }
                    if serde_json::to_writer(&mut buf, &v).is_ok() {
                        sent += 1;
                    }
                }
            }
            if tx
                .send(Bytes::from(std::mem::take(&mut buf)))
                .await
                .is_err()
            {
                return;
            }
            if sent == limit {
                break;
            }
        }
        buf.push(b']');
        let _ = tx.send(Bytes::from(buf)).await;
        // The activity walk and the order are gone: their pages go back (see `settle`).
        if order.len() >= CHUNK {
            drop(order);
            let _ = tokio::task::spawn_blocking(crate::service::heap::release_freed).await;
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>))
    });
    axum::http::Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The sockets to write, in the order to write them. By risk, filtered here (risk is part of
/// the view): a heap of the `limit` riskiest, or all matching ones without a limit.
async fn order(web: &Web, filter: &Filter) -> Vec<u64> {
    let ids = web.lock_inventory().socket_ids();
    if !filter.by_risk {
        let mut placed = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK * 4) {
            {
                let inv = web.lock_inventory();
                placed.extend(chunk.iter().filter_map(|sk| Some((inv.place(*sk)?, *sk))));
            }
            tokio::task::yield_now().await;
        }
        drop(ids);
        placed.sort_unstable();
        return placed.into_iter().map(|(_, sk)| sk).collect();
    }
    let limit = filter.limit.unwrap_or(usize::MAX);
    let mut heap = BinaryHeap::new();
    for chunk in ids.chunks(CHUNK) {
        {
            let inv = web.lock_inventory();
            for sk in chunk {
                let Some(e) = inv.get(*sk) else { continue };
                let v = inv.view(e);
                if !filter.matches(&v) {
                    continue;
                }
                let key = (rank(&v), *sk);
                if heap.len() < limit {
                    heap.push(key);
                } else if heap.peek().is_some_and(|worst| key < *worst) {
                    heap.pop();
                    heap.push(key);
                }
            }
        }
        tokio::task::yield_now().await;
    }
    heap.into_sorted_vec()
        .into_iter()
        .map(|(_, sk)| sk)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_sort_is_bounded() {
        let f = |q: &str| Filter::parse(q).unwrap();
        assert!(check_bounded(&f("sort=risk"), RISK_SORT_MAX).is_ok());
        let e = check_bounded(&f("sort=risk"), RISK_SORT_MAX + 1).unwrap_err();
        assert!(e.contains("limit=N"), "{e}");
        assert!(check_bounded(&f("sort=risk&limit=100"), 1_000_000).is_ok());
        assert!(check_bounded(&f("sort=risk&limit=100001"), 1_000_000).is_err());
        assert!(check_bounded(&f("sort=risk&limit=100001"), 5).is_ok());
        assert!(check_bounded(&f("keepalive=off"), 1_000_000).is_ok());
    }

    #[test]
    fn riskier_and_longer_silent_sorts_first() {
        let r = |class: u8, idle: u32| (class, Reverse(idle), 0u64);
        assert!(r(0, 10) < r(1, 9_999));
        assert!(r(1, 5_000) < r(1, 10));
        assert!(r(2, 0) < r(4, 0));
    }
}
