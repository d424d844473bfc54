//! What a flow whose own egress dropped everything for a while must show: `probe_failed`
//! events at the kernel's 0.5 s resource retry, with the reason the hook family can see, no
//! death, and probes again after the drop.

use crate::event::Event;

/// `TCP_RESOURCE_PROBE_INTERVAL` (0.5 s), with the timer wheel's slack (8-jiffy buckets at
/// HZ=250 for 0.5 s timers: up to 32 ms late) and scheduling noise under TCG (0.701 s seen once
/// in the 6.1 guest); a gap of a whole probe interval (1 s) is still told apart.
const RETRY: (f64, f64) = (0.4, 0.8);

pub fn check(evs: &[&Event], min_failed: usize, fail: &mut impl FnMut(String)) {
    let failed: Vec<&&Event> = evs.iter().filter(|e| e.event == "probe_failed").collect();
    if failed.len() < min_failed {
        fail(format!(
            "expected >= {min_failed} probe_failed events, got {}",
            failed.len()
        ));
    }
    for e in &failed {
        // fentry and kprobe see tcp_write_wakeup's NET_XMIT_DROP; the tracepoint rung only the
        // kernel's reaction to it.
        let want = match e.hook.as_deref() {
            Some("tracepoint") => "not_sent",
            _ => "local_drop",
        };
        if e.reason.as_deref() != Some(want) {
            fail(format!(
                "{} reason {:?} from hook {:?}, expected {want}",
                e.brief(),
                e.reason,
                e.hook
            ));
        }
    }
    let times: Vec<_> = failed.iter().filter_map(|e| e.time()).collect();
    for pair in times.windows(2) {
        let gap = pair[1]
            .duration_since(pair[0])
            .map_or(-1.0, |d| d.as_secs_f64());
        if gap < RETRY.0 || gap > RETRY.1 {
            fail(format!(
                "probe_failed events {gap:.3}s apart, expected the 0.5 s resource retry"
            ));
        }
    }
    if evs.iter().any(|e| e.event == "dead") {
        fail("the connection died; the drop must only delay probes".into());
    }
    let last_failed = evs.iter().rposition(|e| e.event == "probe_failed");
    let probes_after = last_failed.map_or(0, |i| {
        evs[i..].iter().filter(|e| e.event == "probe").count()
    });
    if probes_after == 0 {
        fail("no probe after the drop was lifted: the run did not continue".into());
    }
}
