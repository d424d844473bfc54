//! cgroup v2 id → path, from walks of the cgroup2 mount.
//!
//! The id of a v2 cgroup is the inode number of its directory in cgroupfs (kernfs hands the
//! same number to `readdir`'s `d_ino` and to `stat`, so a walk needs no `stat` per cgroup).
//! The map is filled by one walk at start and re-walked when an unknown id is asked for, at
//! most once per `min_rewalk`; ids still unknown after a walk are remembered for
//! `negative_ttl` so a stream of events from an unknowable cgroup costs nothing. A cgroup
//! gone from a walk stays resolvable for `retention` (late events of a container that just
//! exited), then is forgotten. At most `max_cgroups` are kept: when full, the
//! longest-removed cgroup makes room; with none removed the new one is left out and counted.
use std::{
    collections::{HashMap, VecDeque},
    fs,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::labels::Workload;

/// Ids remembered as unknown, at most.
const MAX_NEGATIVE: usize = 4096;

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub retention: Duration,
    pub max_cgroups: usize,
    pub min_rewalk: Duration,
    pub negative_ttl: Duration,
}

pub(super) struct Entry {
    /// Relative to the mount, without a leading `/`; empty for the mount's root.
    pub path: Box<str>,
    /// Built on first use, by `Workloads`.
    pub workload: Option<Arc<Workload>>,
    walk: u64,
    removed_at: Option<Instant>,
}

pub(super) struct CgroupIndex {
    limits: Limits,
    entries: HashMap<u64, Entry>,
    /// Removed cgroups in the order they went away (entries found again or already evicted
    /// are skipped when popped: their `removed_at` no longer matches).
    removed: VecDeque<(Instant, u64)>,
    negative: HashMap<u64, Instant>,
    last_walk: Option<Instant>,
    pub walks: u64,
    /// Cgroups left out because `max_cgroups` was reached, summed over walks.
    pub dropped: u64,
}

impl CgroupIndex {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            entries: HashMap::new(),
            removed: VecDeque::new(),
            negative: HashMap::new(),
            last_walk: None,
            walks: 0,
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn retained(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.removed_at.is_some())
            .count()
    }

    pub fn negative(&self) -> usize {
        self.negative.len()
    }

    /// The entry of `id` without walking; a cgroup removed longer than `retention` ago is
    /// forgotten here.
    pub fn cached(&mut self, id: u64, now: Instant) -> Option<&mut Entry> {
        let expired = self
            .entries
            .get(&id)?
            .removed_at
            .is_some_and(|t| self.expired(t, now));
        if expired {
            self.entries.remove(&id);
            return None;
        }
        self.entries.get_mut(&id)
    }

    /// The entry of `id`, re-walking `mount` on a miss unless the id was looked for in vain
    /// less than `negative_ttl` ago or the last walk was less than `min_rewalk` ago.
    pub fn lookup(&mut self, mount: &Path, id: u64, now: Instant) -> Option<&mut Entry> {
        if self.cached(id, now).is_some() {
            return self.entries.get_mut(&id);
        }
        let recent = |t: Option<Instant>, d: Duration| {
            t.is_some_and(|t| now.saturating_duration_since(t) < d)
        };
        if recent(self.negative.get(&id).copied(), self.limits.negative_ttl)
            || recent(self.last_walk, self.limits.min_rewalk)
        {
            return None;
        }
        self.walk(mount, now);
        if self.entries.contains_key(&id) {
            return self.entries.get_mut(&id);
        }
        if self.negative.len() >= MAX_NEGATIVE {
            let ttl = self.limits.negative_ttl;
            self.negative
                .retain(|_, t| now.saturating_duration_since(*t) < ttl);
            if self.negative.len() >= MAX_NEGATIVE {
                self.negative.clear();
            }
        }
        self.negative.insert(id, now);
        None
    }

    /// Walks the whole mount: new cgroups are added, missing ones marked removed.
    pub fn walk(&mut self, mount: &Path, now: Instant) {
        self.walks += 1;
        self.last_walk = Some(now);
        let walk = self.walks;
        self.expire(now);
        let mut new = Vec::new();
        for (id, path) in walk_tree(mount) {
            match self.entries.get_mut(&id) {
                Some(e) => {
                    e.walk = walk;
                    e.removed_at = None;
                    if *e.path != *path {
                        e.path = path.into();
                        e.workload = None;
                    }
                }
                None => new.push((id, path)),
            }
        }
        for (id, e) in &mut self.entries {
            if e.walk != walk && e.removed_at.is_none() {
                e.removed_at = Some(now);
                self.removed.push_back((now, *id));
            }
        }
        for (id, path) in new {
            if self.entries.len() >= self.limits.max_cgroups && !self.evict_one() {
                self.dropped += 1;
                continue;
            }
            self.negative.remove(&id);
            let entry = Entry {
                path: path.into(),
                workload: None,
                walk,
                removed_at: None,
            };
            self.entries.insert(id, entry);
        }
    }

    fn expired(&self, removed_at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(removed_at) >= self.limits.retention
    }

    /// Forgets cgroups removed longer than `retention` ago.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.removed.front() {
            if !self.expired(at, now) {
                break;
            }
            self.evict_one();
        }
    }

    /// Forgets the longest-removed cgroup still kept; false when none is.
    fn evict_one(&mut self) -> bool {
        while let Some((at, id)) = self.removed.pop_front() {
            if self
                .entries
                .get(&id)
                .is_some_and(|e| e.removed_at == Some(at))
            {
                self.entries.remove(&id);
                return true;
            }
        }
        false
    }
}

/// Every directory under `mount` (the mount itself included, as ""), with its inode number:
/// its cgroup id. Depth-first with an explicit stack (cgroup trees can be deep); directories
/// removed during the walk are skipped.
fn walk_tree(mount: &Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    match fs::metadata(mount) {
        Ok(m) => out.push((m.ino(), String::new())),
        Err(e) => {
            log::debug!("cgroup walk: {}: {e}", mount.display());
            return out;
        }
    }
    let mut stack: Vec<(PathBuf, String)> = vec![(mount.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let child = if rel.is_empty() {
                name.into_owned()
            } else {
                format!("{rel}/{name}")
            };
            out.push((entry.ino(), child.clone()));
            stack.push((entry.path(), child));
        }
    }
    out
}
