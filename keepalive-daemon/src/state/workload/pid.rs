//! A process's cgroup v2 path, from the `0::` line of /proc/<pid>/cgroup: for kernels or
//! hooks where the socket's cgroup id is not known, the owner's cgroup stands in for it.
//!
//! The path is relative to the *reader's* cgroup namespace root (ours). In the host's
//! namespace it is the full path. When the daemon runs in a private cgroup namespace (a
//! container without `--cgroupns=host`; Kubernetes pods on cgroup v2 by default), processes
//! outside our subtree show as `/../../<…>` (inspektor-gadget#3085): their directory is not
//! in our cgroup2 mount, so they have no id and no entry in the map, and only what the
//! visible tail of the path names (unit, container, pod) can be derived. Run the daemon in
//! the host's cgroup namespace for complete results.
use std::{fs, path::PathBuf};

use super::mount::Cgroup2Mount;

/// The `0::` (cgroup v2) path of a /proc/<pid>/cgroup text.
pub fn v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The v2 cgroup path of `pid` as this process sees it; `None` if the process is gone.
pub fn read(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    v2_path(&text).map(str::to_owned)
}

/// Where the cgroup of `path` (a `0::` path) is in `mount`: `None` when the path leaves our
/// cgroup namespace (`..`) or lies outside the mounted subtree.
pub fn dir_in(mount: &Cgroup2Mount, path: &str) -> Option<PathBuf> {
    if path.split('/').any(|c| c == "..") {
        return None;
    }
    let root = mount.root.trim_end_matches('/');
    let rel = path.strip_prefix(root)?;
    if !(rel.is_empty() || rel.starts_with('/')) {
        return None;
    }
    Some(mount.path.join(rel.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(root: &str) -> Cgroup2Mount {
        Cgroup2Mount {
            path: "/sys/fs/cgroup/unified".into(),
            root: root.into(),
        }
    }

    #[test]
    fn workload_pid_v2_line() {
        let hybrid = "9:name=systemd:/system.slice/x.service\n0::/system.slice/x.service\n";
        assert_eq!(v2_path(hybrid), Some("/system.slice/x.service"));
        assert_eq!(v2_path("4:memory:/a\n"), None);
    }

    #[test]
    fn workload_pid_dir_in_mount() {
        let m = mount("/");
        assert_eq!(
            dir_in(&m, "/system.slice/x.service"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/system.slice/x.service"
            ))
        );
        assert_eq!(
            dir_in(&m, "/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        // Outside our cgroup namespace: no directory to stat.
        assert_eq!(dir_in(&m, "/../../kubepods.slice/x"), None);
        // A mount of a subtree: paths inside it map, others do not.
        let sub = mount("/kubepods.slice");
        assert_eq!(
            dir_in(&sub, "/kubepods.slice/a"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/a"))
        );
        assert_eq!(dir_in(&sub, "/kubepods.slicex/a"), None);
        assert_eq!(dir_in(&sub, "/system.slice"), None);
    }
}
