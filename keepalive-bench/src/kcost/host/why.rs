//! Why the programs cost what they cost: the explanation under section 1's tables, each claim
//! quoted with a ratio or a cost measured in the same run (the reference filters make the
//! comparisons a proposed fix would need), so the text cannot drift from the figures.
use super::{Measured, Window, hooks};
use crate::{
    kcost::stats::{per_run, ratio},
    report::{Report, num},
};

/// What the explanation of the misses quotes, measured in this run.
pub(super) struct Why {
    /// The tp_btf timer pair was attached (else the raw one).
    btf: bool,
    entry: f64,
    helper_filter: f64,
    btf_filter: f64,
    enter_sso: f64,
    direct_sso: f64,
    exit_sso: f64,
    tmr_exit: f64,
    helper_read_ns: f64,
    btf_read_ns: f64,
    /// Storm ns/run of exit_setsockopt, exit_accept, set_state, timer exit.
    emit_ns: [f64; 4],
}

impl Why {
    pub(super) fn new(m: &Measured) -> Why {
        let (noisy, busy) = (&m.noisy, &m.busy);
        // Ratios and costs the explanation quotes.
        let rn = |a: &str, b: &str| match (m.id(a), m.id(b)) {
            (Some(a), Some(b)) => ratio(noisy, &a, &b),
            _ => f64::NAN,
        };
        let dn = |ws: &[Window], a: &str| m.id(a).map_or(f64::NAN, |a| per_run(ws, &a));
        let (btf, t_entry, t_exit) = hooks::attached_timer_pair(&m.names);
        Why {
            btf,
            entry: rn(t_entry, "empty_tmr_entry"),
            helper_filter: rn("filter_tmr_entry", "empty_tmr_entry"),
            btf_filter: rn("btf_filter_entry", "btf_tmr_entry"),
            enter_sso: rn("ka_sys_enter_setsockopt", "empty_enter_sso"),
            direct_sso: rn("direct_enter_sso", "empty_enter_sso"),
            exit_sso: rn("ka_sys_exit_setsockopt", "empty_exit_sso"),
            tmr_exit: rn(t_exit, "empty_tmr_exit"),
            helper_read_ns: dn(noisy, "filter_tmr_entry") - dn(noisy, "empty_tmr_entry"),
            btf_read_ns: dn(noisy, "btf_filter_entry") - dn(noisy, "btf_tmr_entry"),
            emit_ns: [
                "ka_sys_exit_setsockopt",
                "ka_sys_exit_accept",
                "ka_inet_sock_set_state",
                t_exit,
            ]
            .map(|n| dn(busy, n)),
        }
    }

    pub(super) fn write(&self, r: &mut Report) {
        let x = |v: f64| format!("{}×", num(v));
        let over = |v: f64| if v > 1.5 { " — still over 1.5×" } else { "" };
        let fallback = if self.btf {
            ""
        } else {
            " **This run's kernel refused the tp_btf pair, so the raw tracepoints were measured.**"
        };
        r.p(&format!(
            "**The common path, and what the programs do for it** (ratios from the noise windows above):{fallback}\n\n\
             1. timer entry ({}{}): on the tracepoint rung the daemon attaches `ka_btf_timer_expire_entry`, a BTF \
             tracepoint: the verifier knows its argument is a `struct timer_list *`, so `timer->function` is a plain \
             load (the offset, from BTF, is a constant in `.rodata`). The raw tracepoint `ka_timer_expire_entry`, the \
             fallback for kernels that refuse tp_btf, needs a `bpf_probe_read_kernel` call for it: the bare filter \
             written that way costs {} its empty twin, written as a plain load {}.\n\
             2. `ka_sys_enter_setsockopt` ({}{}): reads the record's fields as context loads at the fixed offsets \
             syscall records have (the format files' offsets select them) instead of one `bpf_probe_read_kernel` \
             per field; `direct_enter_sso`, the bare filter written that way: {}.\n\
             3. `ka_sys_exit_setsockopt` ({}{}): returns while a one-slot count of keepalive setsockopt calls in flight \
             is zero (an inlined array read) instead of looking every thread up in the `SETSOCKOPT` hash.\n\
             4. timer exit ({}{}): returns while a one-slot count of keepalive timer runs in progress is zero, before \
             the per-CPU lookup (a helper call, and a cache miss when timers are sparse).\n\n\
             The empty programs cost 80–100 ns a run on these hooks, so 1.5× leaves 40–50 ns for any filter: one \
             helper call or one cold cache line is most of it. Where a ratio is over 1.5×, the table's last column \
             gives the excess.",
            x(self.entry), over(self.entry), x(self.helper_filter), x(self.btf_filter),
            x(self.enter_sso), over(self.enter_sso), x(self.direct_sso),
            x(self.exit_sso), over(self.exit_sso), x(self.tmr_exit), over(self.tmr_exit)
        ));
        let [sso, accept, state, exit] = self.emit_ns;
        r.p(&format!(
            "**Event path.** An emitted event costs {}–{} µs in the kernel here (`ka_sys_exit_setsockopt` {} µs, \
             `ka_sys_exit_accept` {} µs, `ka_inet_sock_set_state` {} µs, timer exit {} µs per run). Two \
             causes: (a) reading the socket: each event copies the socket's first `sock_span` bytes (about 2.2 KB, \
             the span from BTF) with one `bpf_probe_read_kernel` into a per-CPU buffer and takes its fields from there \
             (`keepalive-ebpf/src/sock.rs`), where it made about 30 helper calls of ≈ {} ns each on this machine \
             (bare filter minus empty program; a BTF load costs ≈ {} ns). What remains is that copy and its cache \
             misses, and on the syscall hooks the reads that turn a descriptor into its socket; BTF-typed programs \
             with direct loads (tp_btf for the timer, state and reset hooks, `bpf_get_current_task_btf()` for the \
             syscall ones, with the raw programs kept for kernels that refuse them) are the next step; (b) the wake-up of the daemon: a default ring-buffer submit \
             wakes it whenever the ring was empty — an irq_work self-IPI (a VM exit here) and a scheduler wake-up, paid \
             inside the program. The programs now submit with BPF_RB_NO_WAKEUP unless 5 ms passed since the last \
             wake-up or the ring is a quarter full (`keepalive-ebpf/src/emit.rs`; 1 ms until issue 17 cost the timer exit \
             ≈ 250 ns more per event in this storm), and the daemon drains the ring on a \
             2 ms tick for 6 ms after the last record it found (`keepalive-daemon/src/pipeline/event_loop.rs`): an event waits about 2 ms at most. \
             Runs that send nothing make no event (a timer that only re-armed, a setsockopt that sets the value the socket \
             already has). Measured once against a build without it \
             (a scratch comparison, not by `cargo xtask bench`): ns per run in the storm `ka_sys_exit_setsockopt` \
             6028 → 2271, `ka_sys_exit_accept` 6746 → 2421, `ka_inet_sock_set_state` 4455 → 2778; all programs \
             together 96 → 65 ms of CPU per second of storm.",
            num(self.emit_ns.iter().copied().fold(f64::INFINITY, f64::min) / 1e3),
            num(self.emit_ns.iter().copied().fold(0.0, f64::max) / 1e3),
            num(sso / 1e3),
            num(accept / 1e3),
            num(state / 1e3),
            num(exit / 1e3),
            num(self.helper_read_ns),
            num(self.btf_read_ns.max(0.0)),
        ));
    }
}
