use aya_obj::{Object, ProgramSection};

use super::{
    ladder::{ALWAYS, DEATH, ITER, PROBE_SENT, SETTINGS, TIMER, TIMER_RAW_TP},
    program::{Prog, prog_name, verifier_reason},
};

/// Every program a ladder names exists in the built object with the section type its rung
/// needs: a renamed or mistyped program would otherwise only fail on a kernel with that rung.
#[test]
fn object_has_every_program_of_every_rung() {
    let obj = Object::parse(crate::kernel::objects::DAEMON).expect("parse eBPF object");
    let all = [TIMER, PROBE_SENT, DEATH]
        .into_iter()
        .flatten()
        .flat_map(|(_, p)| p.iter().copied());
    let mut checked = 0;
    for prog in all
        .chain(TIMER_RAW_TP.iter().copied())
        .chain(ALWAYS.iter().flat_map(|(_, p)| p.iter().copied()))
        .chain(SETTINGS[..3].iter().copied())
    {
        let name = prog_name(prog);
        let found = obj
            .programs
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let ok = match (prog, &found.section) {
            (Prog::FEntry(..), ProgramSection::FEntry { .. }) => true,
            (Prog::FExit(..), ProgramSection::FExit { .. }) => true,
            (Prog::KProbe(n, _), ProgramSection::KRetProbe) => n.contains("kretprobe"),
            (Prog::KProbe(n, _), ProgramSection::KProbe) => !n.contains("kretprobe"),
            (Prog::RawTp(..), ProgramSection::RawTracePoint) => true,
            (Prog::BtfTp(..), ProgramSection::BtfTracePoint) => true,
            (Prog::Tp(..), ProgramSection::TracePoint) => true,
            _ => false,
        };
        assert!(ok, "{name} has section {:?}", found.section);
        checked += 1;
    }
    assert_eq!(checked, 21);
    assert!(matches!(
        obj.programs.get(ITER).map(|p| &p.section),
        Some(ProgramSection::Iter { .. })
    ));
    let calib = crate::kernel::calibrate::PROG;
    assert!(
        matches!(
            obj.programs.get(calib).map(|p| &p.section),
            Some(ProgramSection::RawTracePoint)
        ),
        "{calib}"
    );
    // The object carries nothing the daemon does not use.
    assert_eq!(obj.programs.len(), checked + 2);
}

/// A twin only makes up for its primary if it sits on the same hook and runs after it (the
/// kernel calls a hook's programs in attach order): each twin is attached right after its
/// primary, and no primary is attached without its twin.
#[test]
fn twins_follow_their_primaries() {
    let lists: Vec<&[Prog]> = DEATH.iter().chain(ALWAYS).map(|(_, p)| *p).collect();
    let mut seen = 0;
    for (primary, twin) in crate::kernel::loss::twins() {
        for list in &lists {
            let Some(i) = list.iter().position(|p| prog_name(*p) == primary) else {
                continue;
            };
            let next = list
                .get(i + 1)
                .copied()
                .unwrap_or_else(|| panic!("{primary} attached without {twin}"));
            assert_eq!(prog_name(next), twin);
            assert_eq!(
                hook_of(next),
                hook_of(list[i]),
                "{twin} on another hook than {primary}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 3);
}

fn hook_of(p: Prog) -> &'static str {
    match p {
        Prog::FEntry(_, h)
        | Prog::FExit(_, h)
        | Prog::KProbe(_, h)
        | Prog::RawTp(_, h)
        | Prog::BtfTp(_, h)
        | Prog::Tp(_, _, h) => h,
    }
}

/// Every rung but the tracepoint one names a kernel function that must exist for it.
#[test]
fn ladders_are_ordered_best_first() {
    for ladder in [TIMER, PROBE_SENT, DEATH] {
        let order: Vec<_> = ladder.iter().map(|(r, _)| *r).collect();
        assert_eq!(order, ["fentry", "kprobe", "tracepoint"]);
    }
}

/// The reason is the verifier's own error line, not its closing statistics: both the classic
/// log (6.x) and the 7.x one that explains the refusal after it (text from Debian 7.3.4).
#[test]
fn verifier_reason_names_the_refusal() {
    let classic = "0: R1=ctx() R10=fp0\n12: (77) r4 >>= 56\n\
                   R4 pointer arithmetic with >>= operator prohibited\n\
                   processed 12 insns (limit 1000000) max_states_per_insn 0\n";
    assert_eq!(
        verifier_reason(classic).unwrap(),
        "R4 pointer arithmetic with >>= operator prohibited; \
         processed 12 insns (limit 1000000) max_states_per_insn 0"
    );
    let explained = "474: (77) r4 >>= 56\nR4 pointer arithmetic with >>= operator prohibited\n\n\
                     Verification failed: Register Type Safety: Invalid pointer arithmetic operator\n\n\
                     Reason:\n  R4 holds a kernel object pointer.\nSuggestion:\n  Use only add.\n\n\
                     verification time 287638 usec\nstack depth max 0\n\
                     subprog 4 (memset) static insns_self 763 insns_total 763 stack 0\n\
                     processed 2851 insns (limit 1000000)\n";
    assert_eq!(
        verifier_reason(explained).unwrap(),
        "R4 pointer arithmetic with >>= operator prohibited — Verification failed: Register Type \
         Safety: Invalid pointer arithmetic operator; processed 2851 insns (limit 1000000)"
    );
    assert_eq!(verifier_reason(""), None);
}
