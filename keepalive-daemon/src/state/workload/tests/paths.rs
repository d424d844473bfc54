//! The path parser on every pattern, positive and negative, with and without a prefix.
use super::super::{Workload, parse_cgroup_path, parse_pod_dir};

pub(super) const ID: &str = "3f4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778a";
pub(super) const ID2: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";
pub(super) const UID: &str = "8d3c1b2a-4e5f-4a6b-9c7d-0e1f2a3b4c5d";

/// The labels a path should give: (unit, slice, container, pod_uid).
fn expect(
    path: &str,
    unit: Option<&str>,
    slice: Option<&str>,
    ctr: Option<&str>,
    pod: Option<&str>,
) {
    let got = parse_cgroup_path(path);
    let want = Workload {
        unit: unit.map(Into::into),
        slice: slice.map(Into::into),
        container: ctr.map(Into::into),
        pod_uid: pod.map(Into::into),
        pod: None,
        k8s_namespace: None,
    };
    assert_eq!(got, want, "{path}");
    // A prefix above the interesting part changes nothing.
    for prefix in ["/kat-test-4242", "/../..", "/a/b.slice/c"] {
        let prefixed = format!("{prefix}{path}");
        assert_eq!(parse_cgroup_path(&prefixed), got, "{prefixed}");
    }
}

fn short(id: &str) -> String {
    id[..12].to_owned()
}

#[test]
fn workload_paths_systemd_units() {
    expect(
        "/system.slice/redis-server.service",
        Some("redis-server.service"),
        Some("system.slice"),
        None,
        None,
    );
    // Templated units live in system-<name>.slice.
    expect(
        "/system.slice/system-getty.slice/getty@tty1.service",
        Some("getty@tty1.service"),
        Some("system-getty.slice"),
        None,
        None,
    );
    expect(
        "/system.slice/system-postgresql.slice/postgresql@15-main.service",
        Some("postgresql@15-main.service"),
        Some("system-postgresql.slice"),
        None,
        None,
    );
    // A service's own sub-cgroups (delegation) belong to it.
    expect(
        "/system.slice/containerd.service/sub",
        Some("containerd.service"),
        Some("system.slice"),
        None,
        None,
    );
    expect(
        "/machine.slice/machine-qemu\\x2d1.scope",
        Some("machine-qemu\\x2d1.scope"),
        Some("machine.slice"),
        None,
        None,
    );
}

#[test]
fn workload_paths_user_sessions() {
    expect(
        "/user.slice/user-1000.slice/session-3.scope",
        Some("session-3.scope"),
        Some("user-1000.slice"),
        None,
        None,
    );
    // The user manager and everything it runs: the system unit is user@<uid>.service.
    let manager = "/user.slice/user-1000.slice/user@1000.service";
    expect(
        manager,
        Some("user@1000.service"),
        Some("user-1000.slice"),
        None,
        None,
    );
    expect(
        &format!("{manager}/init.scope"),
        Some("user@1000.service"),
        Some("user-1000.slice"),
        None,
        None,
    );
    expect(
        &format!("{manager}/app.slice/foo.service"),
        Some("user@1000.service"),
        Some("user-1000.slice"),
        None,
        None,
    );
    // Rootless podman: the user's manager, and the container.
    expect(
        &format!("{manager}/user.slice/libpod-{ID}.scope/container"),
        Some("user@1000.service"),
        Some("user-1000.slice"),
        Some(&short(ID)),
        None,
    );
}

#[test]
fn workload_paths_not_units() {
    expect("/", None, None, None, None);
    expect("", None, None, None, None);
    expect("/init.scope", None, None, None, None);
    expect("/user.slice", None, None, None, None);
    expect("/user.slice/user-1000.slice", None, None, None, None);
    expect("/system.slice", None, None, None, None);
    expect(
        "/kubepods.slice/kubepods-burstable.slice",
        None,
        None,
        None,
        None,
    );
    // Names that only end like units.
    expect("/.service", None, None, None, None);
    expect("/system.slice/foo.service.d", None, None, None, None);
}

#[test]
fn workload_paths_docker() {
    expect(
        &format!("/system.slice/docker-{ID}.scope"),
        None,
        None,
        Some(&short(ID)),
        None,
    );
    // cgroupfs driver.
    expect(&format!("/docker/{ID}"), None, None, Some(&short(ID)), None);
    // Docker in docker: the innermost container.
    expect(
        &format!("/system.slice/docker-{ID}.scope/docker/{ID2}"),
        None,
        None,
        Some(&short(ID2)),
        None,
    );
    // The daemon itself is a unit, not a container.
    expect(
        "/system.slice/docker.service",
        Some("docker.service"),
        Some("system.slice"),
        None,
        None,
    );
    // Not a 64-hex id: no container.
    expect(
        "/system.slice/docker-abc.scope",
        Some("docker-abc.scope"),
        Some("system.slice"),
        None,
        None,
    );
    expect(&format!("/docker/{}", &ID[..63]), None, None, None, None);
    expect(
        &format!("/docker/{}", ID.to_uppercase()),
        None,
        None,
        None,
        None,
    );
    // A bare id elsewhere is not trusted.
    expect(&format!("/other/{ID}"), None, None, None, None);
}

#[test]
fn workload_paths_containerd_crio_podman() {
    let pod = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        UID.replace('-', "_")
    );
    expect(
        &format!("{pod}/cri-containerd-{ID}.scope"),
        None,
        None,
        Some(&short(ID)),
        Some(UID),
    );
    expect(
        &format!("{pod}/crio-{ID}.scope"),
        None,
        None,
        Some(&short(ID)),
        Some(UID),
    );
    // conmon is not the container (but is in the pod).
    expect(
        &format!("{pod}/crio-conmon-{ID}.scope"),
        None,
        None,
        None,
        Some(UID),
    );
    expect(
        &format!("/machine.slice/libpod-{ID}.scope"),
        None,
        None,
        Some(&short(ID)),
        None,
    );
    expect(
        &format!("/machine.slice/libpod-conmon-{ID}.scope"),
        None,
        None,
        None,
        None,
    );
    // crun's sub-cgroup: the parent's id.
    expect(
        &format!("/machine.slice/libpod-{ID}.scope/container"),
        None,
        None,
        Some(&short(ID)),
        None,
    );
    // cgroupfs podman and CRI-O.
    expect(
        &format!("/libpod_parent/libpod-{ID}"),
        None,
        None,
        Some(&short(ID)),
        None,
    );
    expect(
        &format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
        None,
        None,
        Some(&short(ID)),
        Some(UID),
    );
}

#[test]
fn workload_paths_kubernetes() {
    let us = UID.replace('-', "_");
    // systemd driver, each QoS class; Guaranteed pods have no QoS level.
    for qos in ["burstable", "besteffort"] {
        let p = format!(
            "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{us}.slice/cri-containerd-{ID}.scope"
        );
        expect(&p, None, None, Some(&short(ID)), Some(UID));
    }
    expect(
        &format!("/kubepods.slice/kubepods-pod{us}.slice/cri-containerd-{ID}.scope"),
        None,
        None,
        Some(&short(ID)),
        Some(UID),
    );
    // The pod's own cgroup, before any container.
    expect(
        &format!("/kubepods.slice/kubepods-pod{us}.slice"),
        None,
        None,
        None,
        Some(UID),
    );
    // kind / a kubelet with a --cgroup-root: kubelet-kubepods-….
    expect(
        &format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{us}.slice/cri-containerd-{ID}.scope"
        ),
        None,
        None,
        Some(&short(ID)),
        Some(UID),
    );
    // cgroupfs driver: the container cgroup is the bare id.
    expect(
        &format!("/kubepods/burstable/pod{UID}/{ID}"),
        None,
        None,
        Some(&short(ID)),
        Some(UID),
    );
    expect(
        &format!("/kubepods/besteffort/pod{UID}/{ID}"),
        None,
        None,
        Some(&short(ID)),
        Some(UID),
    );
    expect(
        &format!("/kubepods/pod{UID}/{ID}"),
        None,
        None,
        Some(&short(ID)),
        Some(UID),
    );
    // Static pods: a 32-hex hash as uid.
    let hash = "0123456789abcdef0123456789abcdef";
    expect(
        &format!("/kubepods/pod{hash}/{ID}"),
        None,
        None,
        Some(&short(ID)),
        Some(hash),
    );
}

#[test]
fn workload_paths_not_pods() {
    let us = UID.replace('-', "_");
    // Not under kubepods / not a kubepods slice.
    expect(&format!("/pod{UID}/{ID}"), None, None, None, None);
    expect(
        &format!("/other/burstable/pod{UID}"),
        None,
        None,
        None,
        None,
    );
    expect(
        &format!("/system.slice/foo-pod{us}.slice"),
        None,
        None,
        None,
        None,
    );
    expect(
        &format!("/kubepods.slice/kubepods-guaranteed-pod{us}.slice"),
        None,
        None,
        None,
        None,
    );
    // Not a uid.
    expect("/kubepods/burstable/podxyz", None, None, None, None);
    expect(
        "/kubepods.slice/kubepods-pod1234.slice",
        None,
        None,
        None,
        None,
    );
}

#[test]
fn workload_paths_pod_dirs() {
    assert_eq!(
        parse_pod_dir(&format!("default_redis-0_{UID}")),
        Some(("default", "redis-0", UID))
    );
    assert_eq!(
        parse_pod_dir(&format!("kube-system_coredns-5d78c9869d-abcde_{UID}")),
        Some(("kube-system", "coredns-5d78c9869d-abcde", UID))
    );
    assert_eq!(parse_pod_dir("default_redis-0"), None);
    assert_eq!(parse_pod_dir(&format!("a_b_c_{UID}")), None);
    assert_eq!(parse_pod_dir(&format!("_redis_{UID}")), None);
    assert_eq!(parse_pod_dir("default_redis_not-a-uid"), None);
}
