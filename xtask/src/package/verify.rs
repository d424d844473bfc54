//! Checks a built .deb the way dpkg and an operator would see it.
use super::*;

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
