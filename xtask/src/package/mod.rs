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

mod parts;
mod verify;

pub use parts::workspace_field;
use parts::{
    POSTINST, POSTRM, PRERM, changelog, copyright, depends, du_kib, gzip, md5sums, set_dir_modes,
    version,
};
pub use verify::verify;

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
