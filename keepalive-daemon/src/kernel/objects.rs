//! The eBPF objects `build.rs` builds from `keepalive-ebpf` (aya-build builds every binary of
//! that crate) and leaves in OUT_DIR.

/// The daemon's kernel programs.
pub static DAEMON: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keepalive"));

/// Empty programs on the daemon's hooks: the baseline keepalive-bench measures the daemon's
/// programs against. Exported so that the bench does not build the eBPF crate a second time;
/// the daemon binary does not reference it, so the linker leaves it out.
pub static EMPTY: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keepalive-empty"));
