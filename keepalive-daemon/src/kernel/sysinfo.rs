//! Facts about the running kernel that BTF does not carry: HZ, and whether we may load
//! programs. The timer callback's address is measured instead (calibrate.rs).
use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use crate::error::{Error, Result};

/// Loading tracing programs needs CAP_BPF + CAP_PERFMON (5.8+) or CAP_SYS_ADMIN; checked up
/// front so a missing capability is named as such, not as an EPERM from some map creation.
pub fn check_privileges() -> Result<()> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = fs::read_to_string("/proc/self/status").map_err(|source| Error::Io {
        path: "/proc/self/status".into(),
        source,
    })?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(Error::Privileges)
    }
}

/// Kernel HZ, to turn the jiffies stored in sockets into seconds. The kernel config says it;
/// without one (minimal VMs, custom kernels) it is measured from /proc/timer_list.
pub fn hz() -> Result<u32> {
    if let Some(hz) = config_text().as_deref().and_then(config_hz) {
        return Ok(hz);
    }
    measure_hz()
}

fn config_text() -> Option<String> {
    if let Ok(file) = fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .is_ok()
        {
            return Some(text);
        }
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let path = PathBuf::from(format!("/boot/config-{}", release.trim()));
    fs::read_to_string(path).ok()
}

fn config_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

fn measure_hz() -> Result<u32> {
    let path = Path::new("/proc/timer_list");
    let sample = || -> Result<(u64, u64)> {
        let text = fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        timer_list_sample(&text).ok_or_else(|| Error::Config("cannot determine kernel HZ".into()))
    };
    let (ns0, j0) = sample()?;
    if let Some(hz) = hz_since_boot(ns0, j0) {
        return Ok(hz);
    }
    // Two samples a whole second apart: each sample's clock and jiffies are read some way
    // apart in the file, and a busy machine can stall the read in between (tens of ms under
    // TCG with the host loaded). Over 200 ms that skew made a 250 Hz arm64 guest measure 300;
    // over 1 s it stays well inside the 10 % between 250 and 300.
    let (ns0, j0) = sample()?;
    thread::sleep(Duration::from_secs(1));
    let (ns1, j1) = sample()?;
    let measured = (j1 - j0) as f64 * 1e9 / (ns1 - ns0).max(1) as f64;
    Ok(nearest_hz(measured))
}

/// HZ from one sample: jiffies start at `INITIAL_JIFFIES` (2^32 − 300 × HZ) at boot, when the
/// monotonic clock starts at 0, so `jiffies ≈ 2^32 + (uptime − 300) × HZ`. The candidates are
/// tens of thousands of jiffies apart, while the sample's own skew (its `jiffies:` line is
/// printed well after its `now at` stamp: 100+ ms under QEMU's TCG, where a 200 ms two-sample
/// window measured 100 for HZ=250) is a few hundred at most. `None` when no candidate fits
/// within 10 s (a kernel that starts jiffies elsewhere), or when more than one fits: around
/// 300 s of uptime every HZ expects about 2^32 (the VM suite's second daemon started at 303 s
/// of a 250 Hz guest and read HZ 100), and the two-sample measurement decides instead.
fn hz_since_boot(ns: u64, jiffies: u64) -> Option<u32> {
    let mut fitting = [100u32, 250, 300, 1000].into_iter().filter(|&hz| {
        let h = i128::from(hz);
        let want = (1i128 << 32) - 300 * h + i128::from(ns) * h / 1_000_000_000;
        (i128::from(jiffies) - want).abs() < 10 * h
    });
    match (fitting.next(), fitting.next()) {
        (Some(hz), None) => Some(hz),
        _ => None,
    }
}

/// `now at <ns> nsecs` and the first `jiffies: <n>` of /proc/timer_list.
fn timer_list_sample(text: &str) -> Option<(u64, u64)> {
    let ns = text.lines().find_map(|l| {
        l.strip_prefix("now at ")?
            .strip_suffix(" nsecs")?
            .parse()
            .ok()
    })?;
    let jiffies = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies: ")?.parse().ok())?;
    Some((ns, jiffies))
}

fn nearest_hz(measured: f64) -> u32 {
    [100u32, 250, 300, 1000]
        .into_iter()
        .min_by(|a, b| {
            let da = (*a as f64 - measured).abs();
            let db = (*b as f64 - measured).abs();
            da.total_cmp(&db)
        })
        .unwrap_or(250)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hz_from_one_sample_since_boot() {
        // Read on the 6.18 host (HZ=250) 81 minutes after boot, and a made-up 6 s old guest.
        assert_eq!(hz_since_boot(4_879_384_504_827, 4_296_112_081), Some(250));
        let guest = |hz: u64, s: u64| (1u64 << 32) - 300 * hz + s * hz;
        for hz in [100u32, 250, 300, 1000] {
            assert_eq!(
                hz_since_boot(6_000_000_000, guest(u64::from(hz), 6) + 30),
                Some(hz)
            );
        }
        assert_eq!(hz_since_boot(6_000_000_000, 12_345), None);
        // At 303 s of uptime a 250 Hz guest's jiffies fit 100 Hz as well: no answer, measure.
        let at_303 = guest(250, 303);
        assert_eq!(hz_since_boot(303_000_000_000, at_303), None);
        assert_eq!(hz_since_boot(400_000_000_000, guest(250, 400)), Some(250));
    }

    /// On the real kernel: the config and the clock must agree on HZ.
    #[test]
    fn config_and_measurement_agree() {
        let Some(config) = config_text() else { return };
        let from_config = config_hz(&config).expect("CONFIG_HZ in config");
        if Path::new("/proc/timer_list").exists() {
            assert_eq!(measure_hz().expect("measure"), from_config);
        }
    }
}
