//! Which workload a socket belongs to, from its owner's cgroup v2 id: the systemd unit and
//! slice, the container, the Kubernetes pod (issue 13, point 2).
//!
//! - `mount`: the cgroup2 mount, found in /proc/self/mountinfo (never assumed; none → the
//!   resolver is off, said once in the log);
//! - `index`: id → path, by walking the mount once and again on a miss (rate-limited, with
//!   negative caching), keeping removed cgroups for a retention period, bounded in size;
//! - `labels`: the pure path → `Workload` parser (unit, slice, container, pod uid);
//! - `pods`: pod uid → namespace and name from the kubelet's `/var/log/pods` directories;
//! - `pid`: a process's cgroup from /proc/<pid>/cgroup, and its limit in a private cgroup
//!   namespace.
//!
//! `Workloads::resolve(id)` returns `None` for an id no walk has seen (or forgotten after its
//! retention), and `Some` for every known cgroup, with `Workload::is_empty` when its path
//! names no unit, container or pod.
mod index;
mod labels;
mod mount;
pub mod pid;
mod pods;
#[cfg(test)]
mod tests;

use std::{
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use index::{CgroupIndex, Limits};
pub use labels::{SHORT_ID, Workload, parse as parse_cgroup_path};
pub use mount::Cgroup2Mount;
use pods::PodNames;
pub use pods::parse_dir as parse_pod_dir;

/// The resolver's limits, fixed at construction.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// How long a removed cgroup still resolves (late events). Default 10 minutes.
    pub retention: Duration,
    /// Cgroups kept at most, live and removed; the rest is counted in `WorkloadStats::dropped`.
    /// Default 65 536.
    pub max_cgroups: usize,
    /// A miss re-walks the mount at most this often. Default 1 s.
    pub min_rewalk: Duration,
    /// An id a walk did not find is not looked for again during this time. Default 30 s.
    pub negative_ttl: Duration,
    /// The kubelet's pod log directory; `None` turns pod names off. Default `/var/log/pods`.
    pub pods_root: Option<PathBuf>,
    /// A pod uid without a directory rescans `pods_root` at most this often. Default 1 s.
    pub min_pod_rescan: Duration,
    /// Pods kept at most. Default 16 384.
    pub max_pods: usize,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(600),
            max_cgroups: 65_536,
            min_rewalk: Duration::from_secs(1),
            negative_ttl: Duration::from_secs(30),
            pods_root: Some(PathBuf::from("/var/log/pods")),
            min_pod_rescan: Duration::from_secs(1),
            max_pods: 16_384,
        }
    }
}

/// Counters and sizes, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    /// Cgroups known, removed ones in retention included.
    pub cgroups: usize,
    /// Of which removed, kept for late events.
    pub retained: usize,
    /// Cgroups left out because the cap was reached (summed over walks).
    pub dropped: u64,
    /// Walks of the cgroup2 mount so far.
    pub walks: u64,
    /// Ids remembered as not found.
    pub negative: usize,
    /// Pods whose name is known.
    pub pods: usize,
    /// Pod directories left out because the cap was reached (summed over scans).
    pub pods_dropped: u64,
}

/// cgroup v2 id → `Workload`, kept current by walks of the cgroup2 mount.
pub struct Workloads {
    mount: Option<Cgroup2Mount>,
    index: CgroupIndex,
    pods: PodNames,
}

impl Workloads {
    /// Finds the cgroup2 mount and walks it. Without one the resolver is off (logged once).
    pub fn new(config: WorkloadConfig) -> Self {
        let mount = Cgroup2Mount::detect();
        if mount.is_none() {
            log::warn!(
                "no cgroup2 mount in /proc/self/mountinfo: workload labels (unit, container, pod) are off"
            );
        }
        let w = Self::with_mount(mount, config);
        if let Some(m) = &w.mount {
            log::info!(
                "workload labels: cgroup2 at {} ({} cgroups)",
                m.path.display(),
                w.index.len()
            );
        }
        w
    }

    /// As `new`, on a given mount (or none): tests, or a mount found by other means.
    pub fn with_mount(mount: Option<Cgroup2Mount>, config: WorkloadConfig) -> Self {
        let limits = Limits {
            retention: config.retention,
            max_cgroups: config.max_cgroups,
            min_rewalk: config.min_rewalk,
            negative_ttl: config.negative_ttl,
        };
        let mut w = Self {
            mount,
            index: CgroupIndex::new(limits),
            pods: PodNames::new(config.pods_root, config.min_pod_rescan, config.max_pods),
        };
        w.refresh();
        w
    }

    /// False when there is no cgroup2 mount: every lookup is `None`.
    pub fn enabled(&self) -> bool {
        self.mount.is_some()
    }

    pub fn mount(&self) -> Option<&Cgroup2Mount> {
        self.mount.as_ref()
    }

    /// Walks the mount now, whatever the rate limit: new cgroups are added, removed ones start
    /// their retention. For a periodic task keeping removals timely; misses walk by themselves.
    pub fn refresh(&mut self) {
        if let Some(m) = &self.mount {
            self.index.walk(&m.path, Instant::now());
        }
    }

    /// The workload of cgroup `id`; an unknown id re-walks the mount (rate-limited,
    /// negatively cached). `None`: no such cgroup (or removed longer than the retention ago).
    pub fn resolve(&mut self, id: u64) -> Option<Arc<Workload>> {
        let mount = self.mount.as_ref()?;
        let now = Instant::now();
        let entry = self.index.lookup(&mount.path, id, now)?;
        let Some(known) = entry.workload.clone() else {
            let w = build(&mut self.pods, &entry.path, now);
            entry.workload = Some(w.clone());
            return Some(w);
        };
        // A pod whose name was not known yet: its directory may have appeared since.
        if let Some(uid) = known.pod_uid.as_deref()
            && known.pod.is_none()
            && let Some(pod) = self.pods.lookup(uid, now)
        {
            let mut named = Workload::clone(&known);
            named.pod = Some(pod.name.clone());
            named.k8s_namespace = Some(pod.namespace.clone());
            let named = Arc::new(named);
            entry.workload = Some(named.clone());
            return Some(named);
        }
        Some(known)
    }

    /// The cgroup's path relative to the mount, if known (no walk).
    pub fn path(&mut self, id: u64) -> Option<Box<str>> {
        self.index
            .cached(id, Instant::now())
            .map(|e| e.path.clone())
    }

    /// The cgroup id of `pid`'s v2 cgroup: the inode of its directory. `None` when the
    /// process is gone or its cgroup is outside our mount (see `pid` for namespaces).
    pub fn cgroup_id_of_pid(&self, pid: u32) -> Option<u64> {
        let dir = pid::dir_in(self.mount.as_ref()?, &pid::read(pid)?)?;
        std::fs::metadata(dir).ok().map(|m| m.ino())
    }

    /// The workload of `pid`, for when the socket's own cgroup is not known: by the id of
    /// its v2 cgroup when that is in our mount, else from the path /proc shows (relative in a
    /// private cgroup namespace: only what its visible components name).
    pub fn resolve_pid(&mut self, pid: u32) -> Option<Arc<Workload>> {
        let mount = self.mount.as_ref()?;
        let path = pid::read(pid)?;
        if let Some(dir) = pid::dir_in(mount, &path)
            && let Ok(meta) = std::fs::metadata(dir)
            && let Some(w) = self.resolve(meta.ino())
        {
            return Some(w);
        }
        Some(build(&mut self.pods, &path, Instant::now()))
    }

    pub fn stats(&self) -> WorkloadStats {
        WorkloadStats {
            cgroups: self.index.len(),
            retained: self.index.retained(),
            dropped: self.index.dropped,
            walks: self.index.walks,
            negative: self.index.negative(),
            pods: self.pods.len(),
            pods_dropped: self.pods.dropped,
        }
    }
}

/// The workload of a cgroup path, with the pod's name when the kubelet's directory has it.
fn build(pods: &mut PodNames, path: &str, now: Instant) -> Arc<Workload> {
    let mut w = parse_cgroup_path(path);
    if let Some(uid) = &w.pod_uid
        && let Some(pod) = pods.lookup(uid, now)
    {
        w.pod = Some(pod.name.clone());
        w.k8s_namespace = Some(pod.namespace.clone());
    }
    Arc::new(w)
}
