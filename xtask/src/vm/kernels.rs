//! The kernels the VM harness knows. Adding one is one line here.

/// The guest's machine: which Debian architecture its packages come from, which QEMU runs it
/// and which static Rust target its binaries are built for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    /// Debian's name, as in `linux-image-cloud-<debian>` and `apt -o APT::Architecture`.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

pub struct Kernel {
    /// What `--kernel` takes and the matrix shows.
    pub name: &'static str,
    pub arch: Arch,
    /// Debian suite to resolve the package from. A plain release name also pulls its -updates
    /// and -security suites, where kernel updates land; a name with a dash (such as
    /// `bookworm-backports`) and `sid`, which has neither, are used alone.
    pub suite: &'static str,
    /// Metapackage whose Depends names the current `linux-image-<abi>-cloud-<arch>`.
    pub metapackage: &'static str,
    /// Sanity check on the resolved upstream version, so a suite mix-up cannot go unnoticed.
    pub version_prefix: &'static str,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        arch: Arch::X86_64,
        suite: "bullseye",
        metapackage: "linux-image-cloud-amd64",
        version_prefix: "5.10.",
    },
    Kernel {
        name: "6.1",
        arch: Arch::X86_64,
        suite: "bookworm",
        metapackage: "linux-image-cloud-amd64",
        version_prefix: "6.1.",
    },
    Kernel {
        name: "6.12",
        arch: Arch::X86_64,
        suite: "trixie",
        metapackage: "linux-image-cloud-amd64",
        version_prefix: "6.12.",
    },
    // From 7.x the image package is empty and depends on linux-binary/-modules/-base-<abi>
    // (apt.rs follows them).
    Kernel {
        name: "7.2",
        arch: Arch::X86_64,
        suite: "sid",
        metapackage: "linux-image-cloud-amd64",
        version_prefix: "7.2.",
    },
    Kernel {
        name: "7.3",
        arch: Arch::X86_64,
        suite: "trixie-backports",
        metapackage: "linux-image-cloud-amd64",
        version_prefix: "7.3.",
    },
    // Graviton-class servers; runs under qemu-system-aarch64 with TCG, about as fast as the x86_64
    // guest here (5 s boot, 342–356 s a mode on 2026-12-04).
    Kernel {
        name: "6.12-arm64",
        arch: Arch::Arm64,
        suite: "trixie",
        metapackage: "linux-image-cloud-arm64",
        version_prefix: "6.12.",
    },
];

/// What `cargo xtask test` and a plain `cargo xtask vm` boot: the CI kernel. 6.12 because it
/// is what most servers that install this daemon now run: Debian 13's kernel (and RHEL 10's
/// base), a long-term kernel with `tcp_done_with_error` native rather than backported; it
/// boots and runs the suite as fast as 6.1 under TCG (5 s boot, 320–430 s a mode, about 25 min
/// for the four).
/// 7.x stays out of the default: backports change ABI every few weeks, so a CI run would
/// download a new kernel each time.
pub const DEFAULT_KERNEL: &str = "6.12";

/// What `cargo xtask bench` measures the kernel cost on: kept at 6.1 so BENCHMARKS.md stays
/// comparable with its earlier runs.
pub const BENCH_KERNEL: &str = "6.1";

/// The three forced modes, then `auto`, the default users run: its column shows which rung
/// each hook ended up on, and any rung the kernel refused, with the reason. Every Debian kernel
/// above supports the three; the daemon reports a refused mode itself.
pub const HOOK_MODES: &[&str] = &["fentry", "kprobe", "tracepoint", "auto"];

pub fn by_name(name: &str) -> anyhow::Result<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name).ok_or_else(|| {
        let known: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
        anyhow::anyhow!("unknown kernel {name:?}; known: {}", known.join(", "))
    })
}
