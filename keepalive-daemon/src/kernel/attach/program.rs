//! Loading and attaching one program of a rung, and undoing it when the rung fails.
use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
};

/// One program of a rung and where it attaches: a rung is a list of these, attached in order.
#[derive(Clone, Copy)]
pub(super) enum Prog {
    FEntry(&'static str, &'static str),
    FExit(&'static str, &'static str),
    KProbe(&'static str, &'static str),
    RawTp(&'static str, &'static str),
    /// BTF tracepoint (tp_btf): program, tracepoint.
    BtfTp(&'static str, &'static str),
    /// Classic tracepoint: program, category, event.
    Tp(&'static str, &'static str, &'static str),
}

pub(super) fn attach_all(
    ebpf: &mut Ebpf,
    btf: &Btf,
    progs: &[Prog],
) -> std::result::Result<(), String> {
    for (i, prog) in progs.iter().enumerate() {
        if let Err(e) = attach(ebpf, btf, *prog) {
            // Undo the half-attached rung so the next one starts clean.
            for done in &progs[..i] {
                unload(ebpf, *done);
            }
            unload(ebpf, *prog);
            return Err(e);
        }
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, btf: &Btf, prog: Prog) -> std::result::Result<(), String> {
    let name = prog_name(prog);
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the eBPF object"))?;
    let r: std::result::Result<(), ProgramError> = (|| {
        match prog {
            Prog::FEntry(_, func) => {
                let p: &mut FEntry = p.try_into()?;
                p.load(func, btf)?;
                p.attach()?;
            }
            Prog::FExit(_, func) => {
                let p: &mut FExit = p.try_into()?;
                p.load(func, btf)?;
                p.attach()?;
            }
            Prog::KProbe(_, func) => {
                let p: &mut KProbe = p.try_into()?;
                p.load()?;
                p.attach(func, 0)?;
            }
            Prog::RawTp(_, tp) => {
                let p: &mut RawTracePoint = p.try_into()?;
                p.load()?;
                p.attach(tp)?;
            }
            Prog::BtfTp(_, tp) => {
                let p: &mut BtfTracePoint = p.try_into()?;
                p.load(tp, btf)?;
                p.attach()?;
            }
            Prog::Tp(_, category, event) => {
                let p: &mut TracePoint = p.try_into()?;
                // The same program serves accept and accept4: load once, attach twice.
                if p.fd().is_err() {
                    p.load()?;
                }
                p.attach(category, event)?;
            }
        }
        Ok(())
    })();
    r.map_err(|e| describe(&e))
}

pub(super) fn prog_name(prog: Prog) -> &'static str {
    match prog {
        Prog::FEntry(n, _)
        | Prog::FExit(n, _)
        | Prog::KProbe(n, _)
        | Prog::RawTp(n, _)
        | Prog::BtfTp(n, _) => n,
        Prog::Tp(n, ..) => n,
    }
}

fn unload(ebpf: &mut Ebpf, prog: Prog) {
    let Some(p) = ebpf.program_mut(prog_name(prog)) else {
        return;
    };
    let _ = match prog {
        Prog::FEntry(..) => <&mut FEntry>::try_from(p).map(|p| p.unload()),
        Prog::FExit(..) => <&mut FExit>::try_from(p).map(|p| p.unload()),
        Prog::KProbe(..) => <&mut KProbe>::try_from(p).map(|p| p.unload()),
        Prog::RawTp(..) => <&mut RawTracePoint>::try_from(p).map(|p| p.unload()),
        Prog::BtfTp(..) => <&mut BtfTracePoint>::try_from(p).map(|p| p.unload()),
        Prog::Tp(..) => <&mut TracePoint>::try_from(p).map(|p| p.unload()),
    };
}

/// The kernel's reason: the verifier's own error line (the last line before its statistics),
/// with the statistics after it. The whole log goes to the debug log.
pub(super) fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            log::debug!("verifier log:\n{log}");
            match verifier_reason(&log) {
                Some(reason) => format!("{io_error} (verifier: {reason})"),
                None => io_error.to_string(),
            }
        }
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// The verifier ends every log with statistics ("processed N insns …", "stack depth …",
/// "verification time …", and from 7.x one "subprog …" line per function), success or not; the
/// line naming the refusal comes just before them. 7.x also explains a refusal at length after
/// its classic one-line message: there the classic line and the "Verification failed:" summary
/// are the reason.
pub(super) fn verifier_reason(log: &str) -> Option<String> {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let is_stats = |l: &&str| {
        l.starts_with("processed ")
            || l.starts_with("stack depth")
            || l.starts_with("verification time")
            || l.starts_with("subprog ")
    };
    let processed = lines.iter().find(|l| l.starts_with("processed ")).copied();
    let reason = match lines
        .iter()
        .position(|l| l.starts_with("Verification failed:"))
    {
        Some(0) => Some(lines[0].to_owned()),
        Some(i) => Some(format!("{} — {}", lines[i - 1], lines[i])),
        None => lines
            .iter()
            .rposition(|l| !is_stats(l))
            .map(|i| lines[i].to_owned()),
    };
    match (reason, processed) {
        (Some(r), Some(p)) => Some(format!("{r}; {p}")),
        (Some(r), None) => Some(r),
        (None, p) => p.map(str::to_owned),
    }
}
