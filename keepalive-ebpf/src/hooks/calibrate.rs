//! `timer:timer_start` (raw tracepoint), for the daemon's startup calibration only: it finds the
//! address of `tcp_keepalive_timer` without /proc/kallsyms, so the unit can keep
//! ProtectKernelTunables= and drop CAP_SYSLOG. The daemon arms a keepalive timer on a loopback
//! connection of its own and reads back which callback the kernel queued; the program is
//! detached again before anything else is attached.
//!
//! TP_PROTO(struct timer_list *timer, unsigned long expires, unsigned int flags), the same on
//! 5.10, 6.1, 6.12, 6.18, 7.2 and 7.3. Tested on: 6.18.44 (host), Debian 5.10, 6.1, 6.12, 7.2, 7.3
//! (QEMU, x86_64) and 6.12 (QEMU, arm64): the callback address is a plain function pointer on
//! arm64 as well (Debian builds with gcc: no CFI jump-table address to tell apart).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap},
    programs::RawTracePointContext,
};
use keepalive_common::{CALIB_PORT, CALIB_TID};

use crate::kernel;

/// Written by the daemon: [`CALIB_TID`] the calibrating thread, [`CALIB_PORT`] the local port
/// of the socket whose keepalive it arms. Zero tid = idle.
#[map]
static CALIB_FILTER: Array<u32> = Array::with_max_entries(2, 0);

/// Callback address → times seen. More than one key means the filter let a stranger through,
/// which the daemon treats as a failed calibration rather than guessing.
#[map]
static CALIB_SEEN: HashMap<u64, u32> = HashMap::with_max_entries(16, 0);

#[raw_tracepoint(tracepoint = "timer_start")]
pub fn ka_calib_timer_start(ctx: RawTracePointContext) -> i32 {
    let _ = try_ka_calib_timer_start(&ctx);
    0
}

fn try_ka_calib_timer_start(ctx: &RawTracePointContext) -> Option<()> {
    let tid = *CALIB_FILTER.get(CALIB_TID)?;
    // Softirqs run on top of any thread, so the tid alone could let through a timer a packet
    // armed meanwhile; the socket the timer is embedded in must be ours too.
    if tid == 0 || bpf_get_current_pid_tgid() as u32 != tid {
        return None;
    }
    let timer: u64 = ctx.arg(0);
    let o = kernel::offsets();
    let sk = kernel::sk_of_timer(timer);
    let port = u16::from_be(kernel::read::<u16>(sk, o.inet_sport));
    if u32::from(port) != *CALIB_FILTER.get(CALIB_PORT)? {
        return None;
    }
    let function = kernel::read::<u64>(timer, o.timer_function);
    if function == 0 {
        return None;
    }
    let seen = CALIB_SEEN
        .get_ptr_mut(&function)
        .map_or(0, |n| unsafe { *n });
    CALIB_SEEN
        .insert(&function, &seen.saturating_add(1), 0)
        .ok()
}
