//! The DaemonSet's pod, translated into `podman run` flags: its capabilities, namespaces,
//! read-only root, no_new_privs, host mounts and ConfigMap. Read from the manifests themselves,
//! so the container podman.rs checks is the one deploy/kubernetes describes.
use std::{fs, path::Path};

use anyhow::{Context as _, Result, ensure};
use serde_yaml_ng::Value;

const DAEMONSET: &str = "deploy/kubernetes/daemonset.yaml";
const CONFIGMAP: &str = "deploy/kubernetes/configmap.yaml";

/// The container settings read from the DaemonSet and its ConfigMap.
pub struct DaemonSetRun {
    caps: Vec<String>,
    /// (host path, container path, HostToContainer propagation).
    mounts: Vec<(String, String, bool)>,
    config_dir: String,
    config: String,
    pub args: Vec<String>,
}

impl DaemonSetRun {
    pub fn from_manifests() -> Result<Self> {
        let ds: Value = serde_yaml_ng::from_str(&fs::read_to_string(DAEMONSET)?)?;
        let cm: Value = serde_yaml_ng::from_str(&fs::read_to_string(CONFIGMAP)?)?;
        let pod = &ds["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        // What this translation assumes; the kube checks hold the manifest to it.
        ensure!(
            pod["hostPID"] == Value::Bool(true)
                && pod["hostNetwork"] != Value::Bool(true)
                && sc["readOnlyRootFilesystem"] == Value::Bool(true)
                && sc["allowPrivilegeEscalation"] == Value::Bool(false),
            "{DAEMONSET} changed its namespaces or securityContext: update xtask/src/image/podman.rs"
        );
        let str_of = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let caps = c["securityContext"]["capabilities"]["add"]
            .as_sequence()
            .context("no capabilities.add")?
            .iter()
            .map(|v| format!("CAP_{}", str_of(v)))
            .collect();
        let volumes = pod["volumes"].as_sequence().context("no volumes")?;
        let mut mounts = Vec::new();
        let mut config_dir = String::new();
        for m in c["volumeMounts"].as_sequence().context("no volumeMounts")? {
            let v = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .context("mount without volume")?;
            let path = str_of(&m["mountPath"]);
            if v.get("configMap").is_some() {
                config_dir = path;
            } else {
                let host = str_of(&v["hostPath"]["path"]);
                mounts.push((
                    host,
                    path,
                    str_of(&m["mountPropagation"]) == "HostToContainer",
                ));
            }
        }
        let args = c["args"]
            .as_sequence()
            .map(|a| a.iter().map(str_of).collect())
            .unwrap_or_default();
        Ok(Self {
            caps,
            mounts,
            config_dir,
            config: str_of(&cm["data"]["config.toml"]),
            args,
        })
    }

    /// podman run flags; host paths missing on this machine are left out (and said), never
    /// created: /var/log/pods exists only on a kubelet's node.
    pub fn flags(&self, dir: &Path) -> Result<Vec<String>> {
        let conf = dir.join("config");
        fs::create_dir_all(&conf)?;
        fs::write(conf.join("config.toml"), &self.config)?;
        let mut f: Vec<String> = [
            "--pid=host",
            // The pod's own network namespace, without the CNI plugins a cluster has.
            "--network=none",
            "--read-only",
            "--security-opt=no-new-privileges",
            "--cap-drop=ALL",
        ]
        .map(String::from)
        .to_vec();
        f.push(format!("--cap-add={}", self.caps.join(",")));
        f.push(format!(
            "--volume={}:{}:ro",
            conf.display(),
            self.config_dir
        ));
        for (host, path, propagate) in &self.mounts {
            let host = if host == "/sys/fs/cgroup" {
                cgroup2_mount()?
            } else {
                host.clone()
            };
            if !Path::new(&host).is_dir() {
                eprintln!("image: {host} does not exist here: not mounted at {path}");
                continue;
            }
            f.push(format!(
                "--volume={host}:{path}:ro{}",
                if *propagate { ",rslave" } else { "" }
            ));
        }
        f.extend(rlimits());
        Ok(f)
    }
}

/// This host's cgroup2 hierarchy (on a v1+v2 hybrid not /sys/fs/cgroup itself but e.g.
/// /sys/fs/cgroup/unified), mounted where a v2 node's kubelet host has it.
fn cgroup2_mount() -> Result<String> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            post.starts_with("cgroup2 ")
                .then(|| pre.split(' ').nth(4).map(str::to_owned))?
        })
        .context("no cgroup2 mount on this host")
}

/// Podman asks the runtime for limits above this session's hard limits by default (nofile
/// 1048576), which only CAP_SYS_RESOURCE may raise; a session without it (like the one this
/// was written in) fails with "setrlimit RLIMIT_NOFILE: Operation not permitted". The
/// session's own nofile limit is enough; uid 0 is exempt from RLIMIT_NPROC anyway.
fn rlimits() -> Vec<String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_max.min(1 << 20)
    } else {
        1024
    };
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        "--ulimit=nproc=1024:1024".into(),
    ]
}
