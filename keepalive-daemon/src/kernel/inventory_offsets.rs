//! Offsets for the socket inventory: keepalive flag and timer, cgroup, and the walk from a
//! file descriptor to its socket. Kept apart from `offsets.rs`, which covers the probe path.
use keepalive_common::{ABSENT, Offsets};

use crate::{
    error::{Error, Result},
    kernel::btf::Btf,
};

pub fn fill(btf: &Btf, o: &mut Offsets) -> Result<()> {
    let need = |outer: &str, path: &str| {
        btf.member_offset(outer, path)
            .ok_or_else(|| Error::MissingType(format!("{outer}.{path}")))
    };
    o.timer_expires = need("timer_list", "expires")?;
    o.timer_pprev = need("timer_list", "entry.pprev")?;
    o.sk_flags = need("sock", "__sk_common.skc_flags")?;
    o.sock_keepopen_bit = btf
        .enum_value("SOCK_KEEPOPEN")
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| Error::MissingType("enum value SOCK_KEEPOPEN".into()))?;
    // A u16 since 5.6; a bitfield before, which the programs cannot read with a plain load.
    o.sk_protocol = match btf.member_size("sock", "sk_protocol") {
        Some(2) => need("sock", "sk_protocol")?,
        _ => {
            return Err(Error::MissingType(
                "sock.sk_protocol as u16 (kernel 5.6 or later)".into(),
            ));
        }
    };
    // The cgroup pointer has been a plain member since 5.15; older kernels pack it in a union
    // with flags, so the cgroup is reported as unknown there.
    o.sk_cgroup = btf
        .member_offset("sock", "sk_cgrp_data")
        .zip(btf.member_offset("sock_cgroup_data", "cgroup"))
        .map_or(ABSENT, |(a, b)| a + b);
    o.cgroup_kn = btf.member_offset("cgroup", "kn").unwrap_or(ABSENT);
    o.kernfs_id = btf.member_offset("kernfs_node", "id").unwrap_or(ABSENT);
    o.task_files = need("task_struct", "files")?;
    o.files_fdt = need("files_struct", "fdt")?;
    o.fdtable_fd = need("fdtable", "fd")?;
    o.file_private_data = need("file", "private_data")?;
    o.socket_sk = need("socket", "sk")?;
    // When the flow last carried a segment: optional, a kernel without them shows no idle.
    let opt = |outer: &str, path: &str| btf.member_offset(outer, path).unwrap_or(ABSENT);
    o.tp_lsndtime = opt("tcp_sock", "lsndtime");
    o.icsk_lrcvtime = opt("inet_connection_sock", "icsk_ack.lrcvtime");
    o.tp_rcv_tstamp = opt("tcp_sock", "rcv_tstamp");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// On the real kernel: the timer's pprev follows `next` in `entry`, the keepopen bit is a
    /// small enum value, and the fd walk fields exist.
    #[test]
    fn host_kernel_has_every_inventory_field() {
        let btf = Btf::from_file(Path::new("/sys/kernel/btf/vmlinux")).expect("host BTF");
        let mut o = Offsets::default();
        fill(&btf, &mut o).expect("fill");
        assert_eq!(
            o.timer_pprev,
            btf.member_offset("timer_list", "entry").unwrap() + 8
        );
        assert!(o.sock_keepopen_bit < 64);
        assert_ne!(o.sk_cgroup, ABSENT);
        assert!(o.socket_sk > 0 && o.file_private_data > 0);
        for off in [o.tp_lsndtime, o.icsk_lrcvtime, o.tp_rcv_tstamp] {
            assert_ne!(off, ABSENT);
        }
    }
}
