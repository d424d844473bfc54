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
        cmd.args(["--target", setup::MUSL_TARGET]);
    }
    exec(&mut cmd)
}

/// Where `build` leaves a binary.
pub fn binary(opts: &Options, name: &str) -> PathBuf {
    let mut dir = PathBuf::from("target");
    if opts.musl {
        dir.push(setup::MUSL_TARGET);
    }
    dir.push(if opts.release { "release" } else { "debug" });
    dir.join(name)
}
