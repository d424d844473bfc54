//! Boots one VM and captures its serial console, with a host-side watchdog: a guest that hangs
//! (a kernel oops, a stuck scenario) is killed at its deadline instead of stalling CI.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::kernels::Arch;
use crate::exec::display;

pub struct Boot<'a> {
    pub label: &'a str,
    pub arch: Arch,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub append: String,
    pub timeout: Duration,
    pub log: &'a Path,
    /// Echo every console line, not only the guest's own lines (those holding `marker`).
    pub verbose: bool,
    /// What the guest's own console lines start with: `kat: ` (vminit and the suite) or
    /// `bed: ` (the systemd test bed's script). The first one ends the boot time.
    pub marker: &'a str,
    pub memory_mib: u32,
    /// Raw disk images, attached as virtio disks in order (/dev/vda, /dev/vdb, …); `true`
    /// attaches one with `snapshot=on`, so the guest's writes never reach the file.
    pub drives: &'a [(&'a Path, bool)],
    /// Emulate both vCPUs on one host thread. Multi-threaded TCG sometimes loses a race with
    /// the guest kernel's own code patching (an int3 left in the text while another vCPU runs
    /// it: "Oops: int3" in sched_clock_tick at boot, in enqueue_timer as a tracepoint is
    /// detached); one thread cannot race with itself.
    pub single_thread_tcg: bool,
}

pub struct Console {
    pub lines: Vec<String>,
    pub timed_out: bool,
    /// From starting QEMU to the guest's first marked line: kernel boot plus module loading
    /// (or, in the systemd test bed, the whole boot to multi-user.target).
    pub boot: Option<Duration>,
    pub wall: Duration,
}

/// The serial console device the guest kernel writes to: the PC's 8250 UART, or the PL011 of
/// QEMU's arm64 `virt` board.
pub fn console(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "ttyS0",
        Arch::Arm64 => "ttyAMA0",
    }
}

pub fn boot(b: &Boot) -> Result<Console> {
    let program = match b.arch {
        Arch::X86_64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    };
    let mut cmd = Command::new(program);
    // KVM hangs on these machines (and cannot run arm64 on x86 anyway), so always TCG; -cpu max
    // gives the guest the newest CPU features TCG emulates.
    cmd.arg("-accel")
        .arg(if b.single_thread_tcg {
            "tcg,thread=single"
        } else {
            "tcg"
        })
        .args(["-smp", "2", "-m"])
        .arg(b.memory_mib.to_string());
    match b.arch {
        Arch::X86_64 => cmd.args(["-cpu", "max"]),
        // `virt` is QEMU's generic arm64 board (PL011 console, GIC, PSCI poweroff).
        // pauth-impdef: TCG's QARMA pointer authentication costs more than the rest of the
        // CPU emulation; the implementation-defined algorithm is as correct for the guest.
        Arch::Arm64 => cmd.args(["-M", "virt", "-cpu", "max,pauth-impdef=on"]),
    };
    cmd.arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initrd)
        .arg("-append")
        .arg(&b.append)
        .args(["-nographic", "-no-reboot"]);
    for (disk, snapshot) in b.drives {
        let mut spec = std::ffi::OsString::from("file=");
        spec.push(disk);
        spec.push(",format=raw,if=virtio");
        if *snapshot {
            spec.push(",snapshot=on");
        }
        cmd.arg("-drive").arg(spec);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("+ {}", display(&cmd));
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;

    let (tx, rx) = mpsc::channel();
    let readers = [
        spawn_reader(child.stdout.take().unwrap(), tx.clone()),
        spawn_reader(child.stderr.take().unwrap(), tx),
    ];
    let mut log =
        fs::File::create(b.log).with_context(|| format!("creating {}", b.log.display()))?;
    let deadline = start + b.timeout;
    let mut console = Console {
        lines: Vec::new(),
        timed_out: false,
        boot: None,
        wall: Duration::ZERO,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                // Host-side timestamps: the guest's own lines rarely carry any, and they show
                // where a slow TCG run spends its time.
                writeln!(log, "[{:8.3}] {line}", start.elapsed().as_secs_f64())?;
                let kat = line.find(b.marker).map(|i| &line[i..]);
                if kat.is_some() && console.boot.is_none() {
                    console.boot = Some(start.elapsed());
                }
                match kat {
                    Some(k) if !b.verbose => println!("[{}] {k}", b.label),
                    _ if b.verbose => println!("[{}] {line}", b.label),
                    _ => {}
                }
                console.lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                console.timed_out = true;
                let _ = child.kill();
                eprintln!(
                    "[{}] watchdog: no poweroff after {}s; killed QEMU. Last console lines:",
                    b.label,
                    b.timeout.as_secs()
                );
                let from = console.lines.len().saturating_sub(40);
                for line in &console.lines[from..] {
                    eprintln!("[{}] | {line}", b.label);
                }
                break;
            }
        }
    }
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    console.wall = start.elapsed();
    Ok(console)
}

/// The guest kernel's first panic or oops line when it died before vminit wrote anything:
/// a boot that failed in the emulator or the kernel, not in anything the suite runs.
pub fn panic_before_init(console: &Console) -> Option<String> {
    if console.boot.is_some() || console.timed_out {
        return None;
    }
    console
        .lines
        .iter()
        .find(|l| l.contains("Kernel panic") || l.contains("Oops:"))
        .map(|l| {
            l.trim_start_matches(|c: char| c != 'K' && c != 'O')
                .to_owned()
        })
}

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    tx: mpsc::Sender<String>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            // The serial console sends CRLF and, before the guest sets up its tty, stray escapes.
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .replace('\r', "");
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(lines: &[&str], boot: bool) -> Console {
        Console {
            lines: lines.iter().map(|l| l.to_string()).collect(),
            timed_out: false,
            boot: boot.then_some(Duration::from_secs(3)),
            wall: Duration::from_secs(7),
        }
    }

    #[test]
    fn only_a_panic_before_init_is_a_failed_boot() {
        let oops = [
            "SeaBIOS",
            "[    2.921321] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
        ];
        assert_eq!(
            panic_before_init(&console(&oops, false)).as_deref(),
            Some("Oops: int3: 0000 [#1] PREEMPT SMP NOPTI")
        );
        // Once vminit has spoken, a panic is the suite's finding and is not retried.
        assert_eq!(panic_before_init(&console(&oops, true)), None);
        assert_eq!(
            panic_before_init(&console(&["SeaBIOS", "reboot: Power down"], false)),
            None
        );
    }
}
