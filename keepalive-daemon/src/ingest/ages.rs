//! How long ago a socket last sent and received, as read with every record: the ages the
//! risk of `state::inventory` is judged on.

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
    pub(crate) fn from_jiffies(ages: [u32; 3], now: u32, hz: u32) -> Activity {
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
