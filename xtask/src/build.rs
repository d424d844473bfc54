use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::{exec::exec, setup};

#[derive(clap::Parser, Default)]
pub struct Options {
    /// Optimised build (target/release).
    #[arg(long)]
    pub release: bool,
    /// Static binaries for x86_64-unknown-linux-musl, including keepalive-vminit: what the VM
    /// initramfs is made of.
    #[arg(long)]
    pub musl: bool,
    /// With --musl: static binaries for aarch64-unknown-linux-musl instead, cross-built with
    /// Debian's aarch64 gcc as the linker (arm64 servers, the arm64 VM and .deb).
    #[arg(long, requires = "musl")]
    pub arm64: bool,
}

impl Options {
    /// The --target of a static build.
    pub fn musl_target(&self) -> &'static str {
        if self.arm64 {
            setup::ARM64_TARGET
        } else {
            setup::MUSL_TARGET
        }
    }
}

pub fn run(opts: Options) -> Result<()> {
    setup::toolchain()?;
    build(&opts)
}

/// Builds without the setup step; callers that already ran setup use this.
pub fn build(opts: &Options) -> Result<()> {
    // The eBPF crate is not listed: the daemon's build script compiles it through aya-build.
    let mut packages = vec!["keepalive-daemon", "keepalive-scenarios"];
    if opts.musl {
        packages.push("keepalive-vminit");
    }
    build_packages(opts, &packages)
}

pub fn build_packages(opts: &Options, packages: &[&str]) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.arg("build");
    for p in packages {
        cmd.args(["-p", p]);
    }
    if opts.release {
        cmd.arg("--release");
    }
    if opts.musl {
        cmd.args(["--target", opts.musl_target()]);
    }
    if opts.musl && opts.arm64 {
        // Rust links musl's own crt and libc.a (self-contained); only the linker driver and
        // the C compiler for crates with C parts (ring) come from the cross toolchain. The
        // eBPF object needs nothing: aya-build compiles it for this target's pt_regs layout.
        cmd.env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER",
            setup::ARM64_CC,
        )
        .env("CC_aarch64_unknown_linux_musl", setup::ARM64_CC)
        .env("AR_aarch64_unknown_linux_musl", "aarch64-linux-gnu-ar");
    }
    exec(&mut cmd)
}

/// Where `build` leaves a binary.
pub fn binary(opts: &Options, name: &str) -> PathBuf {
    let mut dir = PathBuf::from("target");
    if opts.musl {
        dir.push(opts.musl_target());
    }
    dir.push(if opts.release { "release" } else { "debug" });
    dir.join(name)
}
