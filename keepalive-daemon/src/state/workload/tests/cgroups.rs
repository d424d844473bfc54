//! Real cgroups on this host's cgroup2 mount (found from mountinfo: /sys/fs/cgroup/unified on
//! the hybrid development host), named as systemd, docker, containerd, CRI-O, podman/crun and
//! the kubelet name them, below a `kat-test-<pid>-…` prefix; ids from `stat`.
use std::{
    fs,
    process::{Command, Stdio},
    sync::Arc,
    thread,
    time::Duration,
};

use super::{
    super::{Cgroup2Mount, Workload, WorkloadConfig, Workloads},
    Child, TempDir, TestTree, id_of,
    paths::{ID, ID2, UID},
    writable_mount,
};

const UID2: &str = "0f9e8d7c-6b5a-4c3d-8e1f-a0b1c2d3e4f5";

fn config(pods: &TempDir) -> WorkloadConfig {
    WorkloadConfig {
        pods_root: Some(pods.0.clone()),
        min_rewalk: Duration::from_millis(100),
        min_pod_rescan: Duration::from_millis(100),
        ..WorkloadConfig::default()
    }
}

fn labels(w: &Workload) -> [Option<&str>; 6] {
    [
        &w.unit,
        &w.slice,
        &w.container,
        &w.pod_uid,
        &w.pod,
        &w.k8s_namespace,
    ]
    .map(|f| f.as_deref())
}

#[test]
fn workload_real_cgroups_resolve() {
    let Some(mount) = writable_mount("workload_real_cgroups_resolve") else {
        return;
    };
    let tree = TestTree::new(&mount, "resolve");
    let pods = TempDir::new("pods");
    fs::create_dir(pods.0.join(format!("default_redis-0_{UID}"))).unwrap();
    fs::create_dir(pods.0.join(format!("kube-system_coredns-abc_{UID2}"))).unwrap();

    let us = UID.replace('-', "_");
    let us2 = UID2.replace('-', "_");
    let burstable =
        format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{us}.slice");
    let short = &ID[..12];
    let short2 = &ID2[..12];
    // (path, unit, slice, container, pod uid, pod, namespace)
    type Want<'a> = (String, [Option<&'a str>; 6]);
    let cases: Vec<Want> = vec![
        (
            "system.slice/redis-server.service".into(),
            [
                Some("redis-server.service"),
                Some("system.slice"),
                None,
                None,
                None,
                None,
            ],
        ),
        (
            "system.slice/system-getty.slice/getty@tty1.service".into(),
            [
                Some("getty@tty1.service"),
                Some("system-getty.slice"),
                None,
                None,
                None,
                None,
            ],
        ),
        (
            "user.slice/user-1000.slice/session-3.scope".into(),
            [
                Some("session-3.scope"),
                Some("user-1000.slice"),
                None,
                None,
                None,
                None,
            ],
        ),
        (
            "user.slice/user-1000.slice/user@1000.service/app.slice/foo.service".into(),
            [
                Some("user@1000.service"),
                Some("user-1000.slice"),
                None,
                None,
                None,
                None,
            ],
        ),
        ("user.slice/user-1000.slice".into(), [None; 6]),
        ("init.scope".into(), [None; 6]),
        (
            format!("system.slice/docker-{ID}.scope"),
            [None, None, Some(short), None, None, None],
        ),
        (
            format!("docker/{ID2}"),
            [None, None, Some(short2), None, None, None],
        ),
        (
            format!("{burstable}/cri-containerd-{ID}.scope"),
            [
                None,
                None,
                Some(short),
                Some(UID),
                Some("redis-0"),
                Some("default"),
            ],
        ),
        (
            format!("{burstable}/crio-{ID2}.scope"),
            [
                None,
                None,
                Some(short2),
                Some(UID),
                Some("redis-0"),
                Some("default"),
            ],
        ),
        (
            format!("{burstable}/crio-conmon-{ID2}.scope"),
            [
                None,
                None,
                None,
                Some(UID),
                Some("redis-0"),
                Some("default"),
            ],
        ),
        (
            format!("kubepods.slice/kubepods-pod{us2}.slice/cri-containerd-{ID2}.scope"),
            [
                None,
                None,
                Some(short2),
                Some(UID2),
                Some("coredns-abc"),
                Some("kube-system"),
            ],
        ),
        (
            format!("kubepods/burstable/pod{UID}/{ID}"),
            [
                None,
                None,
                Some(short),
                Some(UID),
                Some("redis-0"),
                Some("default"),
            ],
        ),
        (
            format!("kubepods/pod{UID2}/{ID2}"),
            [
                None,
                None,
                Some(short2),
                Some(UID2),
                Some("coredns-abc"),
                Some("kube-system"),
            ],
        ),
        (
            format!("machine.slice/libpod-{ID}.scope/container"),
            [None, None, Some(short), None, None, None],
        ),
        (
            format!("machine.slice/libpod-{ID}.scope"),
            [None, None, Some(short), None, None, None],
        ),
        (format!("machine.slice/libpod-conmon-{ID}.scope"), [None; 6]),
    ];
    let ids: Vec<u64> = cases.iter().map(|(p, _)| tree.mkdir(p)).collect();

    let mut w = Workloads::with_mount(Some(mount.clone()), config(&pods));
    assert!(w.enabled());
    for ((path, want), id) in cases.iter().zip(&ids) {
        let got = w
            .resolve(*id)
            .unwrap_or_else(|| panic!("{path} (id {id}) did not resolve"));
        assert_eq!(labels(&got), *want, "{path}");
        let full = format!("{}/{path}", tree.rel());
        assert_eq!(w.path(*id).as_deref(), Some(full.as_str()));
    }
    // Shared, not rebuilt: the same Arc on every lookup.
    assert!(Arc::ptr_eq(
        &w.resolve(ids[0]).unwrap(),
        &w.resolve(ids[0]).unwrap()
    ));
    // The test tree's own root is a cgroup without labels.
    assert!(w.resolve(id_of(&tree.root)).unwrap().is_empty());
}

#[test]
fn workload_real_cgroups_retention_and_misses() {
    let Some(mount) = writable_mount("workload_real_cgroups_retention_and_misses") else {
        return;
    };
    let tree = TestTree::new(&mount, "retention");
    let pods = TempDir::new("pods");
    let redis = tree.mkdir("system.slice/redis-server.service");
    let retention = Duration::from_millis(1500);
    let cfg = WorkloadConfig {
        retention,
        negative_ttl: Duration::from_secs(60),
        ..config(&pods)
    };
    let mut w = Workloads::with_mount(Some(mount), cfg);
    assert_eq!(
        w.resolve(redis).unwrap().unit.as_deref(),
        Some("redis-server.service")
    );

    // Created after the start: a miss re-walks (once the rate limit allows).
    let docker = tree.mkdir(&format!("system.slice/docker-{ID}.scope"));
    thread::sleep(Duration::from_millis(150));
    let walks = w.stats().walks;
    assert_eq!(
        w.resolve(docker).unwrap().container.as_deref(),
        Some(&ID[..12])
    );
    assert_eq!(w.stats().walks, walks + 1);

    // An id no cgroup has: one walk, then negatively cached (no walk however often asked).
    let unknown = u64::MAX - 7;
    thread::sleep(Duration::from_millis(150));
    assert!(w.resolve(unknown).is_none());
    let walks = w.stats().walks;
    thread::sleep(Duration::from_millis(150));
    for _ in 0..100 {
        assert!(w.resolve(unknown).is_none());
    }
    assert_eq!(w.stats().walks, walks);
    assert!(w.stats().negative >= 1);

    // Removed: still resolves within the retention, not after.
    tree.rmdir("system.slice/redis-server.service");
    w.refresh();
    assert!(w.stats().retained >= 1);
    assert_eq!(
        w.resolve(redis).unwrap().unit.as_deref(),
        Some("redis-server.service")
    );
    thread::sleep(retention + Duration::from_millis(200));
    assert!(w.resolve(redis).is_none(), "resolved after its retention");
    // Still there: the live one.
    assert!(w.resolve(docker).is_some());
}

#[test]
fn workload_real_cgroups_cap() {
    let Some(mount) = writable_mount("workload_real_cgroups_cap") else {
        return;
    };
    let tree = TestTree::new(&mount, "cap");
    let a = tree.mkdir("a.service");
    let b = tree.mkdir("b.service");
    // The test tree as the "mount": root + a + b = the cap of 3.
    let sub = Cgroup2Mount {
        path: tree.root.clone(),
        root: "/".into(),
    };
    let pods = TempDir::new("pods");
    let cfg = WorkloadConfig {
        max_cgroups: 3,
        ..config(&pods)
    };
    let mut w = Workloads::with_mount(Some(sub), cfg);
    assert_eq!((w.stats().cgroups, w.stats().dropped), (3, 0));
    assert_eq!(w.resolve(a).unwrap().unit.as_deref(), Some("a.service"));

    // b goes, c comes: the removed cgroup makes room (it would have been retained otherwise).
    tree.rmdir("b.service");
    let c = tree.mkdir("c.service");
    w.refresh();
    assert_eq!((w.stats().cgroups, w.stats().dropped), (3, 0));
    assert!(w.resolve(b).is_none());
    assert_eq!(w.resolve(c).unwrap().unit.as_deref(), Some("c.service"));

    // Full with live cgroups: the new one is left out and counted.
    let d = tree.mkdir("d.service");
    w.refresh();
    assert_eq!((w.stats().cgroups, w.stats().dropped), (3, 1));
    thread::sleep(Duration::from_millis(150));
    assert!(w.resolve(d).is_none());
    assert!(w.stats().dropped >= 2, "the miss's walk counts it again");
}

#[test]
fn workload_real_pid_and_late_pod_name() {
    let Some(mount) = writable_mount("workload_real_pid_and_late_pod_name") else {
        return;
    };
    let tree = TestTree::new(&mount, "pid");
    let pods = TempDir::new("pods");
    let unit_id = tree.mkdir("system.slice/redis-server.service");
    let pod_path = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
        UID.replace('-', "_")
    );
    let pod_id = tree.mkdir(&pod_path);
    let mut w = Workloads::with_mount(Some(mount), config(&pods));

    // A real process moved into the service's cgroup, as systemd would start it.
    let child = Child(
        Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    fs::write(
        tree.root
            .join("system.slice/redis-server.service/cgroup.procs"),
        pid.to_string(),
    )
    .unwrap();
    assert_eq!(w.cgroup_id_of_pid(pid), Some(unit_id));
    assert_eq!(
        w.resolve_pid(pid).unwrap().unit.as_deref(),
        Some("redis-server.service")
    );
    drop(child);

    // The pod's directory appears after its cgroup: unnamed until then, never guessed.
    let first = w.resolve(pod_id).unwrap();
    assert_eq!(
        (first.pod_uid.as_deref(), first.pod.as_deref()),
        (Some(UID), None)
    );
    fs::create_dir(pods.0.join(format!("shop_cart-7d9f_{UID}"))).unwrap();
    thread::sleep(Duration::from_millis(150));
    let named = w.resolve(pod_id).unwrap();
    assert_eq!(
        labels(&named)[3..],
        [Some(UID), Some("cart-7d9f"), Some("shop")]
    );
    assert_eq!(named.container.as_deref(), Some(&ID[..12]));
}
