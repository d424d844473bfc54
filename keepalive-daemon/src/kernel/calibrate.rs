//! Finding the address of `tcp_keepalive_timer` without /proc/kallsyms.
//!
//! The tracepoint rung filters timer callbacks on that address, and the inventory uses it to
//! tell a pending keepalive timer from other uses of `sk_timer`. Reading kallsyms would need
//! CAP_SYSLOG and a unit without ProtectKernelTunables=, so instead the daemon asks the kernel:
//! with the `timer_start` program attached and filtered on this thread and one socket, it arms
//! the keepalive timer of a loopback connection of its own (`SO_KEEPALIVE` → `tcp_set_keepalive`
//! → `inet_csk_reset_keepalive_timer` → `mod_timer`) and reads back the callback the kernel
//! queued. Two rounds must agree, each seeing exactly one callback.
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
};

use aya::{
    Btf, EbpfLoader,
    maps::{Array, HashMap, MapData},
    programs::RawTracePoint,
};
use keepalive_common::{CALIB_PORT, CALIB_TID, Offsets};

use crate::error::{Error, Result};

pub(crate) const PROG: &str = "ka_calib_timer_start";
const ROUNDS: usize = 2;

/// Address of `tcp_keepalive_timer`, measured on this kernel.
pub fn keepalive_timer_address(btf: &Btf, offsets: &Offsets) -> Result<u64> {
    let fail = |why: String| Error::Calibration(why);
    // Only this program is loaded from the object; the other maps are created and dropped
    // again, so the event ring is made as small as the kernel allows.
    let mut ebpf = EbpfLoader::new()
        .btf(Some(btf))
        .override_global("OFFSETS", offsets, true)
        .map_max_entries("EVENTS", page_size())
        .map_max_entries("RUN_ENDS", page_size())
        .load(crate::kernel::objects::DAEMON)
        .map_err(|e| fail(format!("loading the object: {e}")))?;
    let prog: &mut RawTracePoint = ebpf
        .program_mut(PROG)
        .ok_or_else(|| fail(format!("program {PROG} missing")))?
        .try_into()
        .map_err(|e| fail(format!("{PROG}: {e}")))?;
    prog.load()
        .map_err(|e| fail(format!("loading {PROG}: {e}")))?;
    prog.attach("timer_start")
        .map_err(|e| fail(format!("attaching to timer:timer_start: {e}")))?;
    let filter: Array<MapData, u32> = Array::try_from(
        ebpf.take_map("CALIB_FILTER")
            .ok_or_else(|| fail("map CALIB_FILTER missing".into()))?,
    )
    .map_err(|e| fail(e.to_string()))?;
    let seen: HashMap<MapData, u64, u32> = HashMap::try_from(
        ebpf.take_map("CALIB_SEEN")
            .ok_or_else(|| fail("map CALIB_SEEN missing".into()))?,
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut probe = Probe { filter, seen };
    let mut found = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        found.push(probe.round().map_err(fail)?);
    }
    // Dropping `ebpf` detaches the program.
    agree(&found).map_err(fail)
}

struct Probe {
    filter: Array<MapData, u32>,
    seen: HashMap<MapData, u64, u32>,
}

impl Probe {
    /// One armed keepalive timer: the callback addresses the program saw for it.
    fn round(&mut self) -> std::result::Result<Vec<u64>, String> {
        let (client, _server, _listener) = loopback_pair()?;
        let port = client.local_addr().map_err(|e| e.to_string())?.port();
        let stale: Vec<u64> = self.seen.keys().filter_map(|k| k.ok()).collect();
        for key in stale {
            let _ = self.seen.remove(&key);
        }
        // SAFETY: no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        self.filter
            .set(CALIB_PORT, u32::from(port), 0)
            .map_err(|e| e.to_string())?;
        self.filter
            .set(CALIB_TID, tid, 0)
            .map_err(|e| e.to_string())?;
        let armed = set_keepalive(&client, true);
        let _ = self.filter.set(CALIB_TID, 0, 0);
        armed?;
        Ok(self.seen.keys().filter_map(|k| k.ok()).collect())
    }
}

/// The one address every round saw, or why there is none.
fn agree(rounds: &[Vec<u64>]) -> std::result::Result<u64, String> {
    let mut addr = None;
    for (i, seen) in rounds.iter().enumerate() {
        let one = match seen.as_slice() {
            [] => {
                return Err(format!(
                    "round {}: no timer armed by SO_KEEPALIVE was seen",
                    i + 1
                ));
            }
            [one] => *one,
            many => {
                return Err(format!(
                    "round {}: {} different timer callbacks seen ({many:x?})",
                    i + 1,
                    many.len()
                ));
            }
        };
        if *addr.get_or_insert(one) != one {
            return Err(format!(
                "rounds disagree: {:#x} then {one:#x}",
                addr.unwrap_or_default()
            ));
        }
    }
    addr.ok_or_else(|| "no rounds".into())
}

/// An established loopback connection (client, accepted server side, listener), over IPv4 or,
/// on hosts without 127.0.0.1, IPv6.
fn loopback_pair() -> std::result::Result<(TcpStream, TcpStream, TcpListener), String> {
    let mut why = Vec::new();
    for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
        let attempt = || -> std::io::Result<_> {
            let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
            let client = TcpStream::connect(listener.local_addr()?)?;
            let (server, _) = listener.accept()?;
            Ok((client, server, listener))
        };
        match attempt() {
            Ok(pair) => return Ok(pair),
            Err(e) => why.push(format!("{ip}: {e}")),
        }
    }
    Err(format!(
        "no loopback connection in this network namespace (is lo up?): {}",
        why.join("; ")
    ))
}

fn set_keepalive(s: &TcpStream, on: bool) -> std::result::Result<(), String> {
    let val: libc::c_int = on.into();
    // SAFETY: a valid socket and a c_int option value of the right length.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&raw const val).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "setsockopt(SO_KEEPALIVE): {}",
            std::io::Error::last_os_error()
        ))
    }
}

fn page_size() -> u32 {
    // SAFETY: no preconditions.
    u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_must_agree_on_one_address() {
        assert_eq!(
            agree(&[vec![0xffff_1000], vec![0xffff_1000]]),
            Ok(0xffff_1000)
        );
        assert!(
            agree(&[vec![0xffff_1000], vec![0xffff_2000]])
                .unwrap_err()
                .contains("disagree")
        );
        assert!(
            agree(&[vec![0xffff_1000, 0xffff_2000]])
                .unwrap_err()
                .contains("2 different")
        );
        assert!(agree(&[vec![]]).unwrap_err().contains("no timer"));
    }

    /// On the real kernel (root only): calibration finds what kallsyms says. Tests may read
    /// kallsyms; the daemon may not.
    #[test]
    fn matches_kallsyms() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let btf_path = std::path::Path::new("/sys/kernel/btf/vmlinux");
        let btf = crate::kernel::btf::KernelBtf::read(btf_path).expect("host BTF");
        let mut offsets = crate::kernel::offsets::resolve(&btf.index).expect("offsets");
        crate::kernel::inventory_offsets::fill(&btf.index, &mut offsets)
            .expect("inventory offsets");
        let measured = keepalive_timer_address(&btf.loader, &offsets).expect("calibration");
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("kallsyms");
        let listed = kallsyms
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                (it.nth(1)? == "tcp_keepalive_timer").then_some(addr)
            })
            .expect("tcp_keepalive_timer in kallsyms");
        assert_eq!(
            measured, listed,
            "calibrated {measured:#x}, kallsyms {listed:#x}"
        );
    }
}
