//! `cargo xtask kube`: deploy/kubernetes checked three ways, each able to fail:
//!
//! - kubernetes-validate `--strict` (unknown fields are errors) against the oldest and the
//!   newest Kubernetes the manifests support, every built-in resource; and proof that it bites:
//!   a misspelt field must be refused, and the release before the oldest must refuse the
//!   manifest (else the oldest is not the oldest);
//! - the prometheus-operator resources, which it cannot check, against the CRDs' fields
//!   (monitors.rs);
//! - the manifests against each other, the daemon's needs and the API server's cross-field
//!   rules (consistency.rs), and the kustomizations against the files.
mod consistency;
mod monitors;

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_yaml_ng::Value;

use crate::setup;

/// The oldest Kubernetes the manifests support: securityContext.appArmorProfile is 1.30+.
pub const OLDEST: &str = "1.30";
/// The release before it, which must refuse them.
const BEFORE_OLDEST: &str = "1.29";
/// The newest kubernetes-validate (setup::KUBERNETES_VALIDATE) has schemas for.
pub const NEWEST: &str = "1.37";

const DIR: &str = "deploy/kubernetes";
const OPERATOR_DIR: &str = "deploy/kubernetes/prometheus-operator";
const UNIT: &str = "deploy/systemd/keepalive-daemon.service";

#[derive(clap::Parser)]
pub struct Options {}

pub fn run(_: Options) -> Result<()> {
    check()
}

/// Every check; installs the pinned kubernetes-validate first if needed.
pub fn check() -> Result<()> {
    let validator = setup::kubernetes_validate()?;
    let files = manifests()?;
    let mut docs = Vec::new();
    for f in &files {
        docs.extend(load(f)?.into_iter().map(|d| (f.clone(), d)));
    }
    let (custom, builtin): (Vec<_>, Vec<_>) = docs
        .iter()
        .partition(|(_, d)| s(&d["apiVersion"]).starts_with("monitoring.coreos.com/"));
    let builtin_files: BTreeSet<&PathBuf> = builtin.iter().map(|(f, _)| f).collect();
    schemas(&validator, &builtin_files, builtin.len())?;
    bites(&validator)?;
    for (f, d) in &custom {
        monitors::check(d).with_context(|| format!("{}", f.display()))?;
    }
    kustomizations(&files)?;
    let unit_caps = consistency::unit_capabilities(&fs::read_to_string(UNIT)?)?;
    consistency::check(
        &consistency::Docs(docs.iter().map(|(_, d)| d).collect()),
        &unit_caps,
    )?;
    eprintln!(
        "kube: {} resources in {} files: kubernetes-validate --strict {OLDEST} and {NEWEST}, \
         {} prometheus-operator resources against the CRDs' fields, cross-checks passed",
        docs.len(),
        files.len(),
        custom.len()
    );
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Every manifest file (not the kustomizations), sorted.
fn manifests() -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in [DIR, OPERATOR_DIR] {
        for e in fs::read_dir(dir).with_context(|| format!("reading {dir}"))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "yaml")
                && p.file_name() != Some("kustomization.yaml".as_ref())
            {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn load(path: &Path) -> Result<Vec<Value>> {
    use serde::Deserialize as _;
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for d in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(d).with_context(|| format!("{}: not YAML", path.display()))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// kubernetes-validate --strict on the built-in resources, oldest and newest; anything but a
/// pass for each resource and version (an error, a warning such as a missing schema) fails.
fn schemas(validator: &Path, files: &BTreeSet<&PathBuf>, resources: usize) -> Result<()> {
    let out = Command::new(validator)
        .args(["--strict", "-k", OLDEST, "-k", NEWEST])
        .args(files.iter())
        .output()
        .with_context(|| format!("running {}", validator.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let bad: Vec<&str> = text.lines().filter(|l| !l.starts_with("INFO ")).collect();
    ensure!(
        out.status.success() && bad.is_empty(),
        "kubernetes-validate --strict: {}",
        if bad.is_empty() {
            String::from_utf8_lossy(&out.stderr).trim().to_owned()
        } else {
            bad.join("\n  ")
        }
    );
    let passed = text
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    ensure!(
        passed == resources * 2,
        "kubernetes-validate passed {passed} resource checks, expected {} ({resources} resources × 2 versions)",
        resources * 2
    );
    eprint!("{text}");
    Ok(())
}

/// The validation can fail: a misspelt field is refused, and so is the whole DaemonSet one
/// release before the oldest we claim.
fn bites(validator: &Path) -> Result<()> {
    let ds = fs::read_to_string(Path::new(DIR).join("daemonset.yaml"))?;
    let broken = std::env::temp_dir().join(format!("ka-kube-broken-{}.yaml", std::process::id()));
    fs::write(
        &broken,
        ds.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"),
    )?;
    let out = Command::new(validator)
        .args(["--strict", "-k", NEWEST])
        .arg(&broken)
        .output()?;
    let _ = fs::remove_file(&broken);
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !out.status.success() && said.contains("readOnlyRootFileSystem"),
        "kubernetes-validate --strict accepted a misspelt field (readOnlyRootFileSystem): the schema check checks nothing: {said}"
    );
    let old = Command::new(validator)
        .args(["--strict", "-k", BEFORE_OLDEST])
        .arg(Path::new(DIR).join("daemonset.yaml"))
        .output()?;
    ensure!(
        !old.status.success(),
        "daemonset.yaml also validates against Kubernetes {BEFORE_OLDEST}: lower OLDEST in \
         xtask/src/kube/mod.rs and docs/kubernetes.md to the oldest release that accepts it"
    );
    Ok(())
}

/// `kubectl apply -k` must install exactly the files: every manifest of deploy/kubernetes
/// listed, every listed file present, and the image name the DaemonSet uses rewritten.
fn kustomizations(files: &[PathBuf]) -> Result<()> {
    let base = &load(&Path::new(DIR).join("kustomization.yaml"))?[0];
    let listed: BTreeSet<&str> = base["resources"]
        .as_sequence()
        .context("no resources")?
        .iter()
        .map(s)
        .collect();
    let present: BTreeSet<&str> = files
        .iter()
        .filter(|f| f.parent() == Some(Path::new(DIR)))
        .filter_map(|f| f.file_name()?.to_str())
        .collect();
    ensure!(
        listed == present,
        "{DIR}/kustomization.yaml lists {listed:?}, the directory holds {present:?}"
    );
    let ds = load(&Path::new(DIR).join("daemonset.yaml"))?;
    let image = s(&ds[0]["spec"]["template"]["spec"]["containers"][0]["image"]);
    let name = image.split(':').next().unwrap_or_default();
    let rewritten = base["images"]
        .as_sequence()
        .is_some_and(|i| i.iter().any(|i| s(&i["name"]) == name));
    ensure!(
        rewritten,
        "{DIR}/kustomization.yaml has no images entry for {name}"
    );

    let op = &load(&Path::new(OPERATOR_DIR).join("kustomization.yaml"))?[0];
    let listed: Vec<&str> = op["resources"]
        .as_sequence()
        .context("no resources")?
        .iter()
        .map(s)
        .collect();
    for r in &listed {
        ensure!(
            Path::new(OPERATOR_DIR).join(r).exists(),
            "{OPERATOR_DIR}/kustomization.yaml lists missing {r}"
        );
    }
    if !(listed.contains(&"..")
        && listed.contains(&"servicemonitor.yaml")
        && !listed.contains(&"podmonitor.yaml"))
    {
        bail!(
            "{OPERATOR_DIR}/kustomization.yaml must list .. and servicemonitor.yaml (podmonitor.yaml is the alternative, never both)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Value> {
        std::env::set_current_dir(crate::exec::workspace_root()).unwrap();
        manifests()
            .unwrap()
            .iter()
            .flat_map(|f| load(f).unwrap())
            .collect()
    }

    fn cross_check(docs: &[Value]) -> Result<()> {
        let caps = consistency::unit_capabilities(&fs::read_to_string(UNIT).unwrap()).unwrap();
        consistency::check(&consistency::Docs(docs.iter().collect()), &caps)
    }

    /// Changes the DaemonSet's container securityContext (or pod spec with `pod: true`).
    fn with(docs: &[Value], pod: bool, key: &str, v: Value) -> Vec<Value> {
        let mut docs = docs.to_vec();
        for d in &mut docs {
            if d["kind"] == "DaemonSet" {
                let spec = &mut d["spec"]["template"]["spec"];
                let target = if pod {
                    spec
                } else {
                    &mut spec["containers"][0]["securityContext"]
                };
                target[key] = v.clone();
            }
        }
        docs
    }

    #[test]
    fn shipped_manifests_agree_and_kustomizations_list_them() {
        let docs = all();
        cross_check(&docs).unwrap();
        kustomizations(&manifests().unwrap()).unwrap();
    }

    #[test]
    fn each_broken_promise_is_named() {
        let docs = all();
        let cases = [
            (with(&docs, true, "hostNetwork", Value::Bool(true)), "hostNetwork"),
            (with(&docs, true, "hostPID", Value::Bool(false)), "hostPID"),
            (with(&docs, false, "privileged", Value::Bool(true)), "privileged"),
            (with(&docs, false, "readOnlyRootFilesystem", Value::Bool(false)), "readOnlyRootFilesystem"),
            (
                with(&docs, false, "capabilities", serde_yaml_ng::from_str("{drop: [ALL], add: [BPF, PERFMON, SYS_ADMIN, SYS_PTRACE, DAC_READ_SEARCH]}").unwrap()),
                "differ from the systemd unit",
            ),
            (
                with(&docs, false, "capabilities", serde_yaml_ng::from_str("{drop: [ALL], add: [BPF, PERFMON, CAP_SYS_ADMIN, NET_RAW, SYS_PTRACE, DAC_READ_SEARCH]}").unwrap()),
                "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
            ),
        ];
        for (broken, named) in cases {
            let e = cross_check(&broken).expect_err(named).to_string();
            assert!(e.contains(named), "{named}: {e}");
        }
        let mut svc = docs.clone();
        for d in &mut svc {
            if d["kind"] == "Service" {
                d["spec"]["selector"] = serde_yaml_ng::from_str("{app: other}").unwrap();
            }
        }
        let e = cross_check(&svc).unwrap_err().to_string();
        assert!(e.contains("Service does not select"), "{e}");
    }
}
