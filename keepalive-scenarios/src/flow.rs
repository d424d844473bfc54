//! What the daemon must report for each connection of a scenario: the harness in `scenarios`
//! builds these, `verify` checks the daemon's events against them (both import this module,
//! neither the other's types).
use crate::sock::{Keepalive, Stamp};
use std::net::SocketAddr;

/// What the daemon must report for one connection.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    Alive {
        min_probes: usize,
        min_answered: usize,
    },
    Dead {
        probes: u32,
        cause: &'static str,
        errno: &'static str,
        detect: (f64, f64),
    },
    /// No event of any kind.
    Silent,
    /// The client's egress dropped every packet for a while: at least `min_failed`
    /// `probe_failed` events 0.5 s apart, then probes again, no death.
    LocalDrop { min_failed: usize },
}

#[derive(Clone, Debug)]
pub struct Flow {
    pub label: &'static str,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub ka: Option<Keepalive>,
    /// When the client last received a packet: the start of its keepalive idle clock.
    pub last_recv: Stamp,
    pub expect: Expect,
}
