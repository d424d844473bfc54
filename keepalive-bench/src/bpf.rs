//! BPF statistics as `bpftool -j prog show` reports them, and the empty comparison programs.
use std::{collections::HashMap, process::Command};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{BtfTracePoint, Iter, RawTracePoint, TracePoint},
};
use serde::Deserialize;

use crate::sys;

/// The command every kernel-cost figure is computed from (two snapshots, a window apart).
pub const PROG_SHOW: &str = "bpftool -j prog show";

#[derive(Debug, Clone, Deserialize)]
pub struct Prog {
    pub id: u32,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub run_time_ns: u64,
    #[serde(default)]
    pub run_cnt: u64,
}

/// Every loaded program by id.
pub fn snapshot() -> Result<HashMap<u32, Prog>> {
    let text = sys::output(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let progs: Vec<Prog> = serde_json::from_str(&text).context("bpftool -j prog show output")?;
    Ok(progs.into_iter().map(|p| (p.id, p)).collect())
}

/// Runs and nanoseconds of one program between two snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delta {
    pub runs: u64,
    pub ns: u64,
}

impl Delta {
    pub fn per_run(&self) -> f64 {
        if self.runs == 0 {
            f64::NAN
        } else {
            self.ns as f64 / self.runs as f64
        }
    }
}

pub fn delta(before: &HashMap<u32, Prog>, after: &HashMap<u32, Prog>, id: u32) -> Delta {
    match (before.get(&id), after.get(&id)) {
        (Some(b), Some(a)) => Delta {
            runs: a.run_cnt.saturating_sub(b.run_cnt),
            ns: a.run_time_ns.saturating_sub(b.run_time_ns),
        },
        _ => Delta::default(),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Map {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub max_entries: u64,
    #[serde(default)]
    pub bytes_memlock: u64,
}

/// `bpftool -j map show id N` for each id.
pub fn maps(ids: &[u32]) -> Result<Vec<Map>> {
    ids.iter()
        .map(|id| {
            let text = sys::output(Command::new("bpftool").args([
                "-j",
                "map",
                "show",
                "id",
                &id.to_string(),
            ]))?;
            Ok(serde_json::from_str(&text)?)
        })
        .collect()
}

/// Programs of the daemon (by the descriptors its process holds), by name.
pub fn programs_of(pid: u32, snap: &HashMap<u32, Prog>) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = sys::bpf_ids(pid, "prog_id")
        .into_iter()
        .filter_map(|id| Some((snap.get(&id)?.name.clone(), id)))
        .collect();
    v.sort();
    v
}

/// The empty comparison programs (keepalive-ebpf's `keepalive-empty`), built with the daemon.
pub use keepalive_daemon::kernel::objects::EMPTY;

/// The empty programs, attached to the daemon's tracepoint-rung hooks, plus the filter floor.
pub struct Empty {
    ebpf: Ebpf,
    /// (program name, program id).
    pub ids: Vec<(&'static str, u32)>,
}

/// (program, category: "" for raw tracepoints, "btf" for tp_btf, else the tracepoint's, event).
const ATTACH: &[(&str, &str, &str)] = &[
    ("empty_tmr_entry", "", "timer_expire_entry"),
    ("empty_tmr_exit", "", "timer_expire_exit"),
    ("empty_set_state", "", "inet_sock_set_state"),
    ("empty_rcv_reset", "", "tcp_receive_reset"),
    ("empty_enter_sso", "syscalls", "sys_enter_setsockopt"),
    ("empty_exit_sso", "syscalls", "sys_exit_setsockopt"),
    ("empty_accept", "syscalls", "sys_exit_accept4"),
    ("empty_accept", "syscalls", "sys_exit_accept"),
    ("filter_tmr_entry", "", "timer_expire_entry"),
    ("btf_tmr_entry", "btf", "timer_expire_entry"),
    ("btf_filter_entry", "btf", "timer_expire_entry"),
    ("direct_enter_sso", "syscalls", "sys_enter_setsockopt"),
];

impl Empty {
    pub fn load(keepalive_timer_fn: u64, timer_function_off: u32) -> Result<Self> {
        let off = u64::from(timer_function_off);
        let mut ebpf = EbpfLoader::new()
            .override_global("KA_TIMER_FN", &keepalive_timer_fn, true)
            .override_global("TIMER_FUNCTION_OFF", &off, true)
            .load(EMPTY)
            .context("loading keepalive-empty")?;
        let btf = aya::Btf::from_sys_fs()?;
        let mut ids = Vec::new();
        for &(name, category, event) in ATTACH {
            let prog = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("{name} missing from keepalive-empty"))?;
            let id = match category {
                "" => {
                    let p: &mut RawTracePoint = prog.try_into()?;
                    p.load().with_context(|| format!("load {name}"))?;
                    p.attach(event)
                        .with_context(|| format!("attach {name} to {event}"))?;
                    p.info()?.id()
                }
                "btf" => {
                    let p: &mut BtfTracePoint = prog.try_into()?;
                    p.load(event, &btf)
                        .with_context(|| format!("load {name}"))?;
                    p.attach()
                        .with_context(|| format!("attach {name} to {event}"))?;
                    p.info()?.id()
                }
                _ => {
                    let p: &mut TracePoint = prog.try_into()?;
                    if p.fd().is_err() {
                        p.load().with_context(|| format!("load {name}"))?;
                    }
                    p.attach(category, event)
                        .with_context(|| format!("attach {name} to {event}"))?;
                    p.info()?.id()
                }
            };
            ids.push((name, id));
        }
        let it: &mut Iter = ebpf
            .program_mut("empty_iter_tcp")
            .context("empty_iter_tcp missing")?
            .try_into()?;
        it.load("tcp", &btf).context("load empty_iter_tcp")?;
        ids.push(("empty_iter_tcp", it.info()?.id()));
        ids.dedup();
        Ok(Empty { ebpf, ids })
    }

    /// Keepalive timer expirations the filter program has counted so far.
    pub fn keepalive_timers(&self) -> u64 {
        self.counter("KA_FIRED", 0)
    }

    /// Keepalive setsockopt calls on the whole host, counted by `direct_enter_sso`.
    pub fn keepalive_setsockopts(&self) -> u64 {
        self.counter("REF_HITS", 1)
    }

    fn counter(&self, map: &str, slot: u32) -> u64 {
        let Some(map) = self.ebpf.map(map) else {
            return 0;
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        arr.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Runs the empty iterator over every TCP socket once (what the daemon's startup walk
    /// does with its describing program).
    pub fn walk(&mut self) -> Result<()> {
        let it: &mut Iter = self
            .ebpf
            .program_mut("empty_iter_tcp")
            .context("iter")?
            .try_into()?;
        let link = it.attach()?;
        let link = it.take_link(link)?;
        let mut f = link.into_file()?;
        std::io::Read::read_to_end(&mut f, &mut Vec::new())?;
        Ok(())
    }
}
