//! Types shared by the kernel programs (`keepalive-ebpf`) and the daemon.
//!
//! Everything here is `#[repr(C)]` and crosses the user/kernel boundary byte for byte: the
//! daemon fills [`Offsets`] and [`Settings`] from the running kernel's BTF and hands them to the
//! programs as globals; the programs write [`RawEvent`]s into the `EVENTS` ring buffer.
#![no_std]

/// A keepalive probe left the socket (`icsk_probes_out` went up inside the keepalive timer, or
/// `tcp_write_wakeup` returned <= 0 for `LINUX_MIB_TCPKEEPALIVE`). `probes` is its number in the
/// current run, starting at 1.
pub const EV_PROBE: u8 = 1;
/// The peer answered: `icsk_probes_out` was back at 0 when the keepalive timer next fired.
/// `probes` is how many probes the run had sent.
pub const EV_ANSWERED: u8 = 2;
/// The socket moved to CLOSE inside the keepalive timer: keepalive gave up. `errno` is
/// `sk_err` (ETIMEDOUT, or the soft error the kernel had recorded).
pub const EV_TIMEOUT: u8 = 3;
/// A RST arrived while probes were outstanding. `errno` is what `tcp_reset` reports for the
/// state (ECONNRESET, EPIPE in CLOSE_WAIT).
pub const EV_RESET: u8 = 4;
/// A socket with probes outstanding closed for another reason (the application closed it,
/// retransmission took over after data was written). Not a keepalive death; clears state.
pub const EV_CLOSED: u8 = 5;
/// A TCP socket entered ESTABLISHED or LISTEN: it joins the inventory with its settings.
pub const EV_SOCK_OPEN: u8 = 6;
/// A TCP socket entered CLOSE: it leaves the inventory.
pub const EV_SOCK_CLOSE: u8 = 7;
/// A setsockopt(2) of SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT or
/// TCP_USER_TIMEOUT succeeded on the socket; the event carries the settings after the call.
pub const EV_SETTINGS: u8 = 8;
/// A record of the startup inventory (the `iter/tcp` program), not a ring-buffer event.
pub const EV_INVENTORY: u8 = 9;
/// The keepalive timer fired without sending a probe and re-armed itself: the inventory learns
/// when it fires next. One per keepalive socket per idle period — the kernel's own pace.
pub const EV_REARMED: u8 = 10;
/// The keepalive timer counted a probe (`TcpExtTCPKeepAlive` rose) but could not send it:
/// `tcp_write_wakeup` returned > 0 (the local stack dropped it: a full or zero-length qdisc, a
/// veth peer whose backlog is full), so `icsk_probes_out` did not move and the kernel retries
/// in `TCP_RESOURCE_PROBE_INTERVAL` (0.5 s). `probes` is `icsk_probes_out` (unchanged);
/// `errno` is that positive return value where the hook sees it (fentry, kprobe), 0 on the
/// tracepoint rung, which only sees the kernel's reaction (see `timer_exit` in state.rs).
pub const EV_PROBE_FAILED: u8 = 11;

/// `RawEvent::flags`: SO_KEEPALIVE is on.
pub const FLAG_KEEPALIVE_ON: u8 = 1;
/// `RawEvent::flags`: the keepalive timer is pending; `timer_expires` is valid.
pub const FLAG_TIMER_PENDING: u8 = 2;
/// `RawEvent::flags`: the socket entered CLOSE right after this event (a run-end record taken
/// at the CLOSE transition): the record stands for its `EV_SOCK_CLOSE` too, which is not
/// written apart. A partition's deaths then cost one record each instead of two.
pub const FLAG_CLOSES: u8 = 4;

/// Hook family that produced an event, for debugging and the `hook` field of raw events.
pub const HOOK_TRACEPOINT: u8 = 0;
pub const HOOK_FENTRY: u8 = 1;
pub const HOOK_KPROBE: u8 = 2;

/// Marks an offset the running kernel does not have.
pub const ABSENT: u32 = u32::MAX;

/// Byte offsets into kernel structures, read from `/sys/kernel/btf/vmlinux` at startup.
/// Rust eBPF has no CO-RE, so the programs never assume a layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `struct sock` → `__sk_common.skc_family` (u16).
    pub skc_family: u32,
    /// `__sk_common.skc_state` (u8).
    pub skc_state: u32,
    /// `inet_sock.inet_sport` (be16, local port). Not `skc_num`: that is zeroed when the port
    /// is released, before the CLOSE transition a death is read at.
    pub inet_sport: u32,
    /// `__sk_common.skc_dport` (be16).
    pub skc_dport: u32,
    /// `__sk_common.skc_rcv_saddr` (be32).
    pub skc_rcv_saddr: u32,
    /// `__sk_common.skc_daddr` (be32).
    pub skc_daddr: u32,
    /// `__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub skc_v6_rcv_saddr: u32,
    /// `__sk_common.skc_v6_daddr` (16 bytes).
    pub skc_v6_daddr: u32,
    /// `__sk_common.skc_net` (pointer to `struct net`).
    pub skc_net: u32,
    /// `sock.sk_err` (int).
    pub sk_err: u32,
    /// `sock.sk_err_soft` (int): what `tcp_write_err` reports instead of ETIMEDOUT when set.
    pub sk_err_soft: u32,
    /// `sock.sk_socket` (pointer to `struct socket`).
    pub sk_socket: u32,
    /// Offset of the keepalive `timer_list` inside the socket: `icsk_keepalive_timer` on kernels
    /// with the 2025 series (and its backports), `sock.sk_timer` before.
    pub keepalive_timer: u32,
    /// `inet_connection_sock.icsk_probes_out` (u8).
    pub icsk_probes_out: u32,
    /// `inet_connection_sock.icsk_user_timeout` (u32, ms).
    pub icsk_user_timeout: u32,
    /// `tcp_sock.keepalive_time` (u32 jiffies).
    pub tp_keepalive_time: u32,
    /// `tcp_sock.keepalive_intvl` (u32 jiffies).
    pub tp_keepalive_intvl: u32,
    /// `tcp_sock.keepalive_probes` (u8).
    pub tp_keepalive_probes: u32,
    /// `tcp_sock.segs_out` (u32): segments the socket handed to IP, counted before the send,
    /// whether or not the device then dropped them.
    pub tp_segs_out: u32,
    /// `net.ns.inum` (u32): the namespace's inode, as in `/proc/<pid>/ns/net`.
    pub net_inum: u32,
    /// `net.ipv4.sysctl_tcp_keepalive_time` (int jiffies).
    pub net_keepalive_time: u32,
    /// `net.ipv4.sysctl_tcp_keepalive_intvl` (int jiffies).
    pub net_keepalive_intvl: u32,
    /// `net.ipv4.sysctl_tcp_keepalive_probes` (u8 since 6.0, int before; the low byte is read).
    pub net_keepalive_probes: u32,
    /// `socket_alloc.vfs_inode` minus `socket_alloc.socket`: from a `struct socket *` to its inode.
    pub socket_to_inode: u32,
    /// `inode.i_ino` (unsigned long).
    pub inode_ino: u32,
    /// `timer_list.function` (pointer).
    pub timer_function: u32,
    /// `timer_list.expires` (unsigned long jiffies).
    pub timer_expires: u32,
    /// `timer_list.entry.pprev`: non-NULL while the timer is pending.
    pub timer_pprev: u32,
    /// `sock.sk_flags` (unsigned long).
    pub sk_flags: u32,
    /// Bit number of `SOCK_KEEPOPEN` in `sk_flags`.
    pub sock_keepopen_bit: u32,
    /// `sock.sk_protocol` (u16, 5.6+).
    pub sk_protocol: u32,
    /// `sock.sk_cgrp_data.cgroup` (pointer, 5.15+; ABSENT before).
    pub sk_cgroup: u32,
    /// `cgroup.kn` (pointer to kernfs_node).
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (u64).
    pub kernfs_id: u32,
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.fd` (pointer to the array of `struct file *`).
    pub fdtable_fd: u32,
    /// `file.private_data` (the `struct socket *` of a socket file).
    pub file_private_data: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `tcp_sock.lsndtime` (u32 jiffies): last data segment sent (`ss` lastsnd). ABSENT if
    /// the kernel lacks it.
    pub tp_lsndtime: u32,
    /// `inet_connection_sock.icsk_ack.lrcvtime` (u32 jiffies): last data segment received
    /// (`ss` lastrcv).
    pub icsk_lrcvtime: u32,
    /// `tcp_sock.rcv_tstamp` (u32 jiffies): last ACK received (`ss` lastack); with the two
    /// above, when the path last carried a segment of the flow either way.
    pub tp_rcv_tstamp: u32,
    /// Offsets of `fd`, `level`, `optname` in the `syscalls:sys_enter_setsockopt` record and of
    /// `ret` in `sys_exit_setsockopt` (from the tracepoints' `format` files).
    pub tp_setsockopt_fd: u32,
    pub tp_setsockopt_level: u32,
    pub tp_setsockopt_optname: u32,
    pub tp_setsockopt_ret: u32,
}

/// Load-time settings for the programs, passed as a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Address of `tcp_keepalive_timer`, found by the daemon's startup calibration (the
    /// `timer_start` program); the tracepoint-mode timer hook ignores every other callback.
    pub keepalive_timer_fn: u64,
    /// Value of `LINUX_MIB_TCPKEEPALIVE` in this kernel's BTF.
    pub mib_keepalive: u32,
    /// `TCP_RESOURCE_PROBE_INTERVAL` in jiffies (HZ/2): where the keepalive timer re-arms after a
    /// probe it could not send.
    pub resource_probe_jiffies: u32,
    /// Bytes of a socket the programs copy in one read per event: up to the end of the last
    /// `Offsets` field inside `struct tcp_sock` (`sock_span` in the daemon's offsets.rs). 0
    /// reads every field on its own.
    pub sock_span: u32,
    pub _pad: u32,
}

/// Indexes of the `FLAGS` array map. Which hooks attached is only known after loading, so these
/// are a map the daemon writes after attaching rather than load-time globals.
/// Set to 1 when a `tcp_write_wakeup` hook is attached: a probe then counts only if the hook saw
/// the keepalive mib and a return <= 0; 0 means probes are read from `icsk_probes_out`.
pub const FLAG_PROBE_VIA_WAKEUP: u32 = 0;
/// Set to 1 when a `tcp_done_with_error` hook reports deaths; 0 means the CLOSE transition
/// inside the keepalive timer (`sock:inet_sock_set_state`) does.
pub const FLAG_DEATH_VIA_DONE: u32 = 1;
pub const FLAG_COUNT: u32 = 2;

/// Slots of the per-hook nesting maps (`keepalive-ebpf/src/nesting.rs`): hooks that can fire
/// again on a CPU while their program is running there, each with a twin program.
pub const NEST_STATE: u32 = 0;
pub const NEST_RESET: u32 = 1;
pub const NEST_DONE: u32 = 2;
pub const NEST_SLOTS: u32 = 3;

/// Indexes of the `CALIB_FILTER` array map of the calibration program: the thread arming the
/// keepalive timer, and the local port of its socket.
pub const CALIB_TID: u32 = 0;
pub const CALIB_PORT: u32 = 1;

/// One record in the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Kernel address of the socket: the identity of a connection while it lives.
    pub sk: u64,
    /// Inode of the socket's file (0 when orphaned), to find the owning process.
    pub ino: u64,
    /// One of the `EV_*` constants.
    pub kind: u8,
    /// One of the `HOOK_*` constants.
    pub hook: u8,
    /// Socket state (`TCP_ESTABLISHED` = 1 …) when the event was taken.
    pub state: u8,
    /// Probe number / probes in the run, see the `EV_*` docs.
    pub probes: u8,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// Local port, host order.
    pub sport: u16,
    /// Remote port, host order.
    pub dport: u16,
    /// Per-socket `keepalive_probes` (0 = namespace default).
    pub cnt: u8,
    /// Namespace `tcp_keepalive_probes`.
    pub ns_cnt: u8,
    /// Network namespace inode.
    pub netns: u32,
    /// Positive errno for deaths; for `EV_PROBE_FAILED` the positive return value of
    /// `tcp_write_wakeup` (0 when the hook cannot see it); 0 otherwise.
    pub errno: i32,
    /// Per-socket `keepalive_time` in jiffies (0 = namespace default).
    pub idle_jiffies: u32,
    /// Per-socket `keepalive_intvl` in jiffies (0 = namespace default).
    pub intvl_jiffies: u32,
    /// Namespace `tcp_keepalive_time` in jiffies.
    pub ns_idle_jiffies: u32,
    /// Namespace `tcp_keepalive_intvl` in jiffies.
    pub ns_intvl_jiffies: u32,
    /// `TCP_USER_TIMEOUT` in ms (0 = unset).
    pub user_timeout_ms: u32,
    /// Local address: IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    /// Remote address, same layout.
    pub daddr: [u8; 16],
    /// `FLAG_KEEPALIVE_ON` | `FLAG_TIMER_PENDING` | `FLAG_CLOSES`.
    pub flags: u8,
    /// `icsk_probes_out` when the event was taken.
    pub probes_out: u8,
    /// Non-zero when the same timer run first found the previous run's probes answered: the
    /// record stands for that `EV_ANSWERED` event too (before its own), with `answered - 1`
    /// probes. One record instead of two for the commonest pair of a probe storm or a burst.
    pub answered: u8,
    pub _pad: [u8; 5],
    /// `expires` of the keepalive timer in jiffies (valid with `FLAG_TIMER_PENDING`).
    pub timer_expires: u64,
    /// `jiffies` when the event was taken, to turn `timer_expires` into a delay.
    pub jiffies: u64,
    /// cgroup v2 id (kernfs inode) of the socket's cgroup, 0 when unknown.
    pub cgroup: u64,
    /// The calling process (tgid) for events raised in process context (setsockopt, accept),
    /// 0 for events from timers and packets, where "current" is whoever was interrupted.
    pub pid: u32,
    /// That process's thread name, NUL-padded.
    pub comm: [u8; 16],
    /// Jiffies since the last data segment sent, received, and the last ACK received, at
    /// `jiffies` (`u32::MAX` when the kernel lacks the field).
    pub since_send: u32,
    pub since_recv: u32,
    pub since_ack: u32,
}

impl RawEvent {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` structs of integers with no implicit padding holes that matter
    // for reading; every bit pattern is valid.
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::RawEvent {}
}
