//! Fills [`Offsets`] from the running kernel's BTF.
//!
//! The eBPF programs read kernel memory at these offsets with `bpf_probe_read_kernel`, so a wrong
//! value silently yields garbage. Everything is therefore resolved by name, and the few layout
//! and size assumptions the programs make are checked here, turning a mismatch into a startup
//! error that names the field.
use keepalive_common::{ABSENT, Offsets};

use crate::{
    error::{Error, Result},
    kernel::btf::Btf,
};

/// Fields the programs read with fixed-size loads (see the field docs in keepalive-common).
/// `sysctl_tcp_keepalive_probes` is left out: it is u8 since 6.0 and int before, and the
/// programs read its low byte either way.
const FIXED_WIDTHS: &[(&str, &str, u32)] = &[
    ("sock", "__sk_common.skc_family", 2),
    ("sock", "__sk_common.skc_state", 1),
    ("inet_sock", "inet_sport", 2),
    ("sock", "__sk_common.skc_dport", 2),
    ("sock", "__sk_common.skc_rcv_saddr", 4),
    ("sock", "__sk_common.skc_daddr", 4),
    ("sock", "sk_err", 4),
    ("sock", "sk_err_soft", 4),
    ("inet_connection_sock", "icsk_probes_out", 1),
    ("inet_connection_sock", "icsk_user_timeout", 4),
    ("tcp_sock", "keepalive_time", 4),
    ("tcp_sock", "keepalive_intvl", 4),
    ("tcp_sock", "keepalive_probes", 1),
    ("tcp_sock", "segs_out", 4),
    ("net", "ns.inum", 4),
    ("net", "ipv4.sysctl_tcp_keepalive_time", 4),
    ("net", "ipv4.sysctl_tcp_keepalive_intvl", 4),
];

/// Bytes of a socket the programs copy in one read per event (`keepalive-ebpf/src/sock.rs`):
/// up to the end of the last socket field they read. Fields past what the programs' buffer
/// holds are read on their own there, so this only has to cover, not to fit.
pub fn sock_span(o: &Offsets) -> u32 {
    let timer = |f: u32| o.keepalive_timer.checked_add(f);
    let fields = [
        (Some(o.skc_family), 2),
        (Some(o.skc_state), 1),
        (Some(o.inet_sport), 2),
        (Some(o.skc_dport), 2),
        (Some(o.skc_rcv_saddr), 4),
        (Some(o.skc_daddr), 4),
        (Some(o.skc_v6_rcv_saddr), 16),
        (Some(o.skc_v6_daddr), 16),
        (Some(o.skc_net), 8),
        (Some(o.sk_err), 4),
        (Some(o.sk_err_soft), 4),
        (Some(o.sk_socket), 8),
        (timer(o.timer_function), 8),
        (timer(o.timer_expires), 8),
        (timer(o.timer_pprev), 8),
        (Some(o.icsk_probes_out), 1),
        (Some(o.icsk_user_timeout), 4),
        (Some(o.tp_keepalive_time), 4),
        (Some(o.tp_keepalive_intvl), 4),
        (Some(o.tp_keepalive_probes), 1),
        (Some(o.tp_segs_out), 4),
        (Some(o.sk_flags), 8),
        (Some(o.sk_protocol), 2),
        (Some(o.sk_cgroup), 8),
        (Some(o.tp_lsndtime), 4),
        (Some(o.icsk_lrcvtime), 4),
        (Some(o.tp_rcv_tstamp), 4),
    ];
    fields
        .iter()
        .filter_map(|&(off, size)| off.filter(|&v| v != ABSENT).map(|v| v.saturating_add(size)))
        .max()
        .unwrap_or(0)
}

/// Reads the offsets of every field the programs touch.
pub fn resolve(btf: &Btf) -> Result<Offsets> {
    let sk = |field: &str| need(btf, "sock", &format!("__sk_common.{field}"));
    // Kernels built without IPv6 have no v6 addresses; the programs then skip AF_INET6 sockets.
    let sk_v6 = |field: &str| {
        btf.member_offset("sock", &format!("__sk_common.{field}"))
            .unwrap_or(ABSENT)
    };
    // icsk_* and tp_* offsets are used from the `struct sock *` the hooks receive, which is
    // only right while each socket layer embeds the previous one at its very start.
    expect_offset(btf, "inet_connection_sock", "icsk_inet.sk", 0)?;
    expect_offset(btf, "tcp_sock", "inet_conn", 0)?;

    let offsets = Offsets {
        skc_family: sk("skc_family")?,
        skc_state: sk("skc_state")?,
        inet_sport: need(btf, "inet_sock", "inet_sport")?,
        skc_dport: sk("skc_dport")?,
        skc_rcv_saddr: sk("skc_rcv_saddr")?,
        skc_daddr: sk("skc_daddr")?,
        skc_v6_rcv_saddr: sk_v6("skc_v6_rcv_saddr"),
        skc_v6_daddr: sk_v6("skc_v6_daddr"),
        skc_net: sk("skc_net")?,
        sk_err: need(btf, "sock", "sk_err")?,
        sk_err_soft: need(btf, "sock", "sk_err_soft")?,
        sk_socket: need(btf, "sock", "sk_socket")?,
        // The 2025 timer series moved the keepalive timer out of `sk_timer`; backports (Debian
        // 6.1.19x) have the new member too, so its presence, not the version, decides.
        keepalive_timer: match btf.member_offset("inet_connection_sock", "icsk_keepalive_timer") {
            Some(off) => off,
            None => need(btf, "sock", "sk_timer")?,
        },
        icsk_probes_out: need(btf, "inet_connection_sock", "icsk_probes_out")?,
        icsk_user_timeout: need(btf, "inet_connection_sock", "icsk_user_timeout")?,
        tp_keepalive_time: need(btf, "tcp_sock", "keepalive_time")?,
        tp_keepalive_intvl: need(btf, "tcp_sock", "keepalive_intvl")?,
        tp_keepalive_probes: need(btf, "tcp_sock", "keepalive_probes")?,
        tp_segs_out: need(btf, "tcp_sock", "segs_out")?,
        net_inum: need(btf, "net", "ns.inum")?,
        net_keepalive_time: need(btf, "net", "ipv4.sysctl_tcp_keepalive_time")?,
        net_keepalive_intvl: need(btf, "net", "ipv4.sysctl_tcp_keepalive_intvl")?,
        net_keepalive_probes: need(btf, "net", "ipv4.sysctl_tcp_keepalive_probes")?,
        socket_to_inode: need(btf, "socket_alloc", "vfs_inode")?
            .checked_sub(need(btf, "socket_alloc", "socket")?)
            .ok_or_else(|| Error::MissingType("socket_alloc.vfs_inode after .socket".into()))?,
        inode_ino: need(btf, "inode", "i_ino")?,
        timer_function: need(btf, "timer_list", "function")?,
        // The inventory's fields: see inventory_offsets.rs.
        ..Offsets::default()
    };

    for &(outer, path, size) in FIXED_WIDTHS {
        expect_size(btf, outer, path, size)?;
    }
    if offsets.skc_v6_daddr != ABSENT {
        expect_size(btf, "sock", "__sk_common.skc_v6_daddr", 16)?;
        expect_size(btf, "sock", "__sk_common.skc_v6_rcv_saddr", 16)?;
    }
    Ok(offsets)
}

/// Value of `LINUX_MIB_TCPKEEPALIVE`, which `tcp_write_wakeup` receives for keepalive probes.
pub fn mib_keepalive(btf: &Btf) -> Result<u32> {
    btf.enum_value("LINUX_MIB_TCPKEEPALIVE")
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| Error::MissingType("enum value LINUX_MIB_TCPKEEPALIVE".into()))
}

/// Whether the kernel has `tcp_done_with_error`, through which newer kernels route both
/// keepalive timeouts (`tcp_write_err`) and resets.
pub fn has_done_with_error(btf: &Btf) -> bool {
    btf.has_func("tcp_done_with_error")
}

fn need(btf: &Btf, outer: &str, path: &str) -> Result<u32> {
    btf.member_offset(outer, path)
        .ok_or_else(|| Error::MissingType(format!("{outer}.{path}")))
}

fn expect_offset(btf: &Btf, outer: &str, path: &str, want: u32) -> Result<()> {
    match need(btf, outer, path)? {
        found if found == want => Ok(()),
        found => Err(Error::MissingType(format!(
            "{outer}.{path} at offset {want} (this kernel has it at {found})"
        ))),
    }
}

fn expect_size(btf: &Btf, outer: &str, path: &str, want: u32) -> Result<()> {
    match btf.member_size(outer, path) {
        Some(found) if found == want => Ok(()),
        found => Err(Error::MissingType(format!(
            "{outer}.{path} of {want} bytes (this kernel's is {})",
            found.map_or("of unknown size".to_string(), |n| format!("{n} bytes"))
        ))),
    }
}

#[cfg(test)]
mod tests;
