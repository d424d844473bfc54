//! A Kubernetes pod's namespace and name from its uid, read from the kubelet's log
//! directories `/var/log/pods/<namespace>_<name>_<uid>/` (read-only: nothing is opened inside
//! them). Chosen over the CRI socket, which would need a gRPC client and the right to talk to
//! the runtime; the directory exists from the pod sandbox's start until the pod is garbage
//! collected. Names are never guessed: a uid without a directory has no name.
use std::{
    collections::HashMap,
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

/// A pod's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pod {
    pub namespace: Box<str>,
    pub name: Box<str>,
}

pub(super) struct PodNames {
    root: Option<PathBuf>,
    by_uid: HashMap<Box<str>, Pod>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
    cap: usize,
    /// Pod directories left out because `cap` was reached, summed over scans.
    pub dropped: u64,
    pub scans: u64,
}

impl PodNames {
    /// `root: None` turns pod names off.
    pub fn new(root: Option<PathBuf>, min_rescan: Duration, cap: usize) -> Self {
        Self {
            root,
            by_uid: HashMap::new(),
            last_scan: None,
            min_rescan,
            cap,
            dropped: 0,
            scans: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    /// The pod of `uid`; a miss rescans the directory, at most once per `min_rescan`.
    pub fn lookup(&mut self, uid: &str, now: Instant) -> Option<&Pod> {
        if !self.by_uid.contains_key(uid) {
            if self.root.is_none()
                || self
                    .last_scan
                    .is_some_and(|t| now.saturating_duration_since(t) < self.min_rescan)
            {
                return None;
            }
            self.scan(now);
        }
        self.by_uid.get(uid)
    }

    fn scan(&mut self, now: Instant) {
        let Some(root) = &self.root else { return };
        self.last_scan = Some(now);
        self.scans += 1;
        let dir = match fs::read_dir(root) {
            Ok(d) => d,
            Err(e) => {
                if self.scans == 1 {
                    log::debug!("{}: {e}; no pod names", root.display());
                }
                return;
            }
        };
        let mut found = HashMap::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some((namespace, pod, uid)) = name.to_str().and_then(parse_dir) else {
                continue;
            };
            if found.len() >= self.cap {
                self.dropped += 1;
                continue;
            }
            let pod = Pod {
                namespace: namespace.into(),
                name: pod.into(),
            };
            found.insert(uid.into(), pod);
        }
        self.by_uid = found;
    }
}

/// `<namespace>_<name>_<uid>`: namespaces and pod names are DNS names and cannot hold `_`,
/// so the name splits in exactly three non-empty parts, the last a pod uid.
pub fn parse_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.split('_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    let valid =
        parts.next().is_none() && !ns.is_empty() && !pod.is_empty() && super::labels::is_uid(uid);
    valid.then_some((ns, pod, uid))
}
