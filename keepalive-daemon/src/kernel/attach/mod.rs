//! Loading the kernel programs and climbing down the hook ladder.
//!
//! Each logical hook tries fentry/fexit, then kprobe/kretprobe, then its tracepoint rung (in
//! `auto` mode), or exactly the forced family. A rung that fails is unloaded before the next is
//! tried, and any error drops the whole `Ebpf`, which detaches everything already attached: a
//! failed start leaves nothing behind in the kernel.
//!
//! `ladder` holds the rungs of each logical hook and the climb down them, `program` loads and
//! attaches one program of a rung, `walk` runs the socket iterator.
use std::path::Path;

use aya::{Btf, Ebpf, EbpfLoader, maps::Array, programs::Iter};
use keepalive_common::{FLAG_DEATH_VIA_DONE, FLAG_PROBE_VIA_WAKEUP, Offsets, Settings};
use log::{info, warn};

use crate::{
    error::{Error, Result},
    kernel::objects,
    service::cli::HookMode,
};
use ladder::{ALWAYS, DEATH, ITER, PROBE_SENT, SETTINGS, TIMER, climb};
use program::{attach_all, describe};

mod ladder;
mod program;
mod walk;

pub use walk::{CHUNK_RECORDS, inventory, inventory_each};

/// Where one logical hook ended up.
#[derive(Debug, Clone)]
pub struct HookStatus {
    pub hook: &'static str,
    pub mode: &'static str,
    /// Why the rung above was not used, or what the chosen rung cannot do.
    pub note: Option<String>,
    /// Rungs above the chosen one that the kernel refused, with its reason: exported as
    /// `keepalive_hook_rung_refused`, so a fallback is visible without the log.
    pub refused: Vec<(&'static str, String)>,
}

pub struct Attached {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
}

pub struct LoadParams<'a> {
    pub offsets: Offsets,
    pub settings: Settings,
    pub ring_bytes: u32,
    /// The run-end ring (`kernel::sizing::run_end_ring_bytes`).
    pub run_end_bytes: u32,
    /// `PROBING` entries (`kernel::sizing::probing_entries`).
    pub probing_entries: u32,
    /// The kernel's BTF as aya parsed it (once, in `kernel::btf::KernelBtf`).
    pub btf: &'a Btf,
    /// Where it was read from, for messages.
    pub btf_path: &'a Path,
    pub has_done_with_error: bool,
    pub mode: HookMode,
    /// The syscall tracepoints' offsets were found; without them settings changes are unseen.
    pub settings_hooks: bool,
}

pub fn load(p: &LoadParams<'_>) -> Result<Attached> {
    let btf = p.btf;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(btf))
        .override_global("OFFSETS", &p.offsets, true)
        .override_global("SETTINGS", &p.settings, true)
        .override_global(
            "TIMER_FILTER",
            &[
                p.offsets.timer_function as u64,
                p.settings.keepalive_timer_fn,
            ],
            true,
        )
        .map_max_entries("EVENTS", p.ring_bytes)
        .map_max_entries("RUN_ENDS", p.run_end_bytes)
        .map_max_entries("PROBING", p.probing_entries)
        .load(objects::DAEMON)
        .map_err(load_error)?;

    if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf).map(spawn_logger) {
        warn!("kernel-side log messages unavailable: {e}");
    }

    let mut hooks = Vec::new();
    let timer = climb(&mut ebpf, btf, p.mode, "keepalive_timer", TIMER, None)?;
    hooks.push(timer);

    let probe = climb(&mut ebpf, btf, p.mode, "probe_sent", PROBE_SENT, None)?;
    set_flag(&mut ebpf, FLAG_PROBE_VIA_WAKEUP, probe.mode != "tracepoint")?;
    hooks.push(probe);

    let absent = (!p.has_done_with_error).then(|| {
        "tcp_done_with_error is not in this kernel (before 6.11 without the 2024 backport)"
            .to_string()
    });
    let death = climb(&mut ebpf, btf, p.mode, "death", DEATH, absent)?;
    set_flag(&mut ebpf, FLAG_DEATH_VIA_DONE, death.mode != "tracepoint")?;
    hooks.push(death);

    for &(hook, progs) in ALWAYS {
        attach_all(&mut ebpf, btf, progs).map_err(|reason| Error::HookRefused {
            hook,
            mode: "tracepoint",
            reason,
        })?;
        hooks.push(HookStatus {
            hook,
            mode: "tracepoint",
            note: None,
            refused: Vec::new(),
        });
    }
    if p.settings_hooks {
        attach_all(&mut ebpf, btf, SETTINGS).map_err(|reason| Error::HookRefused {
            hook: "settings",
            mode: "tracepoint",
            reason,
        })?;
        hooks.push(HookStatus {
            hook: "settings",
            mode: "tracepoint",
            note: None,
            refused: Vec::new(),
        });
    }
    let iter_ok = match <&mut Iter>::try_from(
        ebpf.program_mut(ITER)
            .ok_or_else(|| Error::Load(format!("{ITER} missing")))?,
    ) {
        Ok(it) => it.load("tcp", btf).map_err(|e| describe(&e)),
        Err(e) => Err(e.to_string()),
    };
    match iter_ok {
        Ok(()) => hooks.push(HookStatus {
            hook: "inventory",
            mode: "iterator",
            note: None,
            refused: Vec::new(),
        }),
        Err(e) => warn!(
            "TCP socket iterator unavailable ({e}): sockets opened before the daemon are not inventoried"
        ),
    }
    for h in &hooks {
        match &h.note {
            Some(note) => info!("hook {:<15} mode {:<10} ({note})", h.hook, h.mode),
            None => info!("hook {:<15} mode {}", h.hook, h.mode),
        }
    }
    Ok(Attached { ebpf, hooks })
}

fn set_flag(ebpf: &mut Ebpf, index: u32, on: bool) -> Result<()> {
    let map = ebpf
        .map_mut("FLAGS")
        .ok_or_else(|| Error::Load("map FLAGS missing".into()))?;
    let mut flags: Array<_, u8> = Array::try_from(map).map_err(|e| Error::Load(e.to_string()))?;
    flags
        .set(index, on as u8, 0)
        .map_err(|e| Error::Load(e.to_string()))
}

fn load_error(e: aya::EbpfError) -> Error {
    let text = e.to_string();
    let perm = matches!(&e, aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
        if io_error.raw_os_error() == Some(libc::EPERM));
    if perm {
        Error::Privileges
    } else {
        Error::Load(text)
    }
}

fn spawn_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    tokio::spawn(async move {
        // SAFETY: the AsyncFd owns the logger and with it the ring buffer's descriptor.
        let Ok(mut fd) = (unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }) else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests;
