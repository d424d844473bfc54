//! Hooks that an interrupt can re-enter, and their twins.
//!
//! The kernel never runs a tracing program (raw tracepoint since 6.1, fentry since 5.5) on a CPU
//! where it is already running: the nested call is skipped and only counted in the program's
//! `recursion_misses`. A hook that fires in process context — a connect's or close's state
//! change, a RST or `tcp_done_with_error` from the socket backlog — can be interrupted, and the
//! softirqs run on the interrupt's way out fire the same hook for another socket: the keepalive
//! timer closing a dead connection, an incoming RST. Measured on the 6.18 host under connection
//! churn: `ka_inet_sock_set_state` skipped once in a few million runs, and that one was a
//! keepalive death the daemon then never reported.
//!
//! So each such hook has a twin program attached right after it on the same hook. The primary
//! marks itself busy on this CPU for its whole run; the twin does the work only when it finds
//! the primary busy, which happens exactly when it runs nested inside the primary — the one
//! case where the kernel skipped the primary. On a kernel without the recursion check the
//! nested primary runs and clears the mark before the twin looks, so nothing is done twice.
//!
//! What twins cannot cover, and is counted instead (`keepalive_events_lost_total{stage="nested"}`
//! from each program's `recursion_misses`): a third level (a task preempted inside the primary
//! while another inside the twin, under heavy churn), and kprobe programs, which share one
//! per-CPU guard with every kprobe and classic tracepoint program (older kernels do not even
//! count those skips).
use aya_ebpf::{macros::map, maps::PerCpuArray};
pub use keepalive_common::{NEST_DONE, NEST_RESET, NEST_STATE};

use crate::state::count;

/// Per hook (`NEST_*`): 1 while the primary program runs on this CPU.
#[map]
static BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(keepalive_common::NEST_SLOTS, 0);

/// Per hook: runs the twin did in place of a skipped primary. The daemon subtracts them from
/// the primary's `recursion_misses`; what remains was lost and is counted as such.
#[map]
static RECOVERED: PerCpuArray<u64> = PerCpuArray::with_max_entries(keepalive_common::NEST_SLOTS, 0);

/// The primary program's body: `work` with this CPU's busy mark set around it.
#[inline(always)]
pub fn primary(slot: u32, work: impl FnOnce()) {
    let busy = BUSY.get_ptr_mut(slot);
    if let Some(b) = busy {
        unsafe { *b = 1 };
    }
    work();
    if let Some(b) = busy {
        unsafe { *b = 0 };
    }
}

/// The twin's body: `work` only if it interrupted the primary on this CPU.
#[inline(always)]
pub fn twin(slot: u32, work: impl FnOnce()) {
    let Some(b) = BUSY.get_ptr_mut(slot) else {
        return;
    };
    if unsafe { *b } == 0 {
        return;
    }
    if let Some(n) = RECOVERED.get_ptr_mut(slot) {
        count(n, 1);
    }
    work();
}
