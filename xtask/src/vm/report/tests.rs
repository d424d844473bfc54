use super::*;

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

#[test]
fn folds_families_and_keeps_failures() {
    let mut o = Outcome::default();
    parse(
        &mut o,
        &lines(
            "[    1.0] junk kat: boot kernel=6.1.0 uptime=1.2\n\
         kat: kernel=6.1.0 mode=kprobe scenario=alive family=ipv4 mode=kprobe result=success probes=5\n\
         kat: kernel=6.1.0 mode=kprobe scenario=alive family=ipv6 mode=kprobe result=failure probes=2\n\
         kat: kernel=6.1.0 mode=kprobe failure\n\
         kat: done kernel=6.1.0 mode=kprobe exit=1 secs=12.5\n\
         kat: failure",
        ),
    );
    let run = &o.modes["kprobe"];
    assert_eq!(run.results["alive"], Cell::Fail("ipv6: probes=2".into()));
    assert_eq!(run.exit, Some(1));
    assert_eq!(run.secs, Some(12.5));
    assert_eq!(o.verdict, Some(false));
    assert!(!o.passed(&["kprobe".into()]));
}

#[test]
fn refused_mode_shows_the_daemons_line() {
    let mut o = Outcome::default();
    let text = "kat: kernel=5.10.0 mode=fentry log: error: daemon exited before becoming ready (exit status: 1); stderr tail:\n\
                kat: kernel=5.10.0 mode=fentry log: Error: fentry refused: kernel lacks BTF trampolines\n\
                kat: kernel=5.10.0 mode=fentry failure\n\
                kat: done kernel=5.10.0 mode=fentry exit=1 secs=0.4\n";
    parse(&mut o, &lines(text));
    assert_eq!(
        cell_text(o.modes.get("fentry"), "alive"),
        "n/a: error: daemon exited before becoming ready (exit status: 1) — \
         Error: fentry refused: kernel lacks BTF trampolines"
    );
    assert!(report_has_no_pass(&o));
}

fn report_has_no_pass(o: &Outcome) -> bool {
    !o.passed(&["fentry".into()])
}

#[test]
fn rungs_and_refusals_are_read_from_the_suite() {
    let mut o = Outcome::default();
    let text = "kat: kernel=r mode=auto hooks: keepalive_timer=fentry probe_sent=fentry death=kprobe reset=tracepoint\n\
                kat: kernel=r mode=auto refused: hook=death rung=fentry reason=\"Permission denied (os error 13)\"\n\
                kat: kernel=r mode=auto scenario=alive family=ipv4 mode=auto result=success\n\
                kat: done kernel=r mode=auto exit=0 secs=1.0";
    parse(&mut o, &lines(text));
    let run = &o.modes["auto"];
    assert!(run.passed());
    assert_eq!(run.last_note, None);
    assert_eq!(
        rung_text(Some(run)),
        "keepalive_timer: fentry; probe_sent: fentry; death: kprobe; \
         death: fentry refused (Permission denied (os error 13))"
    );
    assert_eq!(rung_text(None), "-");
}

#[test]
fn a_skip_is_shown_and_does_not_fail_the_mode() {
    let mut o = Outcome::default();
    let text = "kat: kernel=r mode=kprobe scenario=settings-curl family=ipv4 mode=kprobe result=skipped detail=\"curl not installed\"\n\
                kat: kernel=r mode=kprobe scenario=settings-curl family=ipv6 mode=kprobe result=success\n\
                kat: done kernel=r mode=kprobe exit=0 secs=1.0";
    parse(&mut o, &lines(text));
    assert!(o.modes["kprobe"].passed());
    assert_eq!(
        cell_text(o.modes.get("kprobe"), "settings-curl"),
        "skipped: curl not installed"
    );
}

#[test]
fn a_rerun_that_passes_is_flaky_and_closing_blocks_are_not_counted_again() {
    let mut o = Outcome::default();
    let fail = "scenario=control-rto family=ipv4 mode=kprobe result=failure probes=0 detail=\"app error after 3.49s\"";
    let text = format!(
        "kat: kernel=r mode=kprobe {fail}\n\
         kat: kernel=r mode=kprobe scenario=control-rto family=ipv6 mode=kprobe result=success\n\
         kat: kernel=r mode=kprobe scenario=control-rto family=ipv4 mode=kprobe result=success\n\
         kat: kernel=r mode=kprobe flaky scenarios (failed once, passed when run again):\n\
         kat: kernel=r mode=kprobe {fail}\n\
         kat: done kernel=r mode=kprobe exit=0 secs=1.0"
    );
    parse(&mut o, &lines(&text));
    let run = &o.modes["kprobe"];
    assert!(run.passed());
    assert_eq!(
        cell_text(Some(run), "control-rto"),
        "pass (flaky: failed once, passed when rerun; ipv4: probes=0 detail=\"app error after 3.49s\")"
    );
}

#[test]
fn a_failure_repeated_in_the_closing_block_is_listed_once() {
    let mut o = Outcome::default();
    let fail = "scenario=alive family=ipv4 mode=fentry result=failure probes=2";
    let text = format!(
        "kat: kernel=r mode=fentry {fail}\n\
         kat: kernel=r mode=fentry failed scenarios:\n\
         kat: kernel=r mode=fentry {fail}\n\
         kat: done kernel=r mode=fentry exit=1 secs=1.0"
    );
    parse(&mut o, &lines(&text));
    assert_eq!(
        o.modes["fentry"].results["alive"],
        Cell::Fail("ipv4: probes=2".into())
    );
}
