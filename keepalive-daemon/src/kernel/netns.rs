//! Finding the host's network namespaces: every `/proc/<pid>/ns/net` and every bind mount under
//! `/run/netns` (namespaces made with `ip netns add` may have no process yet).
use std::{collections::HashMap, fs, os::unix::fs::MetadataExt as _, path::PathBuf};

/// Namespace inode → a path that opens it.
pub fn discover() -> HashMap<u32, PathBuf> {
    let mut found = HashMap::new();
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            if let Ok(md) = fs::metadata(e.path()) {
                found.entry(md.ino() as u32).or_insert(e.path());
            }
        }
    }
    if let Ok(procs) = fs::read_dir("/proc") {
        for e in procs.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if let Some(ino) = fs::read_link(&path)
                .ok()
                .and_then(|l| inode_of_link(l.to_str()?))
            {
                found.entry(ino).or_insert(path);
            }
        }
    }
    found
}

fn inode_of_link(link: &str) -> Option<u32> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_namespace() {
        let own = fs::read_link("/proc/self/ns/net")
            .ok()
            .and_then(|l| inode_of_link(l.to_str()?))
            .expect("own netns");
        assert!(discover().contains_key(&own));
        assert_eq!(inode_of_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(inode_of_link("mnt:[4026531840]"), None);
    }
}
