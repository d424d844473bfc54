//! Stage 2, ingest: everything that turns what the kernel says into typed input for the state
//! stage. The ring buffer's records (`decode`), ICMP errors per namespace (`icmp`), namespace
//! keepalive sysctls and the kernel's probe count (`sysctl`, audited by `unseen`), and the
//! inventory re-walk (`rewalk`) and the on-demand walk for fresh idle times (`activity`).
pub mod activity;
pub mod ages;
pub mod decode;
pub mod icmp;
pub mod rewalk;
pub mod sysctl;
pub mod unseen;

/// Everything the event loop hears about besides the ring buffer.
pub enum Input {
    Icmp(icmp::IcmpHit),
    Defaults(sysctl::Reading),
    Resync(rewalk::Walked),
}
