//! Fetches Debian kernel packages with a project-private apt configuration under target/vm/apt,
//! so the machine's own apt sources, lists and preferences are neither read nor changed. Only
//! the mirror addresses are taken from the machine's configuration.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{kernels::Kernel, mirrors::mirrors};
use crate::exec::{exec, is_root, output};

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

pub struct KernelImage {
    /// e.g. linux-image-6.1.0-56-cloud-amd64
    pub package: String,
    /// Debian version of that package, e.g. 6.1.192-2
    pub version: String,
    /// `uname -r` of the kernel, which is also its modules directory name.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// Resolves, downloads (cached) and unpacks the kernel. `refresh` re-resolves the metapackage;
/// otherwise the cached packages are reused without touching the network.
pub fn fetch(kernel: &'static Kernel, refresh: bool) -> Result<KernelImage> {
    let root = std::env::current_dir()?;
    let cache = root.join("target/vm/cache").join(kernel.name);
    fs::create_dir_all(&cache)?;
    // One .deb file name per line: the image package first, then what it needs of its ABI.
    let record = cache.join("resolved");
    let cached: Option<Vec<PathBuf>> = fs::read_to_string(&record)
        .ok()
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|f| cache.join(f.trim()))
                .collect()
        })
        .filter(|debs: &Vec<PathBuf>| {
            !refresh && !debs.is_empty() && debs.iter().all(|d| d.is_file())
        });
    let debs = match cached {
        Some(debs) => debs,
        None => {
            let debs = download(kernel, &root, &cache)?;
            let names: Vec<String> = debs
                .iter()
                .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            fs::write(&record, names.join("\n") + "\n")?;
            debs
        }
    };
    let image = &debs[0];
    let package = output(Command::new("dpkg-deb").arg("-f").arg(image).arg("Package"))?;
    let version = output(Command::new("dpkg-deb").arg("-f").arg(image).arg("Version"))?;
    let (package, version) = (package.trim().to_owned(), version.trim().to_owned());
    if !version.starts_with(kernel.version_prefix) {
        bail!(
            "{} resolved to {package} {version}, expected {}*",
            kernel.name,
            kernel.version_prefix
        );
    }
    let tree = unpack(&root, kernel, &debs, &version)?;
    let (release, modules) = modules_dir(&tree)?;
    let vmlinuz = vmlinuz(&tree, &release)?;
    Ok(KernelImage {
        package,
        version,
        release,
        vmlinuz,
        modules,
    })
}

/// Downloads the versioned image package and the packages of the same ABI it depends on:
/// before 7.x that is nothing (the image package holds vmlinuz and the modules); from 7.x the
/// image package is empty and depends on linux-binary-<abi> (vmlinuz), linux-modules-<abi> and
/// linux-base-<abi>. Returns the image package first.
fn download(kernel: &Kernel, root: &Path, cache: &Path) -> Result<Vec<PathBuf>> {
    let arch = kernel.arch.debian();
    let dir = prepare(
        &root.join("target/vm/apt").join(kernel.name),
        &sources_for(kernel.suite)?,
        arch,
    )?;

    let depends = output(apt("apt-cache", &dir, arch).args(["depends", kernel.metapackage]))?;
    let package = same_abi_depends(&depends, "linux-image-")
        .into_iter()
        .next()
        .with_context(|| {
            format!(
                "{} in {} depends on no linux-image",
                kernel.metapackage, kernel.suite
            )
        })?;
    let abi = package.trim_start_matches("linux-image-").to_owned();
    let depends = output(apt("apt-cache", &dir, arch).args(["depends", &package]))?;
    let mut packages = vec![package.clone()];
    packages.extend(
        same_abi_depends(&depends, "linux-")
            .into_iter()
            .filter(|p| p.ends_with(&format!("-{abi}"))),
    );
    eprintln!("vm: {} resolves to {}", kernel.name, packages.join(" "));
    exec(
        apt("apt-get", &dir, arch)
            .arg("download")
            .args(&packages)
            .current_dir(cache),
    )?;

    let mut found: Vec<Option<PathBuf>> = vec![None; packages.len()];
    for entry in fs::read_dir(cache)? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".deb") {
            continue;
        }
        match packages
            .iter()
            .position(|p| name.starts_with(&format!("{p}_")))
        {
            Some(i) => found[i] = Some(path),
            // An older kernel ABI from a previous resolution: no longer wanted.
            None => fs::remove_file(&path)?,
        }
    }
    packages
        .iter()
        .zip(found)
        .map(|(p, f)| {
            f.with_context(|| format!("apt-get download left no {p}_*.deb in {}", cache.display()))
        })
        .collect()
}

/// Hard `Depends:` of an `apt-cache depends` listing whose names start with `prefix`, in order.
/// Alternatives (`|Depends:`) and virtual packages (`<…>`) are never kernel parts.
fn same_abi_depends(listing: &str, prefix: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with(prefix))
        .map(|p| p.split(':').next().unwrap_or(p).to_owned())
        .collect()
}

/// A private apt state under `dir` with `sources` (a sources.list text), updated for `arch`.
pub fn prepare(dir: &Path, sources: &str, arch: &str) -> Result<PathBuf> {
    for sub in ["parts", "state/lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    // An empty dpkg status: apt resolves as for a bare system and never sees the host's.
    fs::write(dir.join("status"), "")?;
    fs::write(dir.join("sources.list"), sources)?;
    exec(apt("apt-get", dir, arch).arg("update"))?;
    Ok(dir.to_path_buf())
}

/// apt-get or apt-cache on the private state `dir`, for the guest architecture `arch`.
pub fn apt(program: &str, dir: &Path, arch: &str) -> Command {
    let mut cmd = Command::new(program);
    let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
    cmd.arg("-q")
        .args([
            "-o",
            &opt("Dir::Etc::SourceList", &dir.join("sources.list")),
        ])
        .args(["-o", &opt("Dir::Etc::SourceParts", &dir.join("parts"))])
        .args([
            "-o",
            &opt("Dir::Etc::Preferences", &dir.join("preferences")),
        ])
        .args(["-o", &opt("Dir::Etc::PreferencesParts", &dir.join("parts"))])
        .args(["-o", &opt("Dir::State", &dir.join("state"))])
        .args(["-o", &opt("Dir::State::status", &dir.join("status"))])
        .args(["-o", &opt("Dir::Cache", &dir.join("cache"))])
        .args(["-o", "Acquire::Languages=none"])
        // The guest's architecture is apt's native one here, whatever the host's.
        .args(["-o", &format!("APT::Architecture={arch}")])
        .args(["-o", &format!("APT::Architectures={arch}")]);
    if is_root() {
        // The _apt sandbox user cannot write into the workspace; we only fetch signed indexes
        // and one .deb that is never installed.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    cmd
}

/// sources.list for `suite`, with its -updates and -security suites when it has them.
pub fn sources_for(suite: &str) -> Result<String> {
    let (main, security) = mirrors()?;
    let line = |uri: &str, suite: &str| format!("deb [signed-by={KEYRING}] {uri} {suite} main\n");
    if suite.contains('-') || suite == "sid" {
        return Ok(line(&main, suite));
    }
    Ok([
        line(&main, suite),
        line(&main, &format!("{suite}-updates")),
        line(&security, &format!("{suite}-security")),
    ]
    .concat())
}

fn unpack(root: &Path, kernel: &Kernel, debs: &[PathBuf], version: &str) -> Result<PathBuf> {
    let base = root.join("target/vm/kernels").join(kernel.name);
    let tree = base.join(version);
    if tree.join(".complete").exists() {
        return Ok(tree);
    }
    // Older versions would only pile up: a kernel name has one current package.
    let _ = fs::remove_dir_all(&base);
    let tmp = base.join(format!("{version}.partial"));
    fs::create_dir_all(&tmp)?;
    for deb in debs {
        exec(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    }
    fs::write(tmp.join(".complete"), "")?;
    fs::rename(&tmp, &tree)?;
    Ok(tree)
}

/// /boot/vmlinuz-<release> up to 6.x; from 7.x linux-binary-<abi> puts it beside the modules.
fn vmlinuz(tree: &Path, release: &str) -> Result<PathBuf> {
    let candidates = [
        tree.join("boot").join(format!("vmlinuz-{release}")),
        tree.join("usr/lib/modules").join(release).join("vmlinuz"),
        tree.join("lib/modules").join(release).join("vmlinuz"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "no vmlinuz for {release} in {} (looked at boot/ and lib/modules/{release}/)",
                tree.display()
            )
        })
}

/// trixie ships modules under usr/lib (merged /usr), older suites under lib.
fn modules_dir(tree: &Path) -> Result<(String, PathBuf)> {
    for base in ["usr/lib/modules", "lib/modules"] {
        let Ok(entries) = fs::read_dir(tree.join(base)) else {
            continue;
        };
        if let Some(entry) = entries
            .filter_map(|e| e.ok())
            .find(|e| e.path().join("kernel").is_dir())
        {
            return Ok((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
    }
    bail!("no lib/modules/<release>/kernel in {}", tree.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_split_image_package() {
        // `apt-cache depends linux-image-7.2.13+deb14-cloud-amd64` in sid, 2026-12-04.
        let listing = "linux-image-7.2.13+deb14-cloud-amd64\n  PreDepends: linux-base\n \
                       |Depends: dracut\n |Depends: initramfs-tools\n  Depends: <linux-initramfs-tool>\n    dracut\n  \
                       Depends: linux-base-7.2.13+deb14-cloud-amd64\n  \
                       Depends: linux-binary-7.2.13+deb14-cloud-amd64\n  \
                       Depends: linux-modules-7.2.13+deb14-cloud-amd64\n  Breaks: <fwupdate>\n";
        assert_eq!(
            same_abi_depends(listing, "linux-"),
            [
                "linux-base-7.2.13+deb14-cloud-amd64",
                "linux-binary-7.2.13+deb14-cloud-amd64",
                "linux-modules-7.2.13+deb14-cloud-amd64"
            ]
        );
        let meta = "linux-image-cloud-amd64\n  Depends: linux-base-cloud-amd64\n  \
                    Depends: linux-image-7.2.13+deb14-cloud-amd64\n";
        assert_eq!(
            same_abi_depends(meta, "linux-image-"),
            ["linux-image-7.2.13+deb14-cloud-amd64"]
        );
    }
}
