//! The workload a cgroup path names: systemd unit and slice, container, Kubernetes pod uid.
//!
//! Pure: works on the path's components only, one at a time, so a prefix above the
//! interesting part (a test's `kat-test-<pid>/`, a nested cgroup root, the `/../..` of a path
//! seen from another cgroup namespace) changes nothing. Each runtime is recognised by the
//! name it gives its scope, never by a loose "64 hex characters somewhere" regex (which broke
//! with every runtime change for other tools: grafana/beyla#588, pixie#377).

/// What a socket's cgroup says about who owns it. Each field is `None` when the path does not
/// say it; `pod` and `k8s_namespace` are filled from the kubelet's log directories by
/// `Workloads`, never guessed. Small (six pointers' worth) and shared as `Arc<Workload>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Workload {
    /// The systemd unit, as `_SYSTEMD_UNIT` in the journal: the outermost `*.service` or
    /// `*.scope` component that is neither `init.scope` (systemd's own) nor a container
    /// runtime's scope. A user's services fold into their `user@<uid>.service`; login
    /// sessions are `session-<N>.scope`; templated units keep their instance
    /// (`getty@tty1.service`).
    pub unit: Option<Box<str>>,
    /// The slice holding `unit` (its nearest `*.slice` ancestor: `system.slice`,
    /// `system-getty.slice` for templated units, `user-1000.slice`); `None` without a unit.
    pub slice: Option<Box<str>>,
    /// The container's id, short form (12 hex characters), from the innermost runtime scope:
    /// `docker-<id>.scope`, cgroupfs `docker/<id>`, `cri-containerd-<id>.scope`,
    /// `crio-<id>.scope`, `libpod-<id>.scope` and a bare `<id>` under a Kubernetes pod's
    /// cgroupfs directory. crun's `<scope>/container` sub-cgroup belongs to its parent's id.
    /// The runtime monitors `crio-conmon-<id>.scope` and `libpod-conmon-<id>.scope` are not
    /// containers.
    pub container: Option<Box<str>>,
    /// The Kubernetes pod's uid: `kubepods[-<qos>]-pod<uid with _>.slice` (systemd driver,
    /// underscores turned back into dashes) or `kubepods/[<qos>/]pod<uid>` (cgroupfs driver).
    pub pod_uid: Option<Box<str>>,
    /// The pod's name, from the kubelet's `/var/log/pods/<namespace>_<name>_<uid>/`.
    pub pod: Option<Box<str>>,
    /// The pod's namespace, from the same directory name.
    pub k8s_namespace: Option<Box<str>>,
}

impl Workload {
    /// True when nothing is known: a cgroup outside any unit, container or pod.
    pub fn is_empty(&self) -> bool {
        self.unit.is_none()
            && self.slice.is_none()
            && self.container.is_none()
            && self.pod_uid.is_none()
    }
}

/// Characters of the short container id, as `docker ps` prints it.
pub const SHORT_ID: usize = 12;

/// The labels a cgroup path gives (`pod` and `k8s_namespace` stay `None`: they need the
/// kubelet's directories). `path` is relative to any root; empty components, `.` and `..`
/// are skipped.
pub fn parse(path: &str) -> Workload {
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect();
    let mut w = Workload::default();
    let mut slice: Option<&str> = None;
    let mut pod_at: Option<usize> = None;
    for (i, c) in comps.iter().copied().enumerate() {
        let prev = i.checked_sub(1).map(|p| comps[p]);
        match runtime_scope(c) {
            Some(Scope::Container(id)) => {
                w.container = Some(id[..SHORT_ID].into());
                continue;
            }
            Some(Scope::Monitor) => continue,
            None => {}
        }
        if is_hex64(c)
            && (prev == Some("docker") || (pod_at.is_some() && pod_at == i.checked_sub(1)))
        {
            w.container = Some(c[..SHORT_ID].into());
            continue;
        }
        if let Some(uid) = pod_uid(c, prev, i.checked_sub(2).map(|p| comps[p])) {
            w.pod_uid = Some(uid.into());
            pod_at = Some(i);
            continue;
        }
        if w.unit.is_some() {
            continue;
        }
        if c.ends_with(".slice") {
            slice = Some(c);
        } else if is_unit(c) {
            w.unit = Some(c.into());
            w.slice = slice.map(Into::into);
        }
    }
    w
}

enum Scope<'a> {
    /// A container's own cgroup, with its full id.
    Container(&'a str),
    /// The runtime's monitor (conmon) next to a container: not the container.
    Monitor,
}

/// A container runtime's cgroup name, with or without systemd's `.scope` (cgroupfs podman
/// and CRI-O use the same names without it).
fn runtime_scope(c: &str) -> Option<Scope<'_>> {
    let stem = c.strip_suffix(".scope").unwrap_or(c);
    for monitor in ["crio-conmon-", "libpod-conmon-"] {
        if stem.strip_prefix(monitor).is_some_and(is_hex64) {
            return Some(Scope::Monitor);
        }
    }
    for runtime in ["docker-", "cri-containerd-", "crio-", "libpod-"] {
        if let Some(id) = stem.strip_prefix(runtime)
            && is_hex64(id)
        {
            return Some(Scope::Container(id));
        }
    }
    None
}

/// A systemd unit a process can run in: services and scopes, except systemd's own
/// `init.scope` (PID 1, or a user manager inside its `user@<uid>.service`).
fn is_unit(c: &str) -> bool {
    let named = |suffix: &str| c.strip_suffix(suffix).is_some_and(|s| !s.is_empty());
    (named(".service") || named(".scope")) && c != "init.scope"
}

/// A Kubernetes pod's cgroup: systemd driver `kubepods-pod<uid>.slice` (Guaranteed),
/// `kubepods-<qos>-pod<uid>.slice` (uid with `_` for `-`, under any cgroup-root prefix such
/// as kind's `kubelet-kubepods-…`), or cgroupfs `pod<uid>` right below `kubepods` or
/// `kubepods/<qos>`.
fn pod_uid(c: &str, prev: Option<&str>, prev2: Option<&str>) -> Option<String> {
    if let Some(stem) = c.strip_suffix(".slice") {
        let at = stem.rfind("-pod")?;
        let owner = &stem[..at];
        let qos_ok = ["kubepods", "kubepods-burstable", "kubepods-besteffort"]
            .iter()
            .any(|k| owner == *k || owner.strip_suffix(k).is_some_and(|p| p.ends_with('-')));
        let uid = stem[at + 4..].replace('_', "-");
        return (qos_ok && is_uid(&uid)).then_some(uid);
    }
    let uid = c.strip_prefix("pod")?;
    let under_kubepods = prev == Some("kubepods")
        || (matches!(prev, Some("burstable" | "besteffort")) && prev2 == Some("kubepods"));
    (under_kubepods && is_uid(uid)).then(|| uid.to_owned())
}

/// A pod uid: a UUID (36 characters), or a static pod's 32-hex hash.
pub(super) fn is_uid(s: &str) -> bool {
    (32..=36).contains(&s.len()) && s.bytes().all(|b| b == b'-' || is_lower_hex(b))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}
