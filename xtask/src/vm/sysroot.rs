//! Guest tools for a guest whose architecture is not the host's (arm64 under TCG): the host's
//! ip, nft and friends cannot run there, so the same programs come from Debian's packages for
//! the guest's architecture, from the suite the host runs (the versions the x86_64 guests get),
//! unpacked under target/vm/sysroot/<arch>. Shared libraries are found by reading each ELF's
//! DT_NEEDED entries (there is no foreign `ldd`), then shipped at their Debian paths, where the
//! guest's dynamic loader looks by default.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{
    apt,
    kernels::Arch,
    modules::section,
    tools::{GuestFile, Shipped, TOOLS, python_stdlib_in},
};
use crate::exec::{exec, output};

/// Debian package of each tool in `tools::TOOLS`.
fn package(tool: &str) -> &'static str {
    match tool {
        "ip" | "nstat" => "iproute2",
        "nft" => "nftables",
        "socat" => "socat",
        "curl" => "curl",
        "redis-server" => "redis-server",
        _ => "python3",
    }
}

/// The suite the host's own tools come from, so every guest runs the same tool versions.
const SUITE: &str = "bookworm";

pub fn collect(arch: Arch) -> Result<Shipped> {
    let root = std::env::current_dir()?
        .join("target/vm/sysroot")
        .join(arch.debian());
    if !root.join(".complete").exists() {
        populate(arch, &root)?;
    }
    let triplet = match arch {
        Arch::X86_64 => "x86_64-linux-gnu",
        Arch::Arm64 => "aarch64-linux-gnu",
    };
    let lib_dirs: Vec<String> = [
        format!("lib/{triplet}"),
        format!("usr/lib/{triplet}"),
        "lib".into(),
        "usr/lib".into(),
    ]
    .into();

    let mut shipped = Shipped {
        files: Vec::new(),
        tools: Vec::new(),
        missing: Vec::new(),
    };
    let mut pending: Vec<PathBuf> = Vec::new();
    for &(name, required) in TOOLS {
        let found = ["usr/sbin", "usr/bin", "sbin", "bin"]
            .iter()
            .map(|d| root.join(d).join(name))
            .find(|p| p.exists());
        let Some(path) = found else {
            if required {
                bail!(
                    "{name} is not in {} after unpacking {}",
                    root.display(),
                    package(name)
                );
            }
            shipped.missing.push(name);
            continue;
        };
        let real = resolve(&root, &path)?;
        pending.push(real.clone());
        if name == "python3" {
            python_stdlib_in(&root, &root.join("usr/lib/python3.11"), &mut shipped.files)?;
        }
        shipped.files.push(GuestFile {
            guest: format!("bin/{name}"),
            host: real,
            mode: 0o755,
        });
        shipped.tools.push(name);
    }

    // DT_NEEDED closure, plus each executable's PT_INTERP (the dynamic loader).
    let mut seen = BTreeSet::new();
    while let Some(elf) = pending.pop() {
        let image = fs::read(&elf).with_context(|| format!("reading {}", elf.display()))?;
        let (needed, interp) = dynamic(&image);
        let mut wanted: Vec<(String, PathBuf)> = Vec::new();
        for lib in needed {
            let guest = lib_dirs
                .iter()
                .map(|d| format!("{d}/{lib}"))
                .find(|g| root.join(g).exists())
                .with_context(|| {
                    format!(
                        "{lib} (needed by {}) not in {}",
                        elf.display(),
                        root.display()
                    )
                })?;
            let host = resolve(&root, &root.join(&guest))?;
            wanted.push((guest, host));
        }
        if let Some(interp) = interp {
            let guest = interp.trim_start_matches('/').to_owned();
            let host = resolve(&root, &root.join(&guest))
                .with_context(|| format!("the loader {interp} of {}", elf.display()))?;
            wanted.push((guest, host));
        }
        for (guest, host) in wanted {
            if seen.insert(guest.clone()) {
                pending.push(host.clone());
                shipped.files.push(GuestFile {
                    guest,
                    host,
                    mode: 0o755,
                });
            }
        }
    }
    Ok(shipped)
}

/// Downloads the tools' packages and everything they depend on (from an empty system: the
/// closure includes libc6) and unpacks them all into `root`.
fn populate(arch: Arch, root: &Path) -> Result<()> {
    let dir = std::env::current_dir()?
        .join("target/vm/apt")
        .join(format!("tools-{}", arch.debian()));
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    let sources = apt::sources_for(SUITE)?;
    let apt_dir = apt::prepare(&dir, &sources, arch.debian())?;
    let mut wanted: Vec<&str> = TOOLS.iter().map(|(t, _)| package(t)).collect();
    wanted.dedup();
    let listing = output(
        apt::apt("apt-cache", &apt_dir, arch.debian())
            .args(["depends", "--recurse", "--no-recommends", "--no-suggests"])
            .args([
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
            ])
            .args(&wanted),
    )?;
    let closure = closure(&listing);
    eprintln!(
        "vm: {} guest tools: {} Debian packages for {}",
        arch.debian(),
        closure.len(),
        wanted.join(" ")
    );
    exec(
        apt::apt("apt-get", &apt_dir, arch.debian())
            .arg("download")
            .args(&closure)
            .current_dir(&debs),
    )?;
    let _ = fs::remove_dir_all(root);
    let tmp = root.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    for entry in fs::read_dir(&debs)? {
        let deb = entry?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        }
    }
    fs::write(tmp.join(".complete"), "")?;
    fs::rename(&tmp, root)?;
    Ok(())
}

/// Real package names of an `apt-cache depends --recurse` listing: the unindented lines,
/// without virtual packages (`<name>`), in first-seen order.
fn closure(listing: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    listing
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<') && !l.trim().is_empty())
        .map(|l| l.trim().split(':').next().unwrap_or(l).to_owned())
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

/// Follows symlinks inside the sysroot: absolute targets are relative to `root`, never to the
/// host's own file system.
fn resolve(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..16 {
        match fs::read_link(&path) {
            Ok(target) if target.is_absolute() => {
                path = root.join(target.strip_prefix("/").unwrap_or(&target));
            }
            Ok(target) => {
                path = path.parent().unwrap_or(root).join(target);
            }
            Err(_) if path.exists() => return Ok(path),
            Err(e) => return Err(e).with_context(|| format!("{} is missing", path.display())),
        }
    }
    bail!("{}: too many levels of symbolic links", path.display())
}

/// DT_NEEDED names and the PT_INTERP path of an ELF64 little-endian file (both empty for a
/// file that is not one, such as a linker script).
fn dynamic(elf: &[u8]) -> (Vec<String>, Option<String>) {
    let strings = section(elf, ".dynstr").unwrap_or_default();
    let string = |off: usize| -> Option<String> {
        let s = strings.get(off..)?.split(|&b| b == 0).next()?;
        Some(String::from_utf8_lossy(s).into_owned())
    };
    let mut needed = Vec::new();
    if let Some(dynamic) = section(elf, ".dynamic") {
        for entry in dynamic.chunks_exact(16) {
            let tag = u64::from_le_bytes(entry[..8].try_into().unwrap());
            let val = u64::from_le_bytes(entry[8..].try_into().unwrap()) as usize;
            // DT_NULL ends the table; DT_NEEDED is 1.
            match tag {
                0 => break,
                1 => needed.extend(string(val)),
                _ => {}
            }
        }
    }
    let interp = section(elf, ".interp").and_then(|s| {
        let s = s.split(|&b| b == 0).next()?;
        Some(String::from_utf8_lossy(s).into_owned())
    });
    (needed, interp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_keeps_real_packages_once() {
        let listing = "iproute2\n  Depends: libc6\n  Depends: <libelf1t64>\nlibc6\n  Depends: libgcc-s1\n\
                       <debconf-2.0>\nlibgcc-s1\nlibc6\n";
        assert_eq!(closure(listing), ["iproute2", "libc6", "libgcc-s1"]);
    }

    #[test]
    fn reads_the_hosts_own_needed_entries() {
        // A real dynamic executable of the host: whatever it links, libc is among it.
        let (needed, interp) = dynamic(&fs::read("/bin/sh").unwrap());
        assert!(
            needed.iter().any(|n| n.starts_with("libc.so")),
            "{needed:?}"
        );
        assert!(interp.is_some_and(|i| i.contains("ld-linux")));
        assert_eq!(dynamic(b"not an elf"), (Vec::new(), None));
    }
}
