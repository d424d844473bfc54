//! One copy of a socket per event, and the description built from it.
//!
//! An event describes its socket with ~25 fields of `struct sock`, `inet_connection_sock` and
//! `tcp_sock`. Read one by one that was ~30 `bpf_probe_read_kernel` calls at ≈ 77 ns each on
//! the 6.18 host: 25–33× an empty program on the same hook (BENCHMARKS.md section 1). All those
//! fields lie in the first `Settings::sock_span` bytes of the socket (≈ 2.2 KiB on 6.18, the
//! daemon computes it from BTF), so one call copies that range into a per-CPU buffer and the
//! fields are plain loads from it. What lies elsewhere — the namespace's sysctls and inode
//! number, the cgroup id — is a chain of reads. The namespace's sysctls change rarely, so the
//! last ones seen on each CPU are kept for a second (`NET_SEEN`), checked against the inode
//! number read every time; the cgroup id (two reads) and the socket's inode number (one) are
//! read every time.
//!
//! A program can be interrupted between the copy and its use by another that copies another
//! socket (a process-context state change, then a timer softirq on the way out of an
//! interrupt), so each nesting level has its own buffer (`DEPTH`). A level beyond
//! `LEVELS`, a kernel whose fields lie beyond `SOCK_MAX`, or a failed copy fall back to the
//! one-field reads.
use aya_ebpf::{helpers::generated::bpf_probe_read_kernel, macros::map, maps::PerCpuArray};
use keepalive_common::{ABSENT, FLAG_KEEPALIVE_ON, FLAG_TIMER_PENDING, RawEvent};

use crate::kernel::{self, AF_INET, AF_INET6, IPPROTO_TCP, read};

/// Largest copy: `tcp_sock` is 2 304 bytes on 6.18 (x86_64, arm64 alike); debug kernels
/// (lockdep) can make it larger, and their fields past this are read one by one.
pub const SOCK_MAX: usize = 3072;
/// Nesting levels with a buffer: a process-context hook, a softirq on its way out, an NMI-free
/// third for safety.
const LEVELS: u32 = 3;

#[repr(C)]
pub struct SockCopy {
    bytes: [u64; SOCK_MAX / 8],
}

#[map]
static SOCK_COPY: PerCpuArray<SockCopy> = PerCpuArray::with_max_entries(LEVELS, 0);

/// Copies in use on this CPU. Not atomic: a program that interrupts another returns the count
/// to what it found before the interrupted one resumes.
#[map]
static DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// A socket and, if the copy succeeded, its first `sock_span` bytes.
pub struct Sock {
    pub addr: u64,
    copy: *const u8,
}

/// Copies the socket at `addr`; the buffer stays this program's until the `Sock` is dropped.
#[inline(always)]
pub fn copy(addr: u64) -> Sock {
    let mut sock = Sock {
        addr,
        copy: core::ptr::null(),
    };
    let Some(depth) = DEPTH.get_ptr_mut(0) else {
        return sock;
    };
    let level = unsafe { *depth };
    unsafe { *depth = level + 1 };
    if addr == 0 || level >= LEVELS {
        return sock;
    }
    let Some(buf) = SOCK_COPY.get_ptr_mut(level) else {
        return sock;
    };
    let mut len = kernel::settings().sock_span;
    if len as usize > SOCK_MAX {
        len = SOCK_MAX as u32;
    }
    let r = unsafe { bpf_probe_read_kernel(buf.cast(), len, addr as *const _) };
    if r == 0 {
        sock.copy = buf as *const u8;
    }
    sock
}

impl Drop for Sock {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(depth) = DEPTH.get_ptr_mut(0) {
            unsafe { *depth = (*depth).wrapping_sub(1) };
        }
    }
}

impl Sock {
    /// The copy, null when the fields are read one by one.
    #[inline(always)]
    pub fn copy(&self) -> *const u8 {
        self.copy
    }

    /// The field at `off`: a load from the copy, or one read of the socket where the copy does
    /// not reach.
    #[inline(always)]
    pub fn get<T: Default + Copy>(&self, off: u32) -> T {
        get_at::<T>(self.addr, self.copy, off)
    }
}

/// [`Sock::get`] for code that receives the two halves of a `Sock` as arguments (BPF functions
/// take scalars and pointers, five at most).
#[inline(always)]
pub fn get_at<T: Default + Copy>(addr: u64, copy: *const u8, off: u32) -> T {
    let size = core::mem::size_of::<T>() as u32;
    if off == ABSENT {
        return T::default();
    }
    // The first test bounds the offset for the verifier, the second is the real one.
    if !copy.is_null()
        && off <= SOCK_MAX as u32 - size
        && off + size <= kernel::settings().sock_span
    {
        // Kernel struct fields are naturally aligned, and the buffer is 8-aligned.
        return unsafe { core::ptr::read_volatile(copy.add(off as usize).cast::<T>()) };
    }
    read::<T>(addr, off)
}

/// Last namespace seen on this CPU, with what `describe` needs of it.
#[repr(C)]
pub struct NetSeen {
    net: u64,
    at_ns: u64,
    inum: u32,
    idle: u32,
    intvl: u32,
    cnt: u32,
}

#[map]
static NET_SEEN: PerCpuArray<NetSeen> = PerCpuArray::with_max_entries(1, 0);

/// A cached sysctl is used for at most this long: a change shows in events within a second.
/// The identity is never taken from the cache: a `struct net` freed and reused for a new
/// namespace within that second would otherwise keep the old namespace's inode number, and
/// the new namespace's events would be filed under the dead one (seen on the host: a test's
/// fresh namespace whose probes "reached no hook").
const SEEN_FOR_NS: u64 = 1_000_000_000;

/// (inum, keepalive_time, keepalive_intvl, keepalive_probes) of the namespace at `net`.
#[inline(always)]
pub fn net_info(net: u64, now_ns: u64) -> (u32, u32, u32, u8) {
    let o = kernel::offsets();
    if net == 0 {
        return (0, 0, 0, 0);
    }
    if let Some(seen) = NET_SEEN.get_ptr_mut(0) {
        let seen = unsafe { &mut *seen };
        // A program interrupting this one may rewrite the slot between the reads: the stamp,
        // read before and after, tells.
        // The inode number is read every time and must match the cached one: the pointer
        // alone does not name a namespace once it can be freed and reused.
        let inum = read::<u32>(net, o.net_inum);
        let (at, first) = (unsafe { core::ptr::read_volatile(&seen.at_ns) }, seen.net);
        let got = (seen.inum, seen.idle, seen.intvl, seen.cnt as u8);
        let same = unsafe { core::ptr::read_volatile(&seen.at_ns) } == at;
        if same && first == net && got.0 == inum && now_ns.wrapping_sub(at) < SEEN_FOR_NS {
            return got;
        }
        let got = (
            inum,
            read::<u32>(net, o.net_keepalive_time),
            read::<u32>(net, o.net_keepalive_intvl),
            // An int before 6.0, a u8 after: the low byte is the value either way.
            read::<u8>(net, o.net_keepalive_probes),
        );
        seen.at_ns = now_ns;
        seen.net = net;
        seen.inum = got.0;
        seen.idle = got.1;
        seen.intvl = got.2;
        seen.cnt = got.3 as u32;
        return got;
    }
    (
        read::<u32>(net, o.net_inum),
        read::<u32>(net, o.net_keepalive_time),
        read::<u32>(net, o.net_keepalive_intvl),
        read::<u8>(net, o.net_keepalive_probes),
    )
}

/// The cgroup v2 id of the cgroup at `cgroup` (its kernfs node's id). Not cached: the two
/// reads are the check a cache would need, since a freed cgroup's memory is reused.
#[inline(always)]
fn cgroup_id(cgroup: u64) -> u64 {
    let o = kernel::offsets();
    if cgroup == 0 {
        return 0;
    }
    read::<u64>(read::<u64>(cgroup, o.cgroup_kn), o.kernfs_id)
}

/// Whether the socket is TCP (SO_KEEPALIVE can be set on any socket type).
#[inline(always)]
pub fn is_tcp(addr: u64, copy: *const u8) -> bool {
    let o = kernel::offsets();
    let family = get_at::<u16>(addr, copy, o.skc_family);
    (family == AF_INET || family == AF_INET6)
        && get_at::<u16>(addr, copy, o.sk_protocol) == IPPROTO_TCP
}

/// When the socket's keepalive timer fires next, if it is pending with the keepalive callback.
#[inline(always)]
pub fn keepalive_expires(addr: u64, copy: *const u8) -> Option<u64> {
    let o = kernel::offsets();
    let timer = o.keepalive_timer;
    let pending = get_at::<u64>(addr, copy, timer.wrapping_add(o.timer_pprev)) != 0;
    let function = get_at::<u64>(addr, copy, timer.wrapping_add(o.timer_function));
    if pending && function == kernel::settings().keepalive_timer_fn {
        Some(get_at::<u64>(
            addr,
            copy,
            timer.wrapping_add(o.timer_expires),
        ))
    } else {
        None
    }
}

/// Fills the connection identity and keepalive configuration of the socket into `ev`, whose
/// `ts_ns` is already set.
#[inline(always)]
pub fn describe(addr: u64, copy: *const u8, ev: &mut RawEvent) {
    let o = kernel::offsets();
    let get32 = |off: u32| get_at::<u32>(addr, copy, off);
    ev.sk = addr;
    ev.family = get_at::<u16>(addr, copy, o.skc_family);
    ev.state = get_at::<u8>(addr, copy, o.skc_state);
    ev.sport = u16::from_be(get_at::<u16>(addr, copy, o.inet_sport));
    ev.dport = u16::from_be(get_at::<u16>(addr, copy, o.skc_dport));
    if ev.family == AF_INET6 {
        ev.saddr = addr16(addr, copy, o.skc_v6_rcv_saddr);
        ev.daddr = addr16(addr, copy, o.skc_v6_daddr);
    } else {
        ev.saddr[..4].copy_from_slice(&get32(o.skc_rcv_saddr).to_ne_bytes());
        ev.daddr[..4].copy_from_slice(&get32(o.skc_daddr).to_ne_bytes());
    }
    ev.idle_jiffies = get32(o.tp_keepalive_time);
    ev.intvl_jiffies = get32(o.tp_keepalive_intvl);
    ev.cnt = get_at::<u8>(addr, copy, o.tp_keepalive_probes);
    ev.user_timeout_ms = get32(o.icsk_user_timeout);

    let net = get_at::<u64>(addr, copy, o.skc_net);
    (ev.netns, ev.ns_idle_jiffies, ev.ns_intvl_jiffies, ev.ns_cnt) = net_info(net, ev.ts_ns);

    let socket = get_at::<u64>(addr, copy, o.sk_socket);
    if socket != 0 {
        ev.ino = read::<u64>(socket + o.socket_to_inode as u64, o.inode_ino);
    }

    ev.probes_out = get_at::<u8>(addr, copy, o.icsk_probes_out);
    let sk_flags = get_at::<u64>(addr, copy, o.sk_flags);
    if o.sock_keepopen_bit < 64 && sk_flags & (1u64 << o.sock_keepopen_bit) != 0 {
        ev.flags |= FLAG_KEEPALIVE_ON;
    }
    if let Some(expires) = keepalive_expires(addr, copy) {
        ev.flags |= FLAG_TIMER_PENDING;
        ev.timer_expires = expires;
    }
    ev.jiffies = kernel::jiffies();
    // The kernel keeps these as the low 32 bits of jiffies; the age is their wrapping
    // difference with now, which stays right for 198 days at HZ=250.
    let now = ev.jiffies as u32;
    let since = |off: u32| match off {
        ABSENT => u32::MAX,
        off => now.wrapping_sub(get32(off)),
    };
    ev.since_send = since(o.tp_lsndtime);
    ev.since_recv = since(o.icsk_lrcvtime);
    ev.since_ack = since(o.tp_rcv_tstamp);
    ev.cgroup = cgroup_id(get_at::<u64>(addr, copy, o.sk_cgroup));
}

/// A 16-byte address: two 8-byte halves.
#[inline(always)]
fn addr16(addr: u64, copy: *const u8, off: u32) -> [u8; 16] {
    if off == ABSENT {
        return [0; 16];
    }
    let lo = get_at::<u64>(addr, copy, off);
    let hi = get_at::<u64>(addr, copy, off.wrapping_add(8));
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lo.to_ne_bytes());
    out[8..].copy_from_slice(&hi.to_ne_bytes());
    out
}
