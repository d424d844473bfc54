//! The guest's programs: the empty twins loaded and attached per hook mode, and every program's
//! run statistics read through aya (the guest has no bpftool).
use std::collections::HashMap;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{FEntry, FExit, KProbe},
};

use super::hooks::{Kind, PAIRS};
use crate::{
    bpf::{Delta, EMPTY},
    kcost::stats,
    sys,
};

/// One copy of the twins for `mode`; (name, id) of each one attached. A twin the kernel refuses
/// (tcp_done_with_error missing before its backport) is reported and left out.
pub(super) fn load_twins(mode: &str) -> Result<(Ebpf, Vec<(&'static str, u32)>)> {
    let mut ebpf = EbpfLoader::new()
        .load(EMPTY)
        .context("loading keepalive-empty")?;
    let btf = aya::Btf::from_sys_fs()?;
    let mut ids = Vec::new();
    for &(_, hook, func, kind, _, name) in PAIRS.iter().filter(|p| p.0 == mode) {
        if ids.iter().any(|(n, _)| *n == name) {
            continue; // one empty program serves a primary and its twin
        }
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("{name} missing from keepalive-empty"))?;
        let attached = (|| -> Result<u32> {
            Ok(match kind {
                Kind::FEntry => {
                    let p: &mut FEntry = prog.try_into()?;
                    p.load(func, &btf)?;
                    p.attach()?;
                    p.info()?.id()
                }
                Kind::FExit => {
                    let p: &mut FExit = prog.try_into()?;
                    p.load(func, &btf)?;
                    p.attach()?;
                    p.info()?.id()
                }
                Kind::KProbe => {
                    let p: &mut KProbe = prog.try_into()?;
                    p.load()?;
                    p.attach(func, 0)?;
                    p.info()?.id()
                }
            })
        })();
        match attached {
            Ok(id) => ids.push((name, id)),
            Err(e) => println!("kcost-vm-note twin {name} on {hook} not attached: {e:#}"),
        }
    }
    Ok((ebpf, ids))
}

/// (name as the kernel keeps it, run_time_ns, run_cnt) of every loaded program we asked for,
/// read through aya's BPF_OBJ_GET_INFO_BY_FD wrapper; programs gone since are left out.
pub(super) fn prog_stats(ids: &[u32]) -> HashMap<u32, (String, Delta)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .map(|p| {
            let name = p.name_as_str().unwrap_or("").to_owned();
            let runs = p.run_count();
            let ns = u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX);
            (p.id(), (name, Delta { runs, ns }))
        })
        .collect()
}

fn snapshot(ids: &[u32]) -> HashMap<u32, Delta> {
    prog_stats(ids)
        .into_iter()
        .map(|(id, (_, d))| (id, d))
        .collect()
}

/// One measurement window of `secs`: the programs' runs and nanoseconds in it (a program
/// missing from the first snapshot counts from zero).
pub(super) fn window(ids: &[u32], secs: f64) -> stats::Window {
    let b = snapshot(ids);
    let t = std::time::Instant::now();
    sys::sleep_s(secs);
    let a = snapshot(ids);
    let d: HashMap<u32, Delta> = a
        .iter()
        .map(|(id, a)| {
            let b = b.get(id).copied().unwrap_or_default();
            (
                *id,
                Delta {
                    runs: a.runs.saturating_sub(b.runs),
                    ns: a.ns.saturating_sub(b.ns),
                },
            )
        })
        .collect();
    stats::Window {
        d,
        secs: t.elapsed().as_secs_f64(),
    }
}

/// The kernel keeps 15 characters of a program's name.
pub(super) fn kernel_name(full: &str) -> &str {
    &full[..full.len().min(15)]
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_names_are_cut_at_15() {
        assert_eq!(
            super::kernel_name("ka_fentry_keepalive_timer"),
            "ka_fentry_keepa"
        );
        assert_eq!(super::kernel_name("vm_kp_wakeup"), "vm_kp_wakeup");
    }
}
