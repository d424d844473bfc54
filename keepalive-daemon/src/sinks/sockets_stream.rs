//! `/sockets` written as it is read: the inventory is visited in chunks of `CHUNK` sockets per
//! hold of its lock, each chunk's matching rows serialised and sent before the next is taken.
//! Built whole, the answer cost 1 000 MiB at a million sockets and held the lock (and with it
//! the event loop) for seconds; streamed, it holds one chunk and one order (16 bytes a socket,
//! or 24 per matching socket with `sort=risk`, `limit` of them at most, and never more than
//! `RISK_SORT_MAX`).
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
/// More matching sockets without a `limit` (or with a larger one) are refused (`order`), so
/// that no query makes the daemon hold the whole table a second time.
pub const RISK_SORT_MAX: usize = 100_000;

/// Streams the rows of `order` (from `order`) that still match.
pub fn respond(web: Arc<Web>, filter: Filter, order: Vec<u64>) -> Response {
    let (tx, mut rx) = mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
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
/// the view): a heap of the `limit` riskiest, or of all matching ones without a limit; an
/// error when that heap would hold more than `RISK_SORT_MAX`.
pub async fn order(web: &Web, filter: &Filter) -> Result<Vec<u64>, String> {
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
        return Ok(placed.into_iter().map(|(_, sk)| sk).collect());
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
                keep(&mut heap, (rank(&v), *sk), limit)?;
            }
        }
        tokio::task::yield_now().await;
    }
    Ok(heap
        .into_sorted_vec()
        .into_iter()
        .map(|(_, sk)| sk)
        .collect())
}

/// Keeps `key` if it is among the `limit` smallest so far; refuses a heap beyond
/// `RISK_SORT_MAX`.
fn keep<K: Ord>(heap: &mut BinaryHeap<K>, key: K, limit: usize) -> Result<(), String> {
    if heap.len() < limit {
        if heap.len() == RISK_SORT_MAX {
            return Err(format!(
                "sort=risk orders at most {RISK_SORT_MAX} sockets at once and more match: add \
                 limit=N with N at most {RISK_SORT_MAX}, or a filter"
            ));
        }
        heap.push(key);
    } else if heap.peek().is_some_and(|worst| key < *worst) {
        heap.pop();
        heap.push(key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_sort_is_bounded() {
        let mut heap = BinaryHeap::new();
        for k in 0..RISK_SORT_MAX as u32 {
            keep(&mut heap, k, usize::MAX).unwrap();
        }
        let e = keep(&mut heap, 0, usize::MAX).unwrap_err();
        assert!(e.contains("limit=N"), "{e}");
        // With a limit the heap stays at it, the smallest kept.
        let mut heap = BinaryHeap::new();
        for k in (0..1_000u32).rev() {
            keep(&mut heap, k, 10).unwrap();
        }
        assert_eq!(heap.into_sorted_vec(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn riskier_and_longer_silent_sorts_first() {
        let r = |class: u8, idle: u32| (class, Reverse(idle), 0u64);
        assert!(r(0, 10) < r(1, 9_999));
        assert!(r(1, 5_000) < r(1, 10));
        assert!(r(2, 0) < r(4, 0));
    }
}
