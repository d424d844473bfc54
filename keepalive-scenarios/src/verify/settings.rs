//! The `settings` events of one flow against the options its socket ended with.

use crate::event::Event;
use crate::flow::Flow;

/// The client sets its keepalive options after connecting, so the daemon must report the
/// change, and its last `settings` event must be the configuration the socket ended with.
/// A socket that sets nothing must cause no `settings` event.
pub fn check(flow: &Flow, settings: &[&Event], failures: &mut Vec<String>) {
    let l = flow.label;
    let Some(ka) = flow.ka else {
        if !settings.is_empty() {
            failures.push(format!(
                "{l}: {} settings events for a socket that set no option",
                settings.len()
            ));
        }
        return;
    };
    let want = (
        Some(true),
        Some(u64::from(ka.idle)),
        Some(u64::from(ka.intvl)),
        Some(u64::from(ka.cnt)),
        Some(0),
    );
    match settings.last().and_then(|e| e.keepalive.as_ref()) {
        Some(k) if (k.enabled, k.idle_s, k.intvl_s, k.cnt, k.user_timeout_ms) == want => {}
        other => failures.push(format!(
            "{l}: last settings event {other:?}, socket has {ka:?} with SO_KEEPALIVE"
        )),
    }
}
