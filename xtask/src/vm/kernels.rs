//! The kernels the VM harness knows. Adding one is one line here.

pub struct Kernel {
    /// What `--kernel` takes and the matrix shows.
    pub name: &'static str,
    /// Debian suite to resolve the package from. A plain release name also pulls its -updates
    /// and -security suites, where kernel updates land; a name with a dash (such as
    /// `bookworm-backports`) is used alone.
    pub suite: &'static str,
    /// Metapackage whose Depends names the current `linux-image-<abi>-cloud-amd64`.
    pub metapackage: &'static str,
    /// Sanity check on the resolved upstream version, so a suite mix-up cannot go unnoticed.
    pub version_prefix: &'static str,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        suite: "bullseye",
        metapackage: "linux-image-cloud-amd64",
        version_prefix: "5.10.",
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
        metapackage: "linux-image-cloud-amd64",
        version_prefix: "6.1.",
    },
    Kernel {
        name: "6.12",
        suite: "trixie",
        metapackage: "linux-image-cloud-amd64",
        version_prefix: "6.12.",
    },
];

/// What `cargo xtask test` boots: the CI kernel.
pub const DEFAULT_KERNEL: &str = "6.1";

/// Every Debian kernel above supports all three; the daemon reports a refused mode itself.
pub const HOOK_MODES: &[&str] = &["fentry", "kprobe", "tracepoint"];

pub fn by_name(name: &str) -> anyhow::Result<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name).ok_or_else(|| {
        let known: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
        anyhow::anyhow!("unknown kernel {name:?}; known: {}", known.join(", "))
    })
}
