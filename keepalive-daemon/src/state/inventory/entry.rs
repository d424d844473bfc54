//! One socket of the inventory, packed (see `Entry`).
use crate::ingest::decode::{Activity, Keepalive};

/// One socket, in 88 bytes: a host holds up to a million sockets and the table is most of
/// the daemon's memory (the budget is 128 bytes a socket, index and owner table included).
/// What many sockets share is kept once elsewhere: the owner's name per process in
/// `Inventory::procs`, the local address in `Inventory::addrs`, the label strings per cgroup
/// in the attribution.
#[derive(Debug, Clone)]
pub struct Entry {
    pub sk: u64,
    pub cgroup: u64,
    /// Socket file inode (sockfs numbers them with 32 bits), 0 until the socket has a file
    /// (accepted sockets get one at accept).
    pub ino: u32,
    /// When the entry was last refreshed, in ms since `Inventory::epoch`: ages
    /// `next_timer_ms` at query time.
    pub(super) seen_ms: u32,
    /// The local address, by its number in `Inventory::addrs`.
    pub(super) saddr: u32,
    pub netns: u32,
    /// The peer's address: IPv4 in the first 4 bytes, or IPv6 (see `V6`).
    pub(super) daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// Ages of the last segments at `seen_ms` (see `risk`).
    pub(super) activity: Activity,
    /// Keepalive timer due this many ms after `seen_ms`; `NOT_ARMED` when not pending.
    pub(super) next_timer_ms: u32,
    /// Values set on the socket itself (0 = use the namespace default), from the kernel: the
    /// kernel caps idle and interval at 32 767 s and the count at 127.
    pub(super) user_timeout_ms: u32,
    pub(super) own_idle_s: u16,
    pub(super) own_intvl_s: u16,
    /// Owning process, 0 while unknown.
    pub pid: u32,
    /// What the metric families count it under (`tally`).
    pub(super) class: u32,
    pub(super) own_cnt: u8,
    pub state: u8,
    pub probes_out: u8,
    /// `ON`, `V6`, and above them the polls since the socket appeared without an owner
    /// (lookups back off and stop so sockets no process holds, listener backlogs and kernel
    /// sockets, do not cost a /proc scan every poll forever).
    pub(super) flags: u8,
}

/// `Entry::flags`: SO_KEEPALIVE is on.
pub(super) const ON: u8 = 1;
/// `Entry::flags`: the addresses are IPv6.
pub(super) const V6: u8 = 2;
/// `Entry::flags`: owner lookups so far, counted from this bit up.
const TRIES: u8 = 4;

impl Entry {
    pub fn keepalive_on(&self) -> bool {
        self.flags & ON != 0
    }

    pub fn daddr(&self) -> std::net::IpAddr {
        if self.flags & V6 != 0 {
            self.daddr.into()
        } else {
            let [a, b, c, d, ..] = self.daddr;
            [a, b, c, d].into()
        }
    }

    /// The values set on the socket itself (0 = the namespace's default).
    pub fn own(&self) -> Keepalive {
        Keepalive {
            idle_s: self.own_idle_s.into(),
            intvl_s: self.own_intvl_s.into(),
            cnt: self.own_cnt,
            user_timeout_ms: self.user_timeout_ms,
        }
    }

    pub(super) fn owner_tries(&self) -> u8 {
        self.flags / TRIES
    }

    pub(super) fn set_owner_tries(&mut self, n: u8) {
        self.flags = (self.flags % TRIES) | (n.min(u8::MAX / TRIES) * TRIES);
    }
}
