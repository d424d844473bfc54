//! Tests of the workload resolver: `paths` (the pure parser, every pattern) and `cgroups`
//! (real cgroups created on this host's cgroup2 mount, with the names systemd, docker,
//! containerd, CRI-O, podman and the kubelet give them). The helpers here create and always
//! remove what the tests make: cgroups (`TestTree`), processes (`Child`), directories
//! (`TempDir`).
mod cgroups;
mod paths;

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use super::Cgroup2Mount;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "kat-test-{}-{tag}-{}",
        process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The host's cgroup2 mount if the test can create cgroups there (root), else `None` with a
/// line saying why the test is skipped.
fn writable_mount(test: &str) -> Option<Cgroup2Mount> {
    let Some(mount) = Cgroup2Mount::detect() else {
        eprintln!("{test}: SKIPPED, no cgroup2 mount");
        return None;
    };
    let probe = mount.path.join(unique("probe"));
    match fs::create_dir(&probe) {
        Ok(()) => {
            let _ = fs::remove_dir(&probe);
            Some(mount)
        }
        Err(e) => {
            eprintln!(
                "{test}: SKIPPED, cannot create a cgroup in {}: {e}",
                mount.path.display()
            );
            None
        }
    }
}

/// A tree of cgroups under `<mount>/kat-test-<pid>-<tag>-<n>`, removed on drop (deepest
/// first, processes moved out to the mount's root), even when the test fails.
pub(super) struct TestTree {
    pub mount: PathBuf,
    pub root: PathBuf,
}

impl TestTree {
    pub fn new(mount: &Cgroup2Mount, tag: &str) -> Self {
        let root = mount.path.join(unique(tag));
        fs::create_dir(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
        Self {
            mount: mount.path.clone(),
            root,
        }
    }

    /// Creates `rel` (and its parents) under the tree; returns its cgroup id, from `stat`.
    pub fn mkdir(&self, rel: &str) -> u64 {
        let dir = self.root.join(rel);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        id_of(&dir)
    }

    pub fn rmdir(&self, rel: &str) {
        let dir = self.root.join(rel);
        rmdir_retry(&dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
    }

    /// The tree's path relative to the mount (what the resolver reports).
    pub fn rel(&self) -> String {
        self.root
            .strip_prefix(&self.mount)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for TestTree {
    fn drop(&mut self) {
        let mut dirs = vec![self.root.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(rd) = fs::read_dir(&dirs[i]) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs.push(e.path());
                    }
                }
            }
            i += 1;
        }
        for dir in dirs.iter().rev() {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = fs::write(self.mount.join("cgroup.procs"), pid);
                }
            }
            if let Err(e) = rmdir_retry(dir)
                && e.kind() != io::ErrorKind::NotFound
            {
                eprintln!("cleanup: rmdir {}: {e}", dir.display());
            }
        }
    }
}

/// rmdir, retried while the cgroup is still busy (a process that just exited).
fn rmdir_retry(dir: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                tries += 1;
                thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// The cgroup id of a cgroup directory: its inode number.
pub(super) fn id_of(dir: &Path) -> u64 {
    fs::metadata(dir)
        .unwrap_or_else(|e| panic!("stat {}: {e}", dir.display()))
        .ino()
}

/// A directory under the temp dir, removed on drop.
pub(super) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(tag));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped on drop.
pub(super) struct Child(pub process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
