//! Installs the prerequisites a fresh machine lacks. Every step first checks cheaply whether it
//! is needed, so a second run does nothing and takes well under a second.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::exec::{exec, find_binary, output, privileged, succeeds};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// arm64 servers and the arm64 VM: cross-built, static.
pub const ARM64_TARGET: &str = "aarch64-unknown-linux-musl";
/// The cross linker and C compiler for ARM64_TARGET (Debian's gcc-aarch64-linux-gnu).
pub const ARM64_CC: &str = "aarch64-linux-gnu-gcc";

/// Debian packages by the binary (a name looked up on PATH, or an absolute path) that proves
/// each present. Installed only when the binary is
/// missing, so hand-installed or newer tools are left alone.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("nstat", "iproute2"),
    ("bpftool", "bpftool"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    // The arm64 guest (TCG) and the cross toolchain for its static binaries.
    ("qemu-system-aarch64", "qemu-system-arm"),
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    // Its C library headers (a recommendation only, so not pulled in with the compiler):
    // ring's C parts include <stdint.h>, which needs the target's bits/ headers.
    (
        "/usr/aarch64-linux-gnu/include/bits/libc-header-start.h",
        "libc6-dev-arm64-cross",
    ),
    ("promtool", "prometheus"),
    // Third-party clients whose keepalive settings the suite checks (host and VM alike).
    ("socat", "socat"),
    ("redis-server", "redis-server"),
    ("curl", "curl"),
    // Debian's own interpreter, not whatever python3 comes first on PATH (e.g. a pyenv shim).
    ("/usr/bin/python3", "python3"),
    // A forking server for the owner scenario (owner-postgres): server and psql.
    ("pg_ctlcluster", "postgresql"),
    ("psql", "postgresql-client"),
    ("dpkg-deb", "dpkg"),
    // The systemd test bed (cargo xtask bed): its Debian root file system, packed into an ext4
    // image and read back without a loop mount.
    ("mmdebstrap", "mmdebstrap"),
    ("mke2fs", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    // The service tests and deploy checks: unit analysis, TLS clients, syscall tracing,
    // capability juggling, package metadata.
    ("systemd-analyze", "systemd"),
    ("openssl", "openssl"),
    ("strace", "strace"),
    ("setpriv", "util-linux"),
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("strip", "binutils"),
    // The musl target links through the system C compiler; crates with C parts (ring, under
    // rustls) need musl's own headers and wrapper for the static build.
    ("cc", "gcc"),
    ("musl-gcc", "musl-tools"),
    // The container image (cargo xtask image): read back with skopeo, run with podman. runc
    // rather than podman's default crun: crun refuses hosts whose cgroup v2 hierarchy has a
    // controller while v1 is mounted too ("cgroups in hybrid mode not supported"), like the
    // development host. nsenter reaches the container's own network namespace for the scrape.
    ("skopeo", "skopeo"),
    ("podman", "podman"),
    ("runc", "runc"),
    ("nsenter", "util-linux"),
];

/// The Kubernetes schema validator, pinned: its bundled schemas (1.25 to 1.37 for 1.37.0) are
/// what deploy/kubernetes is checked against. Installed into a venv of Debian's python3 under
/// target/, never into a system or user site.
pub const KUBERNETES_VALIDATE: &str = "1.37.0";
pub const VENV: &str = "target/python";

#[derive(clap::Parser)]
pub struct Options {
    /// Only the Rust toolchain parts (nightly rust-src, bpf-linker, musl target).
    #[arg(long)]
    pub toolchain_only: bool,
}

pub fn run(opts: Options) -> Result<()> {
    toolchain()?;
    if !opts.toolchain_only {
        debian_packages()?;
        kubernetes_validate()?;
    }
    Ok(())
}

/// Everything `cargo build` of the daemon needs: aya-build compiles the eBPF crate with nightly's
/// `-Z build-std`, which needs rust-src, and links it with bpf-linker.
pub fn toolchain() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("setup: installing the nightly Rust toolchain (the eBPF crate needs it)");
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: installing rust-src for nightly (needed by -Z build-std for BPF)");
        exec(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    for target in [MUSL_TARGET, ARM64_TARGET] {
        if !targets.lines().any(|l| l.trim() == target) {
            eprintln!(
                "setup: installing the {target} target (static binaries for the VM initramfs)"
            );
            exec(Command::new("rustup").args(["target", "add", target]))?;
        }
    }
    bpf_linker()
}

fn bpf_linker() -> Result<()> {
    // bpf-linker links against nightly's libLLVM, which only `rustup run nightly` puts on the
    // library path (that is also how cargo +nightly runs it). A nightly update that changes the
    // library's soname breaks the old binary: this probe catches that too, and we rebuild.
    if succeeds(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"])) {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let verbose = output(Command::new("rustc").args(["+nightly", "--version", "--verbose"]))?;
    let llvm_major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly does not report its LLVM version")?
        .to_owned();
    let libllvm = fs::read_dir(&sysroot_lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{llvm_major}")))
        })
        .with_context(|| format!("no libLLVM.so.{llvm_major}* in {}", sysroot_lib.display()))?;

    // llvm-sys looks for <prefix>/lib/libLLVM.so; nightly ships only the versioned name.
    let prefix = std::env::current_dir()?.join("target/llvm-prefix");
    let link = prefix.join("lib/libLLVM.so");
    fs::create_dir_all(prefix.join("lib"))?;
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;

    eprintln!("setup: building bpf-linker against nightly's LLVM {llvm_major} (a few minutes)");
    exec(
        Command::new("cargo")
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !succeeds(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"])) {
        bail!("bpf-linker was installed but `rustup run nightly bpf-linker --version` still fails");
    }
    Ok(())
}

/// A binary on PATH, or a file named by its absolute path (a header proves a -dev package).
fn present(what: &str) -> bool {
    if what.starts_with('/') {
        return Path::new(what).is_file();
    }
    find_binary(what).is_some()
}

pub fn debian_packages() -> Result<()> {
    install_missing("setup", DEBIAN_PACKAGES)
}

/// Installs the packages of `table` whose proving binary or file is missing; `who` names the
/// task in the log line.
pub fn install_missing(who: &str, table: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = table
        .iter()
        .filter(|(bin, _)| !present(bin))
        .map(|&(_, pkg)| pkg)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("{who}: installing Debian packages: {}", missing.join(" "));
    exec(privileged("apt-get").arg("update").arg("-q"))?;
    exec(
        privileged("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The venv's kubernetes-validate, at the pinned version; returns its path. A second run only
/// asks the installed one for its version.
pub fn kubernetes_validate() -> Result<std::path::PathBuf> {
    let bin = Path::new(VENV).join("bin/kubernetes-validate");
    let installed = output(Command::new(&bin).arg("--version")).unwrap_or_default();
    if installed.trim() == KUBERNETES_VALIDATE {
        return Ok(bin);
    }
    install_missing("setup", &[("/usr/bin/python3", "python3")])?;
    // Debian splits the venv module's pip bootstrap (ensurepip) into python3-venv; no file
    // path proves it across Python versions, importing it does.
    if !succeeds(Command::new("/usr/bin/python3").args(["-c", "import ensurepip, venv"])) {
        eprintln!("setup: installing python3-venv (Debian's python3 has no ensurepip)");
        exec(privileged("apt-get").arg("update").arg("-q"))?;
        exec(
            privileged("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "python3-venv",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    eprintln!("setup: installing kubernetes-validate {KUBERNETES_VALIDATE} into {VENV}");
    // Debian's interpreter by absolute path: a pyenv shim first on PATH would make a venv of
    // another Python that a fresh machine does not have.
    exec(Command::new("/usr/bin/python3").args(["-m", "venv", "--clear", VENV]))?;
    exec(
        Command::new(Path::new(VENV).join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE}")),
    )?;
    let got = output(Command::new(&bin).arg("--version"))?;
    if got.trim() != KUBERNETES_VALIDATE {
        bail!(
            "{} reports version {:?}, not {KUBERNETES_VALIDATE}",
            bin.display(),
            got.trim()
        );
    }
    Ok(bin)
}
