//! A socket's activity (`Activity`: ages of its last segments, read with every record), and
//! fresh activity on demand: when `/sockets`, `/advice` or the metrics are read, the iterator
//! walks every namespace's TCP table (the same walk as `rewalk`) so that each socket's idle time
//! is the kernel's own, not an extrapolation. No per-packet hook: a walk costs what the
//! re-walk costs (tens of ms at 100 k sockets), so it runs at most once per `MIN_INTERVAL`;
//! readers within that window get the last walk's values aged by the clock (exact while the
//! socket stays silent, which is what risk is about).
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::decode::KernelEvent;
use crate::kernel::attach::Attached;

/// At most one walk per this interval, whoever asks.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

pub struct ActivityWalk {
    attached: Arc<Mutex<Option<Attached>>>,
    hz: u32,
    /// Held across a walk so that concurrent readers wait for one walk instead of each
    /// starting their own; holds when the last one finished.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl ActivityWalk {
    pub fn new(attached: Arc<Mutex<Option<Attached>>>, hz: u32) -> Self {
        ActivityWalk {
            attached,
            hz,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Every socket's record from a new walk, or `None` when one ran within `MIN_INTERVAL`
    /// (or the walk failed, or the programs are detached). `unwalked`: sockets opened since the
    /// last walk, whose ages the kernel had not stamped yet when they were reported; they are
    /// walked at once.
    pub async fn fresh(&self, unwalked: bool) -> Option<Vec<KernelEvent>> {
        let mut last = self.last.lock().await;
        if !unwalked && last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
            return None;
        }
        let walked = super::rewalk::walk(&self.attached, self.hz).await;
        *last = Some(Instant::now());
        Some(walked?.ok()?.events)
    }
}

/// How long ago the flow last carried a segment, in ms when the record was taken; `UNKNOWN`
/// where the kernel lacks the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Last data segment sent (`tcp_sock.lsndtime`, `ss` lastsnd).
    pub send_ms: u32,
    /// Last data segment received (`icsk_ack.lrcvtime`, `ss` lastrcv).
    pub recv_ms: u32,
    /// Last ACK received (`tcp_sock.rcv_tstamp`, `ss` lastack).
    pub ack_ms: u32,
}

impl Activity {
    pub const UNKNOWN: u32 = u32::MAX;
    pub const NONE: Activity = Activity {
        send_ms: Self::UNKNOWN,
        recv_ms: Self::UNKNOWN,
        ack_ms: Self::UNKNOWN,
    };

    /// Since the path last saw the flow: the newest of the three. A middlebox's idle timer
    /// restarts on any segment, ACKs included.
    pub fn path_idle_ms(&self) -> Option<u32> {
        Some(self.send_ms.min(self.recv_ms).min(self.ack_ms)).filter(|v| *v != Self::UNKNOWN)
    }

    /// The ages now, for a record taken at `ts_ns` (CLOCK_MONOTONIC): a record can wait in
    /// the ring buffer, and a walk of many namespaces takes seconds on a slow machine, so ages
    /// are carried forward from the moment the kernel read them, not from when they arrive.
    pub fn since_record(self, ts_ns: u64) -> Activity {
        let waited = crate::kernel::clock::monotonic_ns().saturating_sub(ts_ns) / 1_000_000;
        let age = |ms: u32| match ms {
            Self::UNKNOWN => Self::UNKNOWN,
            ms => (u64::from(ms) + waited).min(u64::from(Self::UNKNOWN - 1)) as u32,
        };
        Activity {
            send_ms: age(self.send_ms),
            recv_ms: age(self.recv_ms),
            ack_ms: age(self.ack_ms),
        }
    }

    /// From the programs' ages in jiffies. An age equal to `now` means the kernel's stamp was
    /// still 0: not yet set (a socket reported as it became ESTABLISHED, before
    /// `tcp_finish_connect` stamps it), shown as unknown rather than as "since boot".
    pub(super) fn from_jiffies(ages: [u32; 3], now: u32, hz: u32) -> Activity {
        let ms = |j: u32| match j {
            u32::MAX => Self::UNKNOWN,
            j if j == now => Self::UNKNOWN,
            j => (u64::from(j) * 1000 / u64::from(hz)).min(u64::from(Self::UNKNOWN - 1)) as u32,
        };
        Activity {
            send_ms: ms(ages[0]),
            recv_ms: ms(ages[1]),
            ack_ms: ms(ages[2]),
        }
    }
}
