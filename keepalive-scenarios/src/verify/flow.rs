//! One flow's events against what its scenario expects: the probes, answers and death, their
//! numbering and timing, and the owner and cause the daemon names.
use super::*;

/// Checks one flow's events; returns the detection time (dead.ts − last received packet).
pub(super) fn check(
    flow: &Flow,
    evs: &[&Event],
    client_ns: u64,
    me: &Me,
    failures: &mut Vec<String>,
) -> Option<f64> {
    let l = flow.label;
    let mut fail = |m: String| failures.push(format!("{l}: {m}"));
    let family = if flow.local.is_ipv4() { "ipv4" } else { "ipv6" };
    let mut run = 0u32; // probes sent in the current unanswered run
    let mut prev: Option<SystemTime> = None;
    for (i, e) in evs.iter().enumerate() {
        let what = e.brief();
        if e.netns != client_ns {
            fail(format!(
                "{what} netns {} != client netns {client_ns}",
                e.netns
            ));
        }
        if e.family != family {
            fail(format!("{what} family {} != {family}", e.family));
        }
        if e.pid.is_some_and(|p| p != me.pid) {
            fail(format!("{what} pid {:?} != runner pid {}", e.pid, me.pid));
        }
        if e.comm.as_ref().is_some_and(|c| *c != me.comm) {
            fail(format!("{what} comm {:?} != {:?}", e.comm, me.comm));
        }
        if let Some(ka) = flow.ka {
            let want = (
                Some(u64::from(ka.idle)),
                Some(u64::from(ka.intvl)),
                Some(u64::from(ka.cnt)),
                Some(0),
            );
            match &e.keepalive {
                Some(k) if (k.idle_s, k.intvl_s, k.cnt, k.user_timeout_ms) == want => {}
                other => fail(format!("{what} keepalive {other:?}, socket has {ka:?}")),
            }
        }
        match e.time() {
            None => fail(format!("{what} bad ts {:?}", e.ts)),
            Some(t) => {
                if prev.is_some_and(|p| t < p) {
                    fail(format!(
                        "{what} ts {} earlier than the previous event",
                        e.ts
                    ));
                }
                prev = Some(t);
            }
        }
        // Probe numbering: 1.. within a run; answered/dead carry the run's count.
        match e.event.as_str() {
            "probe" => {
                if e.probes != Some(run + 1) {
                    fail(format!(
                        "probe numbered {:?}, expected {}",
                        e.probes,
                        run + 1
                    ));
                }
                run = e.probes.unwrap_or(run + 1);
            }
            // Not a probe out: carries the run's count unchanged.
            "probe_failed" if e.probes != Some(run) => {
                fail(format!(
                    "probe_failed with probes {:?}, but {run} probes were out",
                    e.probes
                ));
            }
            "probe_failed" => {}
            "answered" | "dead" => {
                if e.probes != Some(run) {
                    fail(format!(
                        "{} with probes {:?}, but {run} probes were out",
                        e.event, e.probes
                    ));
                }
                run = 0;
                if e.event == "dead" && i + 1 != evs.len() {
                    fail("events after dead".into());
                }
            }
            _ => {}
        }
    }
    let n = |k: &str| evs.iter().filter(|e| e.event == k).count();
    let (probes, answered, dead) = (n("probe"), n("answered"), n("dead"));
    match flow.expect {
        Expect::Silent => {
            if !evs.is_empty() {
                fail(format!("expected no events, got {}", evs.len()));
            }
            None
        }
        Expect::Alive {
            min_probes,
            min_answered,
        } => {
            if probes < min_probes || answered < min_answered || answered > probes || dead > 0 {
                fail(format!(
                    "expected >= {min_probes} probes, >= {min_answered} answered, no dead; got {probes}/{answered}/{dead}"
                ));
            }
            None
        }
        Expect::LocalDrop { min_failed } => {
            drops::check(evs, min_failed, &mut fail);
            None
        }
        Expect::Dead {
            probes: want,
            cause,
            errno,
            detect,
        } => {
            if probes != want as usize || answered != 0 || dead != 1 {
                fail(format!(
                    "expected {want} probes, 0 answered, 1 dead; got {probes}/{answered}/{dead}"
                ));
            }
            let d = evs.iter().find(|e| e.event == "dead")?;
            if d.cause.as_deref() != Some(cause) || d.errno.as_deref() != Some(errno) {
                fail(format!(
                    "dead cause {:?} errno {:?}, expected {cause}/{errno}",
                    d.cause, d.errno
                ));
            }
            // A bad ts was reported above; a ts before the last packet gives a negative value.
            let secs = match d.time()?.duration_since(flow.last_recv.wall) {
                Ok(x) => x.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            if secs < detect.0 || secs > detect.1 {
                fail(format!(
                    "dead {secs:.2}s after last packet, expected {:.2}..{:.2}s",
                    detect.0, detect.1
                ));
            }
            Some(secs)
        }
    }
}
