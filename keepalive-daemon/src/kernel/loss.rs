//! What the kernel side could not deliver, read from the kernel: records that found the ring
//! buffer full (the `LOST` map), run-ending records that found their own ring full
//! (`LOST_ENDS`), probe runs the `PROBING` map had no room for (`UNTRACKED`),
//! and hook runs the kernel skipped because the same program was
//! already running on that CPU (`recursion_misses` of each program, 5.12+). Hooks that an
//! interrupt can re-enter have twin programs (keepalive-ebpf/src/nesting.rs); a skip one of
//! them made up for (the `RECOVERED` map) is no loss.
use std::os::fd::{AsFd, AsRawFd};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::ProgramFd,
};
use keepalive_common::{NEST_DONE, NEST_RESET, NEST_STATE};
use log::warn;

/// Twin programs, and the nesting slot of the primary each stands in for.
const TWINS: &[(&str, &str, u32)] = &[
    ("ka_inet_sock_set_state", "ka_nest_set_state", NEST_STATE),
    ("ka_tcp_receive_reset", "ka_nest_rcv_reset", NEST_RESET),
    ("ka_fentry_done_with_error", "ka_nest_done_err", NEST_DONE),
];

/// (primary, twin) program names.
#[cfg(test)]
pub fn twins() -> impl Iterator<Item = (&'static str, &'static str)> {
    TWINS.iter().map(|t| (t.0, t.1))
}

enum Role {
    /// A skip is a loss unless its twin ran instead (`RECOVERED[slot]`).
    Primary(u32),
    /// Skipped only when the hook fired again while the twin itself ran, and then the primary
    /// was free to run: never a loss.
    Twin,
    Plain,
}

struct Watched {
    name: String,
    fd: ProgramFd,
    role: Role,
}

/// Records lost since the previous `refresh`: `ring` found the ring buffer full, `nested` are
/// hook runs the kernel skipped that no twin made up for, `tracking` are probe runs the
/// kernel's `PROBING` map had no room for (their answer or close is not reported).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    pub ring: u64,
    /// Deaths, RSTs and closes mid-run that found the run-end ring full.
    pub run_end: u64,
    pub nested: u64,
    pub tracking: u64,
}

pub struct KernelLoss {
    ring: PerCpuArray<MapData, u64>,
    ends: PerCpuArray<MapData, u64>,
    recovered: PerCpuArray<MapData, u64>,
    untracked: PerCpuArray<MapData, u64>,
    programs: Vec<Watched>,
    seen_ring: u64,
    seen_ends: u64,
    seen_untracked: u64,
    seen_nested: u64,
}

impl KernelLoss {
    /// Takes the two counter maps and a descriptor of every program attached so far.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, String> {
        let mut take = |name: &str| -> Result<PerCpuArray<MapData, u64>, String> {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| format!("map {name} missing"))?;
            PerCpuArray::try_from(map).map_err(|e| e.to_string())
        };
        let (ring, ends) = (take("LOST")?, take("LOST_ENDS")?);
        let (recovered, untracked) = (take("RECOVERED")?, take("UNTRACKED")?);
        let programs = ebpf
            .programs()
            .filter_map(|(name, p)| {
                let fd = p.fd().ok()?.try_clone().ok()?;
                let role = match TWINS.iter().find(|t| t.0 == name || t.1 == name) {
                    Some(&(primary, _, slot)) if primary == name => Role::Primary(slot),
                    Some(_) => Role::Twin,
                    None => Role::Plain,
                };
                Some(Watched {
                    name: name.to_string(),
                    fd,
                    role,
                })
            })
            .collect();
        Ok(KernelLoss {
            ring,
            ends,
            recovered,
            untracked,
            programs,
            seen_ring: 0,
            seen_ends: 0,
            seen_untracked: 0,
            seen_nested: 0,
        })
    }

    /// What was lost since the last call; the caller adds it to `keepalive_events_lost_total`
    /// (this stage knows the kernel's counters, not the metrics).
    pub fn refresh(&mut self) -> Lost {
        let mut lost = Lost::default();
        if let Ok(values) = self.ring.get(&0, 0) {
            let total: u64 = values.iter().sum();
            if total > self.seen_ring {
                lost.ring = total - self.seen_ring;
                self.seen_ring = total;
            }
        }
        if let Ok(values) = self.ends.get(&0, 0) {
            let total: u64 = values.iter().sum();
            if total > self.seen_ends {
                warn!(
                    "{} deaths, resets or closes mid-run found the run-end ring full and are \
                     not reported",
                    total - self.seen_ends
                );
                lost.run_end = total - self.seen_ends;
                self.seen_ends = total;
            }
        }
        if let Ok(values) = self.untracked.get(&0, 0) {
            let total: u64 = values.iter().sum();
            if total > self.seen_untracked {
                warn!(
                    "{} sockets began a keepalive probe run while the kernel's PROBING map was \
                     full: their answer, RST or close will not be reported (the map is sized \
                     at start from the TCP sockets there were; restart the daemon to resize it)",
                    total - self.seen_untracked
                );
                lost.tracking = total - self.seen_untracked;
                self.seen_untracked = total;
            }
        }
        let unrecovered = self.unrecovered();
        let nested: u64 = unrecovered.iter().map(|u| u.1).sum();
        if nested > self.seen_nested {
            let which: Vec<String> = unrecovered
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            warn!(
                "{} hook runs skipped by the kernel (the program was already running on that CPU); \
                 events may be missing (so far: {})",
                nested - self.seen_nested,
                which.join(", ")
            );
            lost.nested = nested - self.seen_nested;
            self.seen_nested = nested;
        }
        lost
    }

    /// Per program with any: skipped runs that no twin made up for.
    fn unrecovered(&self) -> Vec<(&str, u64)> {
        self.programs
            .iter()
            .filter_map(|p| {
                let misses = match p.role {
                    Role::Twin => return None,
                    Role::Primary(slot) => {
                        recursion_misses(&p.fd)?.saturating_sub(self.recovered_in(slot))
                    }
                    Role::Plain => recursion_misses(&p.fd)?,
                };
                (misses > 0).then_some((p.name.as_str(), misses))
            })
            .collect()
    }

    fn recovered_in(&self, slot: u32) -> u64 {
        self.recovered
            .get(&slot, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
}

/// `bpf_prog_info.recursion_misses` of a program (0 on kernels before 5.12, which lack it).
fn recursion_misses(fd: &ProgramFd) -> Option<u64> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: an all-zero bpf_prog_info is valid (plain integers).
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd.as_fd().as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: `attr` points at `info`, which outlives the call and is `info_len` bytes long.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<InfoAttr>(),
        )
    };
    (r == 0).then_some(info.recursion_misses)
}
