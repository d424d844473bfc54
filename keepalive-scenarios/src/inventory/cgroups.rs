//! Real cgroups for the attribution scenario, named as systemd, docker and the kubelet name
//! theirs, and the kubelet's pod log directory: made on the cgroup2 mount (found, not assumed)
//! and removed, processes moved out first, however the scenario ends.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// A tree of cgroups under the cgroup2 mount, removed (processes moved out first) on drop.
pub struct Tree {
    root: PathBuf,
    top: PathBuf,
}

impl Tree {
    pub fn create(tag: &str) -> Result<Option<Tree>> {
        let Some(root) = cgroup2_mount() else {
            return Ok(None);
        };
        let top = root.join(format!("kat-attr-{}-{tag}", std::process::id()));
        fs::create_dir_all(&top).with_context(|| format!("mkdir {}", top.display()))?;
        Ok(Some(Tree { root, top }))
    }

    pub fn dir(&self, rel: &str) -> Result<PathBuf> {
        let d = self.top.join(rel);
        fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
        Ok(d)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // Deepest first; any process still inside goes back to the root.
        let mut dirs = Vec::new();
        collect(&self.top, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            if let Ok(pids) = fs::read_to_string(d.join("cgroup.procs")) {
                for pid in pids.lines() {
                    let _ = fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let _ = fs::remove_dir(&d);
        }
    }
}

fn collect(d: &Path, out: &mut Vec<PathBuf>) {
    out.push(d.to_path_buf());
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect(&e.path(), out);
            }
        }
    }
}

/// The cgroup2 mount point from /proc/self/mountinfo (on hybrid hosts not /sys/fs/cgroup).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// A removable `/var/log/pods/<ns>_<name>_<uid>` directory, as the kubelet makes.
pub struct PodLog(pub PathBuf);

impl Drop for PodLog {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}
