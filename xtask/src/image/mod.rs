//! `cargo xtask image`: the daemon as an OCI image, written without a container daemon or
//! builder (layout.rs), then read back with skopeo (inspect.rs) and, with `--run`, started
//! under podman the way the Kubernetes DaemonSet starts it (podman.rs).
//!
//! The image is one layer: the static musl daemon at /usr/bin/keepalive-daemon and the
//! commented default config at /etc/keepalive-daemon/config.toml (which keeps the daemon on
//! loopback: a container runtime or the DaemonSet's ConfigMap decides where it listens, see
//! docs/kubernetes.md). Nothing else: no shell, no libc, no package manager to patch.
mod inspect;
mod layout;
mod pod_flags;
pub mod podman;

use std::{collections::BTreeMap, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use crate::{
    build,
    exec::{exec, output},
    package, setup,
};
pub use layout::Written;

/// Where the layout goes; `oci:target/oci/keepalive-daemon:<tag>` names an image in it.
pub const LAYOUT: &str = "target/oci/keepalive-daemon";
pub const BINARY: &str = "/usr/bin/keepalive-daemon";
pub const CONFIG: &str = "/etc/keepalive-daemon/config.toml";
/// The daemon's default port; what the image declares and the DaemonSet serves on.
pub const PORT: u16 = 19180;

/// Tools the image task uses, by the binary that proves each present (see setup.rs).
const TOOLS: &[(&str, &str)] = &[("skopeo", "skopeo"), ("strip", "binutils")];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Registries and runtimes match arm64 images by variant too.
    fn variant(self) -> Option<&'static str> {
        (self == Arch::Arm64).then_some("v8")
    }

    fn build(self) -> build::Options {
        build::Options {
            release: true,
            musl: true,
            arm64: self == Arch::Arm64,
        }
    }

    fn strip(self) -> &'static str {
        match self {
            Arch::Amd64 => "strip",
            Arch::Arm64 => "aarch64-linux-gnu-strip",
        }
    }
}

#[derive(clap::Parser)]
pub struct Options {
    /// Platform (repeatable): amd64 (the default) and/or arm64 (the cross-built static daemon).
    /// Each is tagged <version>-<arch>; the tag <version> is the index of all of them.
    #[arg(long = "arch", value_enum, value_name = "ARCH")]
    pub arches: Vec<Arch>,
    /// Then run the image under podman on this host as the DaemonSet runs it (capabilities,
    /// host PID namespace, mounts), scrape it and check that stopping it detaches everything.
    #[arg(long)]
    pub run: bool,
}

/// A written and checked layout.
pub struct Built {
    pub dir: PathBuf,
    pub version: String,
    pub images: Vec<Written>,
    /// The index of every platform's image, tagged `<version>`.
    pub index: layout::Descriptor,
    pub labels: BTreeMap<String, String>,
    pub created: String,
    pub archive: PathBuf,
}

impl Built {
    /// `oci:<dir>:<tag>` of one platform's image.
    pub fn reference(&self, w: &Written) -> String {
        format!(
            "oci:{}:{}-{}",
            self.dir.display(),
            self.version,
            w.architecture
        )
    }
}

pub fn run(opts: Options) -> Result<()> {
    let built = build_and_inspect(&opts.arches)?;
    if opts.run {
        let host = built
            .images
            .iter()
            .find(|w| w.architecture == Arch::Amd64.name())
            .context("--run needs the amd64 image (this host's platform)")?;
        match podman::check(&built, host)? {
            podman::Outcome::Passed(summary) => println!("podman run: {summary}"),
            podman::Outcome::Skipped(reason) => {
                bail!("cannot run containers on this host: {reason}")
            }
        }
    }
    println!("{}", built.dir.display());
    println!("{}", built.archive.display());
    Ok(())
}

/// Builds the static daemon for each platform, writes the layout and the oci-archive, and
/// checks both with skopeo.
pub fn build_and_inspect(arches: &[Arch]) -> Result<Built> {
    let mut arches = arches.to_vec();
    if arches.is_empty() {
        arches.push(Arch::Amd64);
    }
    arches.sort_by_key(|a| *a as u8);
    arches.dedup();
    setup::toolchain()?;
    let mut tools = TOOLS.to_vec();
    if arches.contains(&Arch::Arm64) {
        tools.push(("aarch64-linux-gnu-strip", "binutils-aarch64-linux-gnu"));
    }
    setup::install_missing("image", &tools)?;

    let version = package::workspace_field("version")?;
    let epoch = source_date_epoch()?;
    let labels = labels(&version, epoch)?;
    let dir = PathBuf::from(LAYOUT);
    let mut l = layout::Layout::create(&dir)?;
    let mut images = Vec::new();
    for arch in &arches {
        let binary = stripped_binary(*arch)?;
        let image = layout::Image {
            architecture: arch.name(),
            variant: arch.variant(),
            files: vec![
                layout::File {
                    path: BINARY.trim_start_matches('/').into(),
                    bytes: binary,
                    mode: 0o755,
                },
                layout::File {
                    path: CONFIG.trim_start_matches('/').into(),
                    bytes: fs::read("deploy/config.toml").context("reading deploy/config.toml")?,
                    mode: 0o644,
                },
            ],
            config: image_config(&labels),
            epoch,
            annotations: labels.clone(),
        };
        images.push(l.add_image(&image, &format!("{version}-{}", arch.name()))?);
    }
    let members: Vec<_> = images
        .iter()
        .zip(&arches)
        .map(|(w, a)| (w, a.variant()))
        .collect();
    let index = l.add_index(&members, &version)?;
    let dir = l.finish()?;
    let archive = PathBuf::from(format!("target/oci/keepalive-daemon-{version}.oci.tar"));
    layout::archive(&dir, &archive, epoch)?;
    let built = Built {
        dir,
        version,
        images,
        index,
        created: layout::rfc3339(epoch),
        labels,
        archive,
    };
    inspect::check(&built)?;
    for w in &built.images {
        eprintln!(
            "image: {} = {} (layer {} bytes)",
            built.reference(w),
            w.manifest.digest,
            w.layer.size
        );
    }
    Ok(built)
}

/// The image config's `config`: what a runtime runs when nothing overrides it.
pub fn image_config(labels: &BTreeMap<String, String>) -> serde_json::Value {
    json!({
        // Root, and the DaemonSet says so too: the capabilities a container is given are only
        // effective for uid 0 (Kubernetes sets no ambient capabilities for other users).
        "User": "0:0",
        "Env": ["PATH=/usr/bin"],
        "Entrypoint": [BINARY],
        "Cmd": [format!("--config.file={CONFIG}")],
        "WorkingDir": "/",
        "ExposedPorts": { format!("{PORT}/tcp"): {} },
        // The daemon detaches every program on SIGTERM, within a second.
        "StopSignal": "SIGTERM",
        "Labels": labels,
    })
}

/// The build's time: SOURCE_DATE_EPOCH when set (reproducible-builds.org), else the commit's.
fn source_date_epoch() -> Result<u64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"));
    }
    let t = output(Command::new("git").args(["log", "-1", "--format=%ct", "HEAD"]))
        .context("no git commit to date the image from: set SOURCE_DATE_EPOCH")?;
    t.trim()
        .parse()
        .with_context(|| format!("git log printed {t:?} for the commit time"))
}

fn labels(version: &str, epoch: u64) -> Result<BTreeMap<String, String>> {
    let head = output(Command::new("git").args(["rev-parse", "HEAD"]))
        .context("the image's revision label needs git")?;
    // Uncommitted changes to tracked files make the image something no commit describes.
    let dirty =
        !output(Command::new("git").args(["status", "--porcelain", "--untracked-files=no"]))?
            .trim()
            .is_empty();
    let revision = format!("{}{}", head.trim(), if dirty { "-dirty" } else { "" });
    let l = [
        ("title", "keepalive-daemon".to_string()),
        (
            "description",
            "TCP keepalive observer (eBPF) with a Prometheus exporter".into(),
        ),
        ("version", version.into()),
        ("revision", revision),
        ("source", package::workspace_field("repository")?),
        ("licenses", package::workspace_field("license")?),
        ("created", layout::rfc3339(epoch)),
    ];
    Ok(l.into_iter()
        .map(|(k, v)| (format!("org.opencontainers.image.{k}"), v))
        .collect())
}

/// The static daemon for `arch`, built if needed and stripped (debug info stays in the build
/// tree, as for the .deb).
fn stripped_binary(arch: Arch) -> Result<Vec<u8>> {
    let opts = arch.build();
    // The VM initramfs's package set: cargo unifies features per invocation, so after
    // `cargo xtask vm` (and in `cargo xtask test`, which boots the VM first) this builds nothing.
    build::build(&opts)?;
    let built = build::binary(&opts, package::PACKAGE);
    let stage = PathBuf::from("target/oci/stage").join(arch.name());
    fs::create_dir_all(&stage)?;
    let copy = stage.join(package::PACKAGE);
    fs::copy(&built, &copy).with_context(|| format!("copying {}", built.display()))?;
    exec(
        Command::new(arch.strip())
            .arg("--strip-unneeded")
            .arg(&copy),
    )?;
    let bytes = fs::read(&copy)?;
    // The image has no libc and no loader: a dynamically linked daemon could not start.
    if elf_interpreter(&bytes)? {
        bail!(
            "{} is dynamically linked (has PT_INTERP): the image has no libc",
            copy.display()
        );
    }
    Ok(bytes)
}

/// Whether a 64-bit little-endian ELF file (x86_64, aarch64) asks for a program interpreter.
fn elf_interpreter(elf: &[u8]) -> Result<bool> {
    let word = |at: usize, n: usize| -> Result<u64> {
        let b = elf.get(at..at + n).context("truncated ELF file")?;
        Ok(b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x)))
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF file");
    }
    let (phoff, phentsize, phnum) = (word(0x20, 8)?, word(0x36, 2)?, word(0x38, 2)?);
    for i in 0..phnum {
        const PT_INTERP: u64 = 3;
        if word((phoff + i * phentsize) as usize, 4)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    /// A minimal ELF header with one program header of type `p_type`.
    fn elf(p_type: u32) -> Vec<u8> {
        let mut e = vec![0u8; 0x40 + 0x38];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20] = 0x40; // e_phoff
        e[0x36] = 0x38; // e_phentsize
        e[0x38] = 1; // e_phnum
        e[0x40..0x44].copy_from_slice(&p_type.to_le_bytes());
        e
    }

    #[test]
    fn interpreter_is_found_only_where_present() {
        assert!(super::elf_interpreter(&elf(3)).unwrap());
        assert!(!super::elf_interpreter(&elf(1)).unwrap());
        assert!(super::elf_interpreter(b"#!/bin/sh\n").is_err());
        assert!(super::elf_interpreter(&elf(3)[..0x3a]).is_err());
    }
}
