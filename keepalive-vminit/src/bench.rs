//! `kat.bench=1`: instead of the scenario suite, each hook mode runs the kernel-cost
//! measurement of the fentry and kprobe rungs (`cargo xtask bench`, section 1b). Its
//! `kcost-vm …` lines reach the console with the usual `kat: kernel=R mode=M ` prefix.

pub const BENCH_BIN: &str = "/bin/keepalive-bench";

/// The bench's command line for one hook mode; the daemon is forced to that mode.
pub fn args(mode: &str) -> Vec<String> {
    [
        "kcost-vm",
        "--daemon",
        "/bin/keepalive-daemon",
        "--hook-mode",
        mode,
    ]
    .map(String::from)
    .to_vec()
}

#[cfg(test)]
mod tests {
    #[test]
    fn forces_the_mode() {
        assert_eq!(super::args("kprobe")[3..], ["--hook-mode", "kprobe"]);
    }
}
