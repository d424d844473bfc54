//! The host programs copied into the guest, with everything they load: shared libraries from
//! `ldd` at the paths the host's loader resolved (so no ld.so.cache is needed), and for python3
//! its pure-Python standard library. They come from Debian's directories first, like the suite
//! finds them, so a pyenv shim or a /usr/local build is never what gets shipped.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::exec::output;

/// (name, required). The required ones build every topology; busybox's `ip` applet cannot do
/// network namespaces, so iproute2's own binary is shipped. The others drive the suite's
/// third-party-client scenarios, which the suite reports as skipped where a tool is absent.
pub const TOOLS: &[(&str, bool)] = &[
    ("ip", true),
    ("nft", true),
    ("nstat", true),
    // The idle-time checks compare with `ss -tieo` (skipped without it).
    ("ss", false),
    // The local-drop scenario empties the client's egress queue with it.
    ("tc", true),
    ("socat", false),
    ("curl", false),
    ("redis-server", false),
    ("python3", false),
];

/// Standard library parts no scenario imports; leaving them out keeps the initramfs small.
const PYTHON_SKIP: &[&str] = &[
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "distutils",
    "unittest",
    "config-3",
    "lib-dynload",
    "dist-packages",
    "site-packages",
    "__pycache__",
    "venv",
    "ctypes",
    "curses",
    "sqlite3",
    "dbm",
];

pub struct GuestFile {
    /// Path inside the guest, without the leading slash.
    pub guest: String,
    pub host: PathBuf,
    pub mode: u32,
}

pub struct Shipped {
    pub files: Vec<GuestFile>,
    pub tools: Vec<&'static str>,
    pub missing: Vec<&'static str>,
}

pub fn collect() -> Result<Shipped> {
    let mut shipped = Shipped {
        files: Vec::new(),
        tools: Vec::new(),
        missing: Vec::new(),
    };
    let mut libraries = BTreeSet::new();
    for &(name, required) in TOOLS {
        let Some(path) = find(name) else {
            if required {
                bail!("{name} is not installed on the host (cargo xtask setup installs it)");
            }
            shipped.missing.push(name);
            continue;
        };
        libraries.extend(shared_libraries(&path)?);
        if name == "python3" {
            python_stdlib(&path, &mut shipped.files)?;
        }
        // Copied under the tool's own name: redis-server, for one, is a symlink to a binary
        // that picks its role from argv[0].
        shipped.files.push(GuestFile {
            guest: format!("bin/{name}"),
            host: path,
            mode: 0o755,
        });
        shipped.tools.push(name);
    }
    for lib in libraries {
        let guest = lib.to_string_lossy().trim_start_matches('/').to_owned();
        shipped.files.push(GuestFile {
            guest,
            host: lib,
            mode: 0o755,
        });
    }
    Ok(shipped)
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .into_iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| is_elf(p))
}

/// Only real binaries can be shipped; wrapper scripts would need their interpreter too.
fn is_elf(p: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// Every library `ldd` lists, including the dynamic loader itself.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(binary))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.split_once("=>").map_or(l, |(_, rhs)| rhs);
            l.split_whitespace().next().filter(|p| p.starts_with('/'))
        })
        .map(PathBuf::from)
        .collect())
}

/// The interpreter finds its library at the compiled-in prefix (the guest's /usr/lib/python3.X
/// is the host's path), and Debian builds _socket, select and friends into the binary itself,
/// so the .py files are all it needs.
fn python_stdlib(python: &Path, files: &mut Vec<GuestFile>) -> Result<()> {
    let stdlib = output(Command::new(python).args([
        "-c",
        "import sysconfig; print(sysconfig.get_path('stdlib'))",
    ]))?;
    python_stdlib_in(Path::new("/"), Path::new(stdlib.trim()), files)
}

/// The `.py` files of the standard library at `stdlib`, shipped at their path below `root`.
pub fn python_stdlib_in(root: &Path, stdlib: &Path, files: &mut Vec<GuestFile>) -> Result<()> {
    let mut stack = vec![stdlib.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if PYTHON_SKIP.iter().any(|s| name.starts_with(s)) {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".py") {
                let guest = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .trim_start_matches('/')
                    .to_owned();
                files.push(GuestFile {
                    guest,
                    host: path,
                    mode: 0o644,
                });
            }
        }
    }
    if !files.iter().any(|f| f.guest.ends_with("/os.py")) {
        bail!(
            "no os.py under {}: not a usable Python standard library",
            stdlib.display()
        );
    }
    Ok(())
}
