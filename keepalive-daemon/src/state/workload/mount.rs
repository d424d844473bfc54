//! Where the cgroup v2 hierarchy is mounted, read from /proc/self/mountinfo.
//!
//! Never assumed: a pure v2 host mounts it at /sys/fs/cgroup, a v1+v2 hybrid (systemd's
//! "hybrid" mode, like our development host) at /sys/fs/cgroup/unified, a container may have
//! it elsewhere or bind-mount only a subtree, and a host may not mount it at all.
use std::{fs, path::PathBuf};

/// A cgroup2 mount: the directory to walk and which part of the hierarchy it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// The mount point, e.g. `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`.
    pub path: PathBuf,
    /// The cgroup shown at the mount point, relative to our cgroup namespace's root
    /// (mountinfo's 4th field): `/` unless only a subtree is mounted.
    pub root: String,
}

impl Cgroup2Mount {
    /// The cgroup2 mount of this process's mount namespace, or `None` when there is none.
    pub fn detect() -> Option<Self> {
        match fs::read_to_string("/proc/self/mountinfo") {
            Ok(text) => Self::from_mountinfo(&text),
            Err(e) => {
                log::debug!("/proc/self/mountinfo: {e}");
                None
            }
        }
    }

    /// The best cgroup2 line of a mountinfo text: one showing the whole hierarchy (root `/`)
    /// if any, at the shortest mount point; otherwise the first cgroup2 mount.
    pub fn from_mountinfo(text: &str) -> Option<Self> {
        let mut best: Option<Self> = None;
        for line in text.lines() {
            let Some(m) = parse_line(line) else { continue };
            let better = match &best {
                None => true,
                Some(b) => {
                    let whole = |m: &Self| m.root == "/";
                    (whole(&m) && !whole(b))
                        || (whole(&m) == whole(b)
                            && m.path.as_os_str().len() < b.path.as_os_str().len())
                }
            };
            if better {
                best = Some(m);
            }
        }
        best
    }
}

/// `36 35 98:0 /root /mnt/point rw,noatime master:1 - cgroup2 cgroup2 rw`: the optional
/// fields end at the lone `-`, followed by the filesystem type.
fn parse_line(line: &str) -> Option<Cgroup2Mount> {
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    if sep < 5 || fields.get(sep + 1) != Some(&"cgroup2") {
        return None;
    }
    Some(Cgroup2Mount {
        path: PathBuf::from(unescape(fields[4])),
        root: unescape(fields[3]),
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";
    const PURE_V2: &str = "\
25 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate
";
    const V1_ONLY: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
";

    #[test]
    fn workload_mount_hybrid_is_unified() {
        let m = Cgroup2Mount::from_mountinfo(HYBRID).unwrap();
        assert_eq!(m.path, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m.root, "/");
    }

    #[test]
    fn workload_mount_pure_v2() {
        let m = Cgroup2Mount::from_mountinfo(PURE_V2).unwrap();
        assert_eq!(m.path, PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn workload_mount_none_on_v1_only() {
        assert_eq!(Cgroup2Mount::from_mountinfo(V1_ONLY), None);
        assert_eq!(Cgroup2Mount::from_mountinfo(""), None);
    }

    #[test]
    fn workload_mount_prefers_whole_hierarchy_and_unescapes() {
        let text = "\
50 1 0:40 /kubepods.slice /host/sub rw - cgroup2 cgroup2 rw
51 1 0:40 / /run/my\\040cgroup rw - cgroup2 cgroup2 rw
";
        let m = Cgroup2Mount::from_mountinfo(text).unwrap();
        assert_eq!(m.path, PathBuf::from("/run/my cgroup"));
        let only_sub = Cgroup2Mount::from_mountinfo(text.lines().next().unwrap()).unwrap();
        assert_eq!(only_sub.root, "/kubepods.slice");
    }
}
