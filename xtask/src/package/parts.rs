//! The pieces of the package: version, dependencies, sizes, checksums, modes, the
//! changelog and copyright files, and the maintainer scripts.
use super::*;

/// The daemon crate's version (the workspace's).
pub(super) fn version() -> Result<String> {
    workspace_field("version")
}

/// A string key of the root Cargo.toml's `[workspace.package]` (version, repository, license).
pub fn workspace_field(key: &str) -> Result<String> {
    let text = fs::read_to_string("Cargo.toml")?;
    let in_package = text
        .split("[workspace.package]")
        .nth(1)
        .context("no [workspace.package] in Cargo.toml")?;
    let in_package = in_package.split("\n[").next().unwrap_or(in_package);
    let prefix = format!("{key} = \"");
    in_package
        .lines()
        .find_map(|l| {
            l.strip_prefix(&prefix)?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .with_context(|| format!("no {key} in [workspace.package]"))
}

/// Shared-library dependencies as Debian computes them.
pub(super) fn depends(binary: &Path) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("ka-shlibdeps-{}", std::process::id()));
    fs::create_dir_all(dir.join("debian"))?;
    fs::write(
        dir.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let out = output(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(fs::canonicalize(binary)?)
            .current_dir(&dir),
    );
    let _ = fs::remove_dir_all(&dir);
    let out = out?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

pub(super) fn du_kib(dir: &Path) -> Result<u64> {
    fn walk(p: &Path, total: &mut u64) -> Result<()> {
        for e in fs::read_dir(p)? {
            let e = e?;
            if e.file_name() == "DEBIAN" {
                continue;
            }
            let md = e.metadata()?;
            if md.is_dir() {
                walk(&e.path(), total)?;
            } else {
                *total += md.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(dir, &mut total)?;
    Ok(total)
}

pub(super) fn md5sums(stage: &Path) -> Result<String> {
    let mut files = Vec::new();
    fn walk(root: &Path, p: &Path, out: &mut Vec<String>) -> Result<()> {
        for e in fs::read_dir(p)? {
            let path = e?.path();
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            if rel == "DEBIAN" {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
    walk(stage, stage, &mut files)?;
    files.sort();
    let out = output(Command::new("md5sum").args(&files).current_dir(stage))?;
    Ok(out)
}

pub(super) fn set_dir_modes(p: &Path) -> Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
    for e in fs::read_dir(p)? {
        let e = e?;
        if e.metadata()?.is_dir() {
            set_dir_modes(&e.path())?;
        }
    }
    Ok(())
}

pub(super) fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

pub(super) fn changelog(version: &str) -> String {
    format!(
        "{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Built by cargo xtask package.\n\n -- keepalive observer developers <keepalive-observer@example.invalid>  Thu, 01 Jan 2026 00:00:00 +0000\n"
    )
}

pub(super) fn copyright() -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: {PACKAGE}\n\n\
         Files: *\n\
         Copyright: keepalive observer developers\n\
         License: MIT or Apache-2.0\n \
         The daemon and its eBPF programs are dual-licensed under the MIT license and\n \
         the Apache License 2.0 (/usr/share/common-licenses/Apache-2.0); the eBPF\n \
         programs loaded into the kernel are also GPL-compatible as the kernel requires.\n"
    )
}

/// As debhelper's dh_installsystemd writes them: enable and (re)start on install and upgrade,
/// stop on removal, forget the enablement on purge. Harmless where systemd is not running.
pub(super) const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ]; then
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		deb-systemd-helper unmask 'keepalive-daemon.service' >/dev/null || true
		if deb-systemd-helper --quiet was-enabled 'keepalive-daemon.service'; then
			deb-systemd-helper enable 'keepalive-daemon.service' >/dev/null || true
		else
			deb-systemd-helper update-state 'keepalive-daemon.service' >/dev/null || true
		fi
	fi
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then _action=restart; else _action=start; fi
		deb-systemd-invoke "$_action" 'keepalive-daemon.service' >/dev/null || true
	fi
fi
exit 0
"#;

pub(super) const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	deb-systemd-invoke stop 'keepalive-daemon.service' >/dev/null || true
fi
exit 0
"#;

pub(super) const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if command -v deb-systemd-helper >/dev/null 2>&1; then
	if [ "$1" = "remove" ]; then
		deb-systemd-helper mask 'keepalive-daemon.service' >/dev/null || true
	fi
	if [ "$1" = "purge" ]; then
		deb-systemd-helper purge 'keepalive-daemon.service' >/dev/null || true
		deb-systemd-helper unmask 'keepalive-daemon.service' >/dev/null || true
	fi
fi
exit 0
"#;
