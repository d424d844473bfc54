//! The Grafana dashboard and the Prometheus alerting rules against a live scrape: every metric
//! they query is one the daemon exports, and every metric family it exports is on the
//! dashboard, so a renamed metric cannot leave a panel or an alert silently empty.
mod service_support;

use service_support::*;

/// Metric names in a PromQL expression: identifiers outside string literals that name our
/// metrics (keepalive_*) or Prometheus's own `up`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_str = false;
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_str = !in_str;
            word.clear();
            continue;
        }
        if in_str {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if (word.starts_with("keepalive_") || word == "up") && c != '(' {
                out.push(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    out
}

fn json_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => json_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

/// The Grafana dashboard and the alerting rules query only metrics a live daemon exports.
#[test]
fn dashboard_and_rules_query_only_metrics_the_daemon_exports() {
    let _g = serial();
    let d = start(&[]);
    let (_, page) = http_get(d.port, "/metrics");
    d.stop();
    let exported: std::collections::BTreeSet<&str> = page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let dashboard: serde_json::Value = serde_json::from_str(include_str!(
        "../../deploy/grafana/keepalive-dashboard.json"
    ))
    .expect("dashboard JSON");
    let mut exprs = Vec::new();
    json_exprs(&dashboard, &mut exprs);
    let rules: serde_json::Value =
        serde_yaml_ng::from_str(include_str!("../../deploy/prometheus/keepalive-rules.yml"))
            .expect("rules YAML");
    let rule_exprs: Vec<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| {
            g["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["expr"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(
        exprs.len() > 20 && rule_exprs.len() > 5,
        "too few expressions found: {exprs:?} {rule_exprs:?}"
    );
    let mut checked = std::collections::BTreeSet::new();
    for (source, expr) in exprs
        .iter()
        .map(|e| ("dashboard", e))
        .chain(rule_exprs.iter().map(|e| ("rules", e)))
    {
        for name in metric_names(expr) {
            if name != "up" {
                assert!(
                    exported.contains(name.as_str()),
                    "{source} queries {name}, which the daemon does not export: {expr}"
                );
            }
            checked.insert(name);
        }
    }
    // Every metric family the daemon exports is on the dashboard.
    for family in page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
    {
        assert!(
            checked.iter().any(|c| c == family
                || c.strip_prefix(family)
                    .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
            "the dashboard shows nothing of {family}"
        );
    }
}
