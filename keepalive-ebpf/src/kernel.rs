//! Reading kernel memory at offsets the daemon found in BTF.
//!
//! There is no CO-RE in Rust eBPF: every field is read with `bpf_probe_read_kernel` at
//! `base + OFFSETS.<field>`. A failed read yields zero, which the callers treat as "unknown";
//! a socket that vanished under us produces a harmless, zero-filled event at worst.
use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::map, maps::Array};
use keepalive_common::{
    ABSENT, FLAG_COUNT, FLAG_KEEPALIVE_ON, FLAG_TIMER_PENDING, Offsets, RawEvent, Settings,
};

/// Filled by the daemon with `EbpfLoader::set_global` before load.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = unsafe { core::mem::zeroed() };

/// Filled by the daemon with `EbpfLoader::set_global` before load.
#[unsafe(no_mangle)]
static SETTINGS: Settings = unsafe { core::mem::zeroed() };

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;
pub const EPIPE: i32 = 32;
pub const ECONNRESET: i32 = 104;
pub const ETIMEDOUT: i32 = 110;

#[inline(always)]
pub fn offsets() -> Offsets {
    // Volatile: the loader rewrites .rodata after compilation, so the compiler must not fold
    // the zero initialiser into the code.
    unsafe { core::ptr::read_volatile(&raw const OFFSETS) }
}

#[inline(always)]
pub fn settings() -> Settings {
    unsafe { core::ptr::read_volatile(&raw const SETTINGS) }
}

/// Run-time switches written by the daemon after attaching; see `FLAG_*`.
#[map]
static FLAGS: Array<u8> = Array::with_max_entries(FLAG_COUNT, 0);

#[inline(always)]
pub fn flag(index: u32) -> bool {
    FLAGS.get(index).copied().unwrap_or(0) != 0
}

#[inline(always)]
pub fn read<T: Default>(base: u64, off: u32) -> T {
    if base == 0 || off == ABSENT {
        return T::default();
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.unwrap_or_default()
}

#[inline(always)]
pub fn probes_out(sk: u64) -> u8 {
    read::<u8>(sk, offsets().icsk_probes_out)
}

#[inline(always)]
pub fn segs_out(sk: u64) -> u32 {
    read::<u32>(sk, offsets().tp_segs_out)
}

#[inline(always)]
pub fn jiffies() -> u64 {
    unsafe { aya_ebpf::helpers::generated::bpf_jiffies64() }
}

/// When the socket's keepalive timer fires next, if it is pending with the keepalive callback.
#[inline(always)]
pub fn keepalive_expires(sk: u64) -> Option<u64> {
    let o = offsets();
    let timer = sk + o.keepalive_timer as u64;
    let pending = read::<u64>(timer, o.timer_pprev) != 0;
    if pending && read::<u64>(timer, o.timer_function) == settings().keepalive_timer_fn {
        Some(read::<u64>(timer, o.timer_expires))
    } else {
        None
    }
}

/// The keepalive interval in effect for `sk`, in jiffies (`keepalive_intvl_when`).
#[inline(always)]
pub fn intvl_jiffies(sk: u64) -> u32 {
    let o = offsets();
    match read::<u32>(sk, o.tp_keepalive_intvl) {
        0 => read::<u32>(read::<u64>(sk, o.skc_net), o.net_keepalive_intvl),
        v => v,
    }
}

#[inline(always)]
pub fn state(sk: u64) -> u8 {
    read::<u8>(sk, offsets().skc_state)
}

/// Socket address derived from the keepalive `timer_list` address.
#[inline(always)]
pub fn sk_of_timer(timer: u64) -> u64 {
    timer.wrapping_sub(offsets().keepalive_timer as u64)
}

/// Fills the connection identity and keepalive configuration of `sk` into `ev`.
#[inline(always)]
pub fn describe(sk: u64, ev: &mut RawEvent) {
    let o = offsets();
    ev.sk = sk;
    ev.family = read::<u16>(sk, o.skc_family);
    ev.state = read::<u8>(sk, o.skc_state);
    ev.sport = u16::from_be(read::<u16>(sk, o.inet_sport));
    ev.dport = u16::from_be(read::<u16>(sk, o.skc_dport));
    if ev.family == AF_INET6 {
        ev.saddr = read::<[u8; 16]>(sk, o.skc_v6_rcv_saddr);
        ev.daddr = read::<[u8; 16]>(sk, o.skc_v6_daddr);
    } else {
        let s = read::<[u8; 4]>(sk, o.skc_rcv_saddr);
        let d = read::<[u8; 4]>(sk, o.skc_daddr);
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    }
    ev.idle_jiffies = read::<u32>(sk, o.tp_keepalive_time);
    ev.intvl_jiffies = read::<u32>(sk, o.tp_keepalive_intvl);
    ev.cnt = read::<u8>(sk, o.tp_keepalive_probes);
    ev.user_timeout_ms = read::<u32>(sk, o.icsk_user_timeout);

    let net = read::<u64>(sk, o.skc_net);
    ev.netns = read::<u32>(net, o.net_inum);
    ev.ns_idle_jiffies = read::<u32>(net, o.net_keepalive_time);
    ev.ns_intvl_jiffies = read::<u32>(net, o.net_keepalive_intvl);
    // An int before 6.0, a u8 after: the low byte is the value either way on little endian.
    ev.ns_cnt = read::<u8>(net, o.net_keepalive_probes);

    let socket = read::<u64>(sk, o.sk_socket);
    if socket != 0 {
        ev.ino = read::<u64>(socket + o.socket_to_inode as u64, o.inode_ino);
    }

    ev.probes_out = read::<u8>(sk, o.icsk_probes_out);
    let sk_flags = read::<u64>(sk, o.sk_flags);
    if o.sock_keepopen_bit < 64 && sk_flags & (1u64 << o.sock_keepopen_bit) != 0 {
        ev.flags |= FLAG_KEEPALIVE_ON;
    }
    if let Some(expires) = keepalive_expires(sk) {
        ev.flags |= FLAG_TIMER_PENDING;
        ev.timer_expires = expires;
    }
    ev.jiffies = jiffies();
    // The kernel keeps these as the low 32 bits of jiffies; the age is their wrapping
    // difference with now, which stays right for 198 days at HZ=250.
    let now = ev.jiffies as u32;
    ev.since_send = since(sk, o.tp_lsndtime, now);
    ev.since_recv = since(sk, o.icsk_lrcvtime, now);
    ev.since_ack = since(sk, o.tp_rcv_tstamp, now);
    let cgroup = read::<u64>(sk, o.sk_cgroup);
    let kn = read::<u64>(cgroup, o.cgroup_kn);
    ev.cgroup = read::<u64>(kn, o.kernfs_id);
}

#[inline(always)]
fn since(sk: u64, off: u32, now: u32) -> u32 {
    if off == ABSENT {
        return u32::MAX;
    }
    now.wrapping_sub(read::<u32>(sk, off))
}

/// The error `tcp_write_err` gave the socket: `sk_err`, which it sets to `sk_err_soft ?:
/// ETIMEDOUT` just before closing. The woken application may already have consumed `sk_err`
/// (SO_ERROR, recv) on another CPU by the time the CLOSE transition is seen; the same rule
/// then recovers what it was.
#[inline(always)]
pub fn write_err(sk: u64) -> i32 {
    let o = offsets();
    match read::<i32>(sk, o.sk_err) {
        0 => match read::<i32>(sk, o.sk_err_soft) {
            0 => ETIMEDOUT,
            soft => soft,
        },
        err => err,
    }
}

/// Whether `sk` is a TCP socket (SO_KEEPALIVE can be set on any socket type).
#[inline(always)]
pub fn is_tcp(sk: u64) -> bool {
    let o = offsets();
    let family = read::<u16>(sk, o.skc_family);
    (family == AF_INET || family == AF_INET6) && read::<u16>(sk, o.sk_protocol) == IPPROTO_TCP
}
