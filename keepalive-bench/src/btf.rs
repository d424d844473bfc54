//! Byte offsets of the kernel structure members the comparison programs and the bpftrace peer
//! need (`timer_list.function`, the keepalive timer inside the socket, `icsk_probes_out`),
//! resolved by the daemon's own BTF reader, so both follow the same rules on every kernel.
use std::path::Path;

use anyhow::{Context as _, Result};
pub use keepalive_common::Offsets;
use keepalive_daemon::kernel::{btf::Btf, offsets};

pub fn offsets() -> Result<Offsets> {
    let btf = Btf::from_file(Path::new("/sys/kernel/btf/vmlinux")).context("reading BTF")?;
    offsets::resolve(&btf).context("resolving offsets")
}
