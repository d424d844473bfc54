//! What no schema sees: the manifests against each other (selectors, port names, namespaces),
//! the DaemonSet against the daemon's needs (the systemd unit's capabilities, the promises of
//! docs/kubernetes.md), and the API server's cross-field rules that a JSON schema cannot say.
//! Every problem is collected; the error lists them all.
use std::collections::BTreeSet;

use anyhow::{Context as _, Result, bail};
use serde_yaml_ng::Value;

/// The manifests, one document each, by kind.
pub struct Docs<'a>(pub Vec<&'a Value>);

impl<'a> Docs<'a> {
    fn kind(&self, kind: &str) -> Result<&'a Value> {
        let mut found = self.0.iter().filter(|d| d["kind"].as_str() == Some(kind));
        let first = found
            .next()
            .with_context(|| format!("no {kind} in deploy/kubernetes"))?;
        if found.next().is_some() {
            bail!("more than one {kind} in deploy/kubernetes");
        }
        Ok(first)
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn names(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|l| l.iter().map(s).collect())
        .unwrap_or_default()
}

/// `selector ⊆ labels`, both `matchLabels`-style maps; an empty selector selects nothing here.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_mapping()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The capabilities the systemd unit grants, without `CAP_`: what the daemon needs.
pub fn unit_capabilities(unit: &str) -> Result<BTreeSet<String>> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .context("no AmbientCapabilities= in the systemd unit")?;
    Ok(line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect())
}

pub fn check(docs: &Docs, unit_caps: &BTreeSet<String>) -> Result<()> {
    let mut problems: Vec<String> = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };

    let ns = s(&docs.kind("Namespace")?["metadata"]["name"]);
    for d in docs
        .0
        .iter()
        .filter(|d| d["kind"].as_str() != Some("Namespace"))
    {
        need(
            s(&d["metadata"]["namespace"]) == ns,
            format!(
                "{} {} is not in namespace {ns}",
                s(&d["kind"]),
                s(&d["metadata"]["name"])
            ),
        );
    }

    let ds = docs.kind("DaemonSet")?;
    let pod = &ds["spec"]["template"]["spec"];
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    need(
        selects(&ds["spec"]["selector"]["matchLabels"], pod_labels),
        "DaemonSet selector does not select its own pods".into(),
    );
    need(
        pod["hostPID"] == Value::Bool(true),
        "hostPID must be true: owners and namespaces come from /proc of every process".into(),
    );
    need(
        pod["hostNetwork"] != Value::Bool(true),
        "hostNetwork must stay off: the port would leave NetworkPolicy's reach".into(),
    );
    need(
        pod["automountServiceAccountToken"] == Value::Bool(false),
        "the daemon needs no API token".into(),
    );
    let sa = docs.kind("ServiceAccount")?;
    need(
        pod["serviceAccountName"] == sa["metadata"]["name"],
        "DaemonSet does not use the ServiceAccount".into(),
    );

    let containers = pod["containers"].as_sequence().context("no containers")?;
    let [c] = containers.as_slice() else {
        bail!(
            "the DaemonSet must have exactly one container, found {}",
            containers.len()
        );
    };
    let sc = &c["securityContext"];
    need(
        sc["privileged"] != Value::Bool(true),
        "privileged: true is only a documented fallback, not the default".into(),
    );
    need(
        names(&sc["capabilities"]["drop"]) == ["ALL"],
        "capabilities.drop must be [ALL]".into(),
    );
    let added: BTreeSet<String> = names(&sc["capabilities"]["add"])
        .into_iter()
        .map(str::to_owned)
        .collect();
    need(
        &added == unit_caps,
        format!("capabilities.add {added:?} differ from the systemd unit's {unit_caps:?}"),
    );
    // The API server's ValidateSecurityContext, which kubernetes-validate's schemas cannot say.
    if sc["allowPrivilegeEscalation"] == Value::Bool(false) {
        need(
            sc["privileged"] != Value::Bool(true),
            "cannot set `allowPrivilegeEscalation` to false and `privileged` to true".into(),
        );
        need(
            !added.contains("CAP_SYS_ADMIN"),
            "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN"
                .into(),
        );
    }
    need(
        sc["readOnlyRootFilesystem"] == Value::Bool(true),
        "readOnlyRootFilesystem must be true".into(),
    );
    need(
        sc["runAsUser"].as_u64() == Some(0),
        "runAsUser must be 0 (no ambient capabilities otherwise)".into(),
    );
    need(
        s(&sc["seccompProfile"]["type"]) == "RuntimeDefault",
        "seccompProfile must be RuntimeDefault".into(),
    );

    let ports = c["ports"].as_sequence().cloned().unwrap_or_default();
    let metrics_port = ports
        .iter()
        .find(|p| s(&p["name"]) == "metrics")
        .and_then(|p| p["containerPort"].as_u64())
        .context("no container port named metrics")?;
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        need(
            s(&get["path"]) == "/healthz" && s(&get["port"]) == "metrics",
            format!("{probe} must GET /healthz on the metrics port"),
        );
    }
    let volumes = pod["volumes"].as_sequence().cloned().unwrap_or_default();
    for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
        let name = s(&m["name"]);
        let v = volumes.iter().find(|v| s(&v["name"]) == name);
        need(v.is_some(), format!("volumeMount {name} has no volume"));
        need(
            m["readOnly"] == Value::Bool(true),
            format!("volumeMount {name} must be readOnly"),
        );
        if v.is_some_and(|v| v.get("hostPath").is_some()) && s(&m["mountPath"]) == "/run/netns" {
            need(
                s(&m["mountPropagation"]) == "HostToContainer",
                "/run/netns needs HostToContainer propagation (namespaces added later)".into(),
            );
        }
    }

    let cm = docs.kind("ConfigMap")?;
    need(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"] == cm["metadata"]["name"]),
        "the DaemonSet does not mount the ConfigMap".into(),
    );
    let config: toml::Table = s(&cm["data"]["config.toml"])
        .parse()
        .context("ConfigMap config.toml is not TOML")?;
    let listen = config
        .get("web")
        .and_then(|w| w.get("listen-address"))
        .and_then(|a| a.as_str())
        .unwrap_or("127.0.0.1:19180");
    need(
        listen == format!("0.0.0.0:{metrics_port}") || listen == format!("[::]:{metrics_port}"),
        format!("listen-address {listen} is not the pod's port {metrics_port} on every address"),
    );
    let labels = config
        .get("metrics")
        .and_then(|m| m.get("labels"))
        .and_then(|l| l.as_array());
    for unbounded in ["pod", "process", "port"] {
        need(
            !labels.is_some_and(|l| l.iter().any(|v| v.as_str() == Some(unbounded))),
            format!(
                "metrics.labels must not enable {unbounded} by default (docs/metrics-and-events.md)"
            ),
        );
    }

    let svc = docs.kind("Service")?;
    need(
        selects(&svc["spec"]["selector"], pod_labels),
        "Service does not select the daemon pods".into(),
    );
    need(
        s(&svc["spec"]["clusterIP"]) == "None",
        "Service must be headless".into(),
    );
    let svc_port = svc["spec"]["ports"]
        .as_sequence()
        .and_then(|p| p.first())
        .context("Service has no port")?;
    need(
        s(&svc_port["name"]) == "metrics" && s(&svc_port["targetPort"]) == "metrics",
        "Service port must be metrics → metrics".into(),
    );

    let np = docs.kind("NetworkPolicy")?;
    need(
        selects(&np["spec"]["podSelector"]["matchLabels"], pod_labels),
        "NetworkPolicy does not cover the daemon pods".into(),
    );
    need(
        np["spec"]["ingress"].as_sequence().is_some_and(|rules| {
            rules.iter().all(|r| {
                r["ports"]
                    .as_sequence()
                    .is_some_and(|p| p.iter().all(|p| s(&p["port"]) == "metrics"))
            })
        }),
        "NetworkPolicy must open the metrics port only".into(),
    );

    for (kind, endpoints, target_labels) in [
        ("ServiceMonitor", "endpoints", &svc["metadata"]["labels"]),
        ("PodMonitor", "podMetricsEndpoints", pod_labels),
    ] {
        let m = docs.kind(kind)?;
        need(
            selects(&m["spec"]["selector"]["matchLabels"], target_labels),
            format!("{kind} selects nothing of ours"),
        );
        need(
            names(&m["spec"]["namespaceSelector"]["matchNames"]) == [ns],
            format!("{kind} must look in {ns}"),
        );
        for e in m["spec"][endpoints].as_sequence().into_iter().flatten() {
            need(
                s(&e["port"]) == "metrics",
                format!("{kind} must scrape the port named metrics"),
            );
            need(
                e["honorLabels"] == Value::Bool(true),
                format!("{kind} needs honorLabels: true (workload labels)"),
            );
            let drops_own = e["relabelings"].as_sequence().is_some_and(|r| {
                r.iter().any(|r| {
                    s(&r["action"]).eq_ignore_ascii_case("labeldrop")
                        && s(&r["regex"]) == "(pod|container)"
                })
            });
            need(
                drops_own,
                format!("{kind} must drop the daemon pod's own pod and container labels"),
            );
        }
    }

    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "{} problem(s) in deploy/kubernetes:\n  {}",
        problems.len(),
        problems.join("\n  ")
    )
}
