use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd` to completion, echoing it first so a CI log shows what was run.
pub fn exec(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// Output of a query command (no echo: these only inspect the machine).
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}: {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when the command runs and exits 0; for "is this already installed" probes.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn display(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command that needs root: as is when we are root, otherwise through `sudo -E`.
pub fn privileged(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(program);
        c
    }
}

/// Finds an executable on PATH or in the sbin directories, which a non-root PATH often lacks.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Like [`exec`], but keeps the stdout lines from the first line that is one of `headers` to
/// the end (the scenario suite repeats its failures and flaky scenarios there): a failure's
/// error quotes them, and a success returns them, so the summary at the end of a long CI log
/// says what failed or wobbled, not only that something did.
pub fn exec_quoting(cmd: &mut Command, headers: &[&str]) -> Result<String> {
    use std::io::{BufRead as _, Write as _};
    eprintln!("+ {}", display(cmd));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start `{}`", display(cmd)))?;
    let mut quoted: Option<Vec<String>> = None;
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout().lock();
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(stdout, "{line}");
            match &mut quoted {
                Some(block) if line != "failure" && line != "success" => block.push(line),
                Some(_) => {}
                None if headers.contains(&line.as_str()) => quoted = Some(vec![line]),
                None => {}
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("failed to wait for `{}`", display(cmd)))?;
    let block = quoted.map(|b| b.join("\n")).unwrap_or_default();
    if !status.success() {
        bail!("`{}` failed: {status}\n{block}", display(cmd));
    }
    Ok(block)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    #[test]
    fn failure_quotes_the_block_after_the_header() {
        let err = super::exec_quoting(
            Command::new("sh").args([
                "-c",
                "echo one; echo 'failed scenarios:'; echo 'scenario=x result=failure'; \
                 echo '  tail'; echo failure; exit 1",
            ]),
            &["failed scenarios:"],
        )
        .unwrap_err()
        .to_string();
        let quoted: Vec<&str> = err.lines().skip(1).collect();
        assert_eq!(
            quoted,
            ["failed scenarios:", "scenario=x result=failure", "  tail"]
        );
    }

    #[test]
    fn success_returns_the_block() {
        let block = super::exec_quoting(
            Command::new("sh").args(["-c", "echo a; echo 'flaky:'; echo x; echo success"]),
            &["flaky:", "failed scenarios:"],
        )
        .unwrap();
        assert_eq!(block, "flaky:\nx");
    }
}
