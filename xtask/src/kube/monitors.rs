//! ServiceMonitor and PodMonitor (monitoring.coreos.com/v1) checked against the fields the
//! prometheus-operator's CRDs define. kubernetes-validate has no schema for custom resources
//! (it warns and passes them), and no package registry ships the operator's CRDs, so the field
//! names below are copied from the CRDs' openAPIV3Schema (operator 0.84,
//! example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,podmonitors}.yaml):
//! every key must be one of them, and the fields this project sets are type-checked. Fields
//! listed as `Any` are known by name only (auth and TLS blocks an operator may add).
use anyhow::{Result, bail};
use serde_yaml_ng::Value;

/// A tiny schema: enough to catch a misspelt or misplaced key and a wrong type.
pub enum S {
    Any,
    Bool,
    Str,
    Int,
    /// A string matching a check (name, for the error).
    Pattern(&'static str, fn(&str) -> bool),
    Enum(&'static [&'static str]),
    StrMap,
    List(&'static S),
    Obj(&'static [(&'static str, S)]),
}

const META: S = S::Obj(&[
    ("name", S::Str),
    ("namespace", S::Str),
    ("labels", S::StrMap),
    ("annotations", S::StrMap),
]);
const EXPRESSION: S = S::Obj(&[
    ("key", S::Str),
    (
        "operator",
        S::Enum(&["In", "NotIn", "Exists", "DoesNotExist"]),
    ),
    ("values", S::List(&S::Str)),
]);
const SELECTOR: S = S::Obj(&[
    ("matchLabels", S::StrMap),
    ("matchExpressions", S::List(&EXPRESSION)),
]);
const NAMESPACES: S = S::Obj(&[("any", S::Bool), ("matchNames", S::List(&S::Str))]);
const ACTIONS: &[&str] = &[
    "replace",
    "Replace",
    "keep",
    "Keep",
    "drop",
    "Drop",
    "hashmod",
    "HashMod",
    "labelmap",
    "LabelMap",
    "labeldrop",
    "LabelDrop",
    "labelkeep",
    "LabelKeep",
    "lowercase",
    "Lowercase",
    "uppercase",
    "Uppercase",
    "keepequal",
    "KeepEqual",
    "dropequal",
    "DropEqual",
];
const RELABEL: S = S::Obj(&[
    ("action", S::Enum(ACTIONS)),
    ("modulus", S::Int),
    ("regex", S::Str),
    ("replacement", S::Str),
    ("separator", S::Str),
    (
        "sourceLabels",
        S::List(&S::Pattern("a label name", label_name)),
    ),
    ("targetLabel", S::Str),
]);
/// The scrape settings ServiceMonitor endpoints and PodMonitor endpoints share.
macro_rules! endpoint {
    ($($extra:expr),*) => {
        S::Obj(&[
            $($extra,)*
            ("path", S::Pattern("an absolute path", |p| p.starts_with('/'))),
            ("scheme", S::Enum(&["http", "https", "HTTP", "HTTPS"])),
            ("params", S::Any),
            ("interval", S::Pattern("a duration like 30s", duration)),
            ("scrapeTimeout", S::Pattern("a duration like 10s", duration)),
            ("honorLabels", S::Bool),
            ("honorTimestamps", S::Bool),
            ("trackTimestampsStaleness", S::Bool),
            ("relabelings", S::List(&RELABEL)),
            ("metricRelabelings", S::List(&RELABEL)),
            ("tlsConfig", S::Any),
            ("authorization", S::Any),
            ("basicAuth", S::Any),
            ("bearerTokenSecret", S::Any),
            ("oauth2", S::Any),
            ("proxyUrl", S::Str),
            ("noProxy", S::Str),
            ("proxyFromEnvironment", S::Bool),
            ("proxyConnectHeader", S::Any),
            ("followRedirects", S::Bool),
            ("enableHttp2", S::Bool),
            ("filterRunning", S::Bool),
        ])
    };
}
const ENDPOINT: S = endpoint!(
    ("port", S::Str),
    ("targetPort", S::Any),
    ("bearerTokenFile", S::Str)
);
const POD_ENDPOINT: S = endpoint!(
    ("port", S::Str),
    ("portNumber", S::Int),
    ("targetPort", S::Any)
);
/// Spec fields both kinds have.
macro_rules! spec {
    ($($extra:expr),*) => {
        S::Obj(&[
            $($extra,)*
            ("selector", SELECTOR),
            ("namespaceSelector", NAMESPACES),
            ("jobLabel", S::Str),
            ("podTargetLabels", S::List(&S::Str)),
            ("attachMetadata", S::Any),
            ("sampleLimit", S::Int),
            ("targetLimit", S::Int),
            ("labelLimit", S::Int),
            ("labelNameLengthLimit", S::Int),
            ("labelValueLengthLimit", S::Int),
            ("keepDroppedTargets", S::Int),
            ("bodySizeLimit", S::Str),
            ("scrapeClass", S::Str),
            ("scrapeProtocols", S::List(&S::Str)),
            ("fallbackScrapeProtocol", S::Str),
            ("scrapeClassicHistograms", S::Bool),
            ("convertClassicHistogramsToNHCB", S::Bool),
            ("nativeHistogramBucketLimit", S::Int),
            ("nativeHistogramMinBucketFactor", S::Any),
            ("selectorMechanism", S::Enum(&["RelabelConfig", "RoleSelector"])),
        ])
    };
}
const SERVICE_MONITOR: S = S::Obj(&[
    ("apiVersion", S::Enum(&["monitoring.coreos.com/v1"])),
    ("kind", S::Enum(&["ServiceMonitor"])),
    ("metadata", META),
    (
        "spec",
        spec!(
            ("endpoints", S::List(&ENDPOINT)),
            ("targetLabels", S::List(&S::Str))
        ),
    ),
]);
const POD_MONITOR: S = S::Obj(&[
    ("apiVersion", S::Enum(&["monitoring.coreos.com/v1"])),
    ("kind", S::Enum(&["PodMonitor"])),
    ("metadata", META),
    (
        "spec",
        spec!(("podMetricsEndpoints", S::List(&POD_ENDPOINT))),
    ),
]);

fn label_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The CRDs' duration pattern: `1h30m`, `30s`, `500ms`, `0`; units in this order, each once.
fn duration(s: &str) -> bool {
    if s == "0" {
        return true;
    }
    let mut rest = s;
    let mut any = false;
    for unit in ["y", "w", "d", "h", "m", "s", "ms"] {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let after = &rest[digits..];
        // `5ms` is milliseconds, not five minutes followed by a stray `s`.
        if digits > 0 && after.starts_with(unit) && !(unit == "m" && after.starts_with("ms")) {
            rest = &after[unit.len()..];
            any = true;
        }
    }
    any && rest.is_empty()
}

/// Checks a monitor resource; the error names the path of the first problem.
pub fn check(doc: &Value) -> Result<()> {
    let schema = match doc.get("kind").and_then(Value::as_str) {
        Some("ServiceMonitor") => &SERVICE_MONITOR,
        Some("PodMonitor") => &POD_MONITOR,
        other => bail!("not a ServiceMonitor or PodMonitor: kind {other:?}"),
    };
    walk(schema, doc, "")?;
    let spec = &doc["spec"];
    if spec.get("selector").is_none() {
        bail!("spec.selector is required");
    }
    let endpoints = ["endpoints", "podMetricsEndpoints"]
        .iter()
        .find_map(|k| spec.get(*k)?.as_sequence());
    match endpoints {
        Some(e) if !e.is_empty() => Ok(()),
        _ => bail!("spec has no endpoints to scrape"),
    }
}

fn walk(schema: &S, v: &Value, at: &str) -> Result<()> {
    let ok = match schema {
        S::Any => true,
        S::Bool => v.is_bool(),
        S::Str => v.is_string(),
        S::Int => v.is_i64() || v.is_u64(),
        S::Pattern(what, f) => match v.as_str() {
            Some(s) if f(s) => true,
            _ => bail!("{at}: {v:?} is not {what}"),
        },
        S::Enum(allowed) => v.as_str().is_some_and(|s| allowed.contains(&s)),
        S::StrMap => v
            .as_mapping()
            .is_some_and(|m| m.iter().all(|(k, v)| k.is_string() && v.is_string())),
        S::List(item) => {
            let Some(items) = v.as_sequence() else {
                bail!("{at}: expected a list, found {v:?}");
            };
            for (i, item_v) in items.iter().enumerate() {
                walk(item, item_v, &format!("{at}[{i}]"))?;
            }
            true
        }
        S::Obj(fields) => {
            let Some(map) = v.as_mapping() else {
                bail!("{at}: expected an object, found {v:?}");
            };
            for (k, field_v) in map {
                let k = k.as_str().unwrap_or_default();
                let path = if at.is_empty() {
                    k.to_owned()
                } else {
                    format!("{at}.{k}")
                };
                match fields.iter().find(|(name, _)| *name == k) {
                    Some((_, s)) => walk(s, field_v, &path)?,
                    None => bail!("{path}: unknown field (not in the prometheus-operator's CRD)"),
                }
            }
            true
        }
    };
    if !ok {
        bail!("{at}: {v:?} has the wrong type or value");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(path: &str) -> Value {
        let root = crate::exec::workspace_root();
        serde_yaml_ng::from_str(&std::fs::read_to_string(root.join(path)).unwrap()).unwrap()
    }

    #[test]
    fn shipped_monitors_pass() {
        check(&load(
            "deploy/kubernetes/prometheus-operator/servicemonitor.yaml",
        ))
        .unwrap();
        check(&load(
            "deploy/kubernetes/prometheus-operator/podmonitor.yaml",
        ))
        .unwrap();
    }

    #[test]
    fn misspelt_misplaced_and_mistyped_fields_are_named() {
        let sm = load("deploy/kubernetes/prometheus-operator/servicemonitor.yaml");
        let text = serde_yaml_ng::to_string(&sm).unwrap();
        for (from, to, named) in [
            (
                "honorLabels",
                "honorLabel",
                "spec.endpoints[0].honorLabel: unknown field",
            ),
            (
                "honorLabels: true",
                "honorLabels: \"yes\"",
                "spec.endpoints[0].honorLabels",
            ),
            (
                "interval: 30s",
                "interval: 30 seconds",
                "spec.endpoints[0].interval",
            ),
            (
                "action: labeldrop",
                "action: LabelDelete",
                "relabelings[0].action",
            ),
            (
                "selector:",
                "podSelector:",
                "spec.podSelector: unknown field",
            ),
        ] {
            assert!(text.contains(from), "{from}");
            let broken: Value = serde_yaml_ng::from_str(&text.replacen(from, to, 1)).unwrap();
            let e = check(&broken).expect_err(to).to_string();
            assert!(e.contains(named), "{to}: {e}");
        }
        // An endpoint list in a PodMonitor is podMetricsEndpoints, not endpoints.
        let pm = load("deploy/kubernetes/prometheus-operator/podmonitor.yaml");
        let text = serde_yaml_ng::to_string(&pm)
            .unwrap()
            .replace("podMetricsEndpoints", "endpoints");
        let e = check(&serde_yaml_ng::from_str(&text).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.endpoints: unknown field"), "{e}");
    }

    #[test]
    fn durations_follow_the_crd_pattern() {
        for ok in ["30s", "1m30s", "500ms", "1h", "0", "2d12h"] {
            assert!(duration(ok), "{ok}");
        }
        for bad in ["30", "s", "1.5s", "30 s", "1s1m", ""] {
            assert!(!duration(bad), "{bad}");
        }
    }
}
