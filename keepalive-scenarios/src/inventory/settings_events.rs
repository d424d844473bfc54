//! A socket's `settings` events held to what the program set: the chain of changes and who made
//! them.

use super::view::Want;
use crate::event::Event;

/// Checks a socket's `settings` events: each one's `previous` is the one before's `keepalive`,
/// the last ends in `want`, and the owner, when named, is the program's. Returns failures.
pub fn check_settings(events: &[&Event], want: &Want, required: bool) -> Vec<String> {
    let mut bad = Vec::new();
    if events.is_empty() {
        if required {
            bad.push("no settings event".to_owned());
        }
        return bad;
    }
    for pair in events.windows(2) {
        if pair[1].previous != pair[0].keepalive {
            bad.push(format!(
                "settings chain broken: previous {:?} after {:?}",
                pair[1].previous, pair[0].keepalive
            ));
        }
    }
    let last = events[events.len() - 1];
    if last.keepalive.as_ref() != Some(&want.cfg()) {
        bad.push(format!(
            "last settings event {:?}, want {:?}",
            last.keepalive,
            want.cfg()
        ));
    }
    if let Some((pid, comm)) = &want.owner {
        for e in events {
            if e.pid.is_some_and(|p| p != *pid) || e.comm.as_ref().is_some_and(|c| c != comm) {
                bad.push(format!(
                    "settings event names {:?}/{:?}, socket belongs to {comm}/{pid}",
                    e.comm, e.pid
                ));
            }
        }
    }
    bad
}
