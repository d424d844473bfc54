//! `cargo xtask package`: the Debian package, built with dpkg-deb from a staging tree (no
//! cargo-deb: one place says what goes where, and nothing is downloaded). Installs the daemon,
//! its systemd unit, the default config (a conffile), the web-config example, the Prometheus
//! rules and scrape config, the Grafana dashboard and the operator docs; the maintainer scripts
//! enable and start the service as debhelper's would.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    build,
    exec::{exec, output},
};

pub const PACKAGE: &str = "keepalive-daemon";

#[derive(clap::Parser)]
pub struct Options {
    /// Package this daemon binary instead of building target/release/keepalive-daemon.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Directory for the .deb.
    #[arg(long, default_value = "target/debian")]
    pub out_dir: PathBuf,
    /// Debian architecture of the package: the host's by default, or `arm64`, whose daemon is
    /// a static aarch64-unknown-linux-musl build (cross-built; no shared-library Depends).
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
}

/// Every file the package installs: (path in the package, source in the repository, mode).
/// The daemon binary is added separately.
const FILES: &[(&str, &str, u32)] = &[
    (
        "lib/systemd/system/keepalive-daemon.service",
        "deploy/systemd/keepalive-daemon.service",
        0o644,
    ),
    (
        "etc/keepalive-daemon/config.toml",
        "deploy/config.toml",
        0o644,
    ),
    (
        "usr/share/doc/keepalive-daemon/examples/web-config.yml",
        "deploy/web-config.yml",
        0o644,
    ),
    (
        "usr/share/doc/keepalive-daemon/operations.md",
        "docs/operations.md",
        0o644,
    ),
    (
        "usr/share/doc/keepalive-daemon/metrics-and-events.md",
        "docs/metrics-and-events.md",
        0o644,
    ),
    (
        "usr/share/keepalive-daemon/prometheus/keepalive-rules.yml",
        "deploy/prometheus/keepalive-rules.yml",
        0o644,
    ),
    (
        "usr/share/keepalive-daemon/prometheus/keepalive-rules.test.yml",
        "deploy/prometheus/keepalive-rules.test.yml",
        0o644,
    ),
    (
        "usr/share/keepalive-daemon/prometheus/scrape.yml",
        "deploy/prometheus/scrape.yml",
        0o644,
    ),
    (
        "usr/share/keepalive-daemon/grafana/keepalive-dashboard.json",
        "deploy/grafana/keepalive-dashboard.json",
        0o644,
    ),
];
const BINARY: &str = "usr/bin/keepalive-daemon";
const CONFFILES: &[&str] = &["/etc/keepalive-daemon/config.toml"];

pub fn run(opts: Options) -> Result<()> {
    let deb = build_deb(&opts)?;
    verify(&deb)?;
    println!("{}", deb.display());
    Ok(())
}

/// Builds the .deb and returns its path.
pub fn build_deb(opts: &Options) -> Result<PathBuf> {
    let host = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let arch = opts.arch.clone().unwrap_or_else(|| host.clone());
    let cross = arch != host;
    if cross && arch != "arm64" {
        bail!("--arch {arch}: only the host's architecture ({host}) and arm64 can be packaged");
    }
    let binary = match &opts.binary {
        Some(b) => b.clone(),
        None => {
            let release = build::Options {
                release: true,
                musl: cross,
                arm64: cross,
            };
            build::build_packages(&release, &[PACKAGE])?;
            build::binary(&release, PACKAGE)
        }
    };
    ensure!(binary.is_file(), "no daemon binary at {}", binary.display());
    let version = version()?;
    let name = format!("{PACKAGE}_{version}_{arch}");
    let stage = opts.out_dir.join(&name);
    let _ = fs::remove_dir_all(&stage);

    let put = |dest: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let path = stage.join(dest);
        fs::create_dir_all(path.parent().expect("a file in a directory"))?;
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put(
        BINARY,
        &fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?,
        0o755,
    )?;
    // Debug info stays in the build tree; the package gets the stripped binary.
    exec(
        Command::new(if cross {
            "aarch64-linux-gnu-strip"
        } else {
            "strip"
        })
        .arg("--strip-unneeded")
        .arg(stage.join(BINARY)),
    )?;
    for (dest, src, mode) in FILES {
        put(
            dest,
            &fs::read(src).with_context(|| format!("reading {src}"))?,
            *mode,
        )?;
    }
    put(
        "usr/share/doc/keepalive-daemon/copyright",
        copyright().as_bytes(),
        0o644,
    )?;
    put(
        "usr/share/doc/keepalive-daemon/changelog.Debian.gz",
        &gzip(changelog(&version).as_bytes())?,
        0o644,
    )?;

    // The cross-built daemon is static: it needs no library from the system.
    let depends = if cross {
        None
    } else {
        Some(depends(&stage.join(BINARY)).unwrap_or_else(|e| {
            eprintln!("package: dpkg-shlibdeps failed ({e:#}); depending on libc6 alone");
            "libc6".to_string()
        }))
    };
    let depends = depends.map_or(String::new(), |d| format!("Depends: {d}\n"));
    let installed_kib = du_kib(&stage)?;
    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: keepalive observer developers <keepalive-observer@example.invalid>\n\
         Installed-Size: {installed_kib}\n\
         {depends}\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://example.invalid/keepalive-observer\n\
         Description: TCP keepalive observer (eBPF) with a Prometheus exporter\n \
         Watches TCP keepalive from inside the kernel: every probe sent, every answer,\n \
         and every connection keepalive declares dead with its cause (timeout, reset by\n \
         a peer or middlebox, ICMP unreachable). Exports Prometheus metrics, streams\n \
         events as JSON, and lists the sockets whose keepalive settings leave them at\n \
         risk behind NAT and load-balancer idle timeouts.\n"
    );
    put("DEBIAN/control", control.as_bytes(), 0o644)?;
    put(
        "DEBIAN/conffiles",
        format!("{}\n", CONFFILES.join("\n")).as_bytes(),
        0o644,
    )?;
    put("DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put("DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put("DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    put("DEBIAN/md5sums", md5sums(&stage)?.as_bytes(), 0o644)?;
    // Directories 0755 whatever the umask made them.
    set_dir_modes(&stage)?;

    let deb = opts.out_dir.join(format!("{name}.deb"));
    exec(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// Checks the package: control fields, conffiles, maintainer scripts, and that it holds
/// exactly the expected files, owned by root, with the expected modes.
pub fn verify(deb: &Path) -> Result<()> {
    let info = output(Command::new("dpkg-deb").arg("-I").arg(deb))?;
    let field = |name: &str| -> Option<String> {
        info.lines().find_map(|l| {
            l.trim_start()
                .strip_prefix(&format!("{name}: "))
                .map(str::to_string)
        })
    };
    ensure!(
        field("Package").as_deref() == Some(PACKAGE),
        "{}: Package is {:?}",
        deb.display(),
        field("Package")
    );
    ensure!(
        field("Version").as_deref() == Some(version()?.as_str()),
        "{}: Version is {:?}",
        deb.display(),
        field("Version")
    );
    // Only the arm64 package is static (see build_deb).
    let static_build = field("Architecture").as_deref() == Some("arm64");
    ensure!(
        static_build || field("Depends").is_some_and(|d| d.contains("libc6")),
        "{}: Depends lacks libc6: {:?}",
        deb.display(),
        field("Depends")
    );
    for script in ["postinst", "prerm", "postrm", "conffiles", "md5sums"] {
        ensure!(
            info.contains(&format!(" {script}")),
            "{}: no {script} in the control archive",
            deb.display()
        );
    }
    let control_dir = std::env::temp_dir().join(format!("ka-verify-{}", std::process::id()));
    let _ = fs::remove_dir_all(&control_dir);
    exec(
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(deb)
            .arg(&control_dir),
    )?;
    let conffiles = fs::read_to_string(control_dir.join("conffiles")).unwrap_or_default();
    for script in ["postinst", "prerm", "postrm"] {
        let status = Command::new("sh")
            .arg("-n")
            .arg(control_dir.join(script))
            .status()?;
        ensure!(
            status.success(),
            "{}: {script} is not valid sh",
            deb.display()
        );
    }
    let _ = fs::remove_dir_all(&control_dir);
    for c in CONFFILES {
        ensure!(
            conffiles.lines().any(|l| l == *c),
            "{}: {c} is not a conffile",
            deb.display()
        );
    }

    let listing = output(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    let mut files = Vec::new();
    for line in listing.lines() {
        // -rw-r--r-- root/root      1234 2026-01-01 00:00 ./etc/keepalive-daemon/config.toml
        let cols: Vec<&str> = line.split_whitespace().collect();
        ensure!(cols.len() >= 6, "unexpected dpkg-deb -c line: {line}");
        let (mode, owner, path) = (cols[0], cols[1], cols[5]);
        ensure!(
            owner == "root/root",
            "{path} is owned by {owner}, not root/root"
        );
        if mode.starts_with('d') {
            ensure!(mode == "drwxr-xr-x", "directory {path} has mode {mode}");
            continue;
        }
        files.push((path.trim_start_matches("./").to_string(), mode.to_string()));
    }
    let mut expected: Vec<(String, &str)> = FILES
        .iter()
        .map(|(dest, _, _)| (dest.to_string(), "-rw-r--r--"))
        .collect();
    expected.push((BINARY.to_string(), "-rwxr-xr-x"));
    expected.push((
        "usr/share/doc/keepalive-daemon/copyright".into(),
        "-rw-r--r--",
    ));
    expected.push((
        "usr/share/doc/keepalive-daemon/changelog.Debian.gz".into(),
        "-rw-r--r--",
    ));
    for (path, mode) in &expected {
        match files.iter().find(|(p, _)| p == path) {
            Some((_, m)) => ensure!(m == mode, "{path} has mode {m}, expected {mode}"),
            None => bail!("{}: {path} is missing", deb.display()),
        }
    }
    let extra: Vec<&String> = files
        .iter()
        .map(|(p, _)| p)
        .filter(|p| !expected.iter().any(|(e, _)| e == *p))
        .collect();
    ensure!(
        extra.is_empty(),
        "{}: unexpected files {extra:?}",
        deb.display()
    );
    eprintln!(
        "package: {} holds the {} expected files",
        deb.display(),
        expected.len()
    );
    Ok(())
}

/// The daemon crate's version (the workspace's).
fn version() -> Result<String> {
    let text = fs::read_to_string("Cargo.toml")?;
    let in_package = text
        .split("[workspace.package]")
        .nth(1)
        .context("no [workspace.package] in Cargo.toml")?;
    in_package
        .lines()
        .find_map(|l| {
            l.strip_prefix("version = \"")?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .context("no version in [workspace.package]")
}

/// Shared-library dependencies as Debian computes them.
fn depends(binary: &Path) -> Result<String> {
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

fn du_kib(dir: &Path) -> Result<u64> {
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

fn md5sums(stage: &Path) -> Result<String> {
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

fn set_dir_modes(p: &Path) -> Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
    for e in fs::read_dir(p)? {
        let e = e?;
        if e.metadata()?.is_dir() {
            set_dir_modes(&e.path())?;
        }
    }
    Ok(())
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

fn changelog(version: &str) -> String {
    format!(
        "{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Built by cargo xtask package.\n\n -- keepalive observer developers <keepalive-observer@example.invalid>  Thu, 01 Jan 2026 00:00:00 +0000\n"
    )
}

fn copyright() -> String {
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
const POSTINST: &str = r#"#!/bin/sh
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

const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	deb-systemd-invoke stop 'keepalive-daemon.service' >/dev/null || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
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
