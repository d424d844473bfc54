//! The web configuration through real clients: TLS, client certificates, basic auth, reloads.
use std::{fs, process::Command, thread, time::Duration};
mod service_support;

use service_support::*;

#[test]
fn tls_and_basic_auth_through_curl() {
    let _g = serial();
    let dir = Scratch::new("tls");
    make_pki(&dir);
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let web = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  alice: '{hash}'\n"
        ),
    );
    let d = start(&["--web.config.file", web.to_str().unwrap()]);
    assert!(
        d.log()
            .contains(&format!("serving on https://127.0.0.1:{}", d.port)),
        "{}",
        d.log()
    );
    let base = format!("https://127.0.0.1:{}", d.port);
    let ca = dir.path("ca.crt");
    let ca = ca.to_str().unwrap();

    for path in ["/metrics", "/healthz", "/", "/sockets"] {
        let url = format!("{base}{path}");
        let ok = curl(&dir, &["--cacert", ca, "-u", "alice:s3cret", &url]);
        assert_eq!(
            (ok.exit, ok.status),
            (0, 200),
            "{path} with the right password: {}",
            ok.body
        );
        assert!(
            ok.headers
                .to_lowercase()
                .contains("x-content-type-options: nosniff"),
            "{}",
            ok.headers
        );
        let wrong = curl(&dir, &["--cacert", ca, "-u", "alice:guess", &url]);
        assert_eq!(wrong.status, 401, "{path} with a wrong password");
        assert!(
            wrong.headers.contains("www-authenticate: Basic")
                || wrong.headers.contains("WWW-Authenticate: Basic"),
            "{}",
            wrong.headers
        );
        let unknown = curl(&dir, &["--cacert", ca, "-u", "mallory:s3cret", &url]);
        assert_eq!(unknown.status, 401, "{path} with an unknown user");
        let none = curl(&dir, &["--cacert", ca, &url]);
        assert_eq!(none.status, 401, "{path} without credentials");
        assert!(!none.body.contains("keepalive"), "{}", none.body);
    }
    let page = curl(
        &dir,
        &[
            "--cacert",
            ca,
            "-u",
            "alice:s3cret",
            &format!("{base}/metrics"),
        ],
    );
    assert!(page.body.contains("keepalive_build_info"), "{}", page.body);
    // /events streams: the status line is enough (curl's time-out ends it).
    let ev = curl(
        &dir,
        &[
            "--cacert",
            ca,
            "-u",
            "alice:s3cret",
            "--max-time",
            "1",
            &format!("{base}/events"),
        ],
    );
    assert_eq!(ev.status, 200);
    // The certificate is checked by the client: an unknown CA fails, and so does plain HTTP.
    let untrusted = curl(&dir, &["-u", "alice:s3cret", &format!("{base}/metrics")]);
    assert_eq!(
        untrusted.exit, 60,
        "curl must refuse a certificate from an unknown CA"
    );
    let plain = curl(
        &dir,
        &[
            "-u",
            "alice:s3cret",
            &format!("http://127.0.0.1:{}/metrics", d.port),
        ],
    );
    assert_ne!(plain.status, 200, "plain HTTP on the TLS port");
    // The name in the certificate matches.
    let named = curl(
        &dir,
        &[
            "--cacert",
            ca,
            "-u",
            "alice:s3cret",
            "--resolve",
            &format!("localhost:{}:127.0.0.1", d.port),
            &format!("https://localhost:{}/healthz", d.port),
        ],
    );
    assert_eq!(
        (named.exit, named.status, named.body.as_str()),
        (0, 200, "ok\n")
    );
    d.stop();
}

#[test]
fn client_certificate_required_when_configured() {
    let _g = serial();
    let dir = Scratch::new("mtls");
    make_pki(&dir);
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
    );
    let d = start(&["--web.config.file", web.to_str().unwrap()]);
    let url = format!("https://127.0.0.1:{}/metrics", d.port);
    let p = |n: &str| dir.path(n).to_str().unwrap().to_string();
    let (ca, cert, key, rogue, rogue_key) = (
        p("ca.crt"),
        p("client.crt"),
        p("client.key"),
        p("rogue.crt"),
        p("rogue.key"),
    );

    let with = curl(
        &dir,
        &["--cacert", &ca, "--cert", &cert, "--key", &key, &url],
    );
    assert_eq!(
        (with.exit, with.status),
        (0, 200),
        "client certificate from the CA"
    );
    assert!(with.body.contains("keepalive_build_info"));
    let without = curl(&dir, &["--cacert", &ca, &url]);
    assert_ne!(
        without.exit, 0,
        "no client certificate must fail the handshake"
    );
    assert_eq!(without.status, 0);
    let foreign = curl(
        &dir,
        &["--cacert", &ca, "--cert", &rogue, "--key", &rogue_key, &url],
    );
    assert_ne!(
        foreign.exit, 0,
        "a certificate the CA did not sign must fail"
    );
    assert_eq!(foreign.status, 0);
    d.stop();

    // client_allowed_sans narrows it to certificates that name an allowed SAN.
    let web = dir.write(
        "web-sans.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: [grafana.example]\n",
    );
    let d = start(&["--web.config.file", web.to_str().unwrap()]);
    let url = format!("https://127.0.0.1:{}/metrics", d.port);
    let refused = curl(
        &dir,
        &["--cacert", &ca, "--cert", &cert, "--key", &key, &url],
    );
    assert_ne!(
        refused.exit, 0,
        "prometheus.example is not in client_allowed_sans"
    );
    d.stop();
}

/// A new certificate or user applies without a restart, as with exporter-toolkit.
#[test]
fn web_config_changes_apply_without_restart() {
    let _g = serial();
    let dir = Scratch::new("reload");
    make_pki(&dir);
    let alice = bcrypt::hash("one", 4).unwrap();
    let web = dir.write("web.yml", &format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: '{alice}'\n"));
    let d = start(&["--web.config.file", web.to_str().unwrap()]);
    let url = format!("https://127.0.0.1:{}/healthz", d.port);
    let ca = dir.path("ca.crt");
    let ca = ca.to_str().unwrap();
    assert_eq!(
        curl(&dir, &["--cacert", ca, "-u", "bob:two", &url]).status,
        401
    );
    let bob = bcrypt::hash("two", 4).unwrap();
    thread::sleep(Duration::from_millis(20));
    fs::write(&web, format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: '{alice}'\n  bob: '{bob}'\n")).unwrap();
    assert_eq!(
        curl(&dir, &["--cacert", ca, "-u", "bob:two", &url]).status,
        200
    );
    // A broken edit keeps the last good configuration (and says so in the log).
    fs::write(&web, "basic_auth_users: [\n").unwrap();
    assert_eq!(
        curl(&dir, &["--cacert", ca, "-u", "bob:two", &url]).status,
        200
    );
    assert!(
        d.log().contains("keeping the previous web configuration"),
        "{}",
        d.log()
    );
    d.stop();
}

#[test]
fn help_version_and_bad_flags() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--web.listen-address",
        "--web.telemetry-path",
        "--web.config.file",
        "--log.level",
        "--log.format",
        "--config.file",
        "--config.check",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("keepalive-daemon {}", env!("CARGO_PKG_VERSION"))
    );
    for (args, want) in [
        (
            &["--log.format", "xml"][..],
            "possible values: logfmt, json",
        ),
        (
            &["--web.listen-adress=1"][..],
            "did you mean '--web.listen-address'",
        ),
        (
            &["--config.file", "/nonexistent.toml"][..],
            "/nonexistent.toml",
        ),
        (
            &["--web.telemetry-path", "/events"][..],
            "is taken by another endpoint",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("");
        assert!(
            first.starts_with("keepalive-daemon: ") && first.contains(want),
            "{args:?}: {err}"
        );
    }
}

/// Every syscall name in an strace -f log.
fn traced_syscalls(log: &str) -> std::collections::BTreeSet<String> {
    log.lines()
        .filter_map(|l| {
            let rest = l
                .trim_start()
                .split_once(char::is_whitespace)
                .map_or(l, |(_, r)| r)
                .trim_start();
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty() && rest[name.len()..].starts_with('(')).then_some(name)
        })
        .collect()
}

/// The unit's SystemCallFilter= lines, expanded with systemd's own group lists.
fn unit_allowed_syscalls() -> std::collections::BTreeSet<String> {
    use std::collections::{BTreeMap, BTreeSet};
    let out = run(Command::new("systemd-analyze").arg("syscall-filter"));
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(g) = line.strip_prefix('@') {
            current = format!("@{}", g.trim());
        } else if line.starts_with("    ")
            && !line.trim_start().starts_with('#')
            && !current.is_empty()
        {
            groups
                .entry(current.clone())
                .or_default()
                .push(line.trim().to_string());
        }
    }
    fn expand(item: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
        match groups.get(item) {
            Some(members) => members.iter().for_each(|m| expand(m, groups, out)),
            None => {
                out.insert(item.to_string());
            }
        }
    }
    let mut allowed = BTreeSet::new();
    // Always permitted by systemd, whatever the filter says.
    expand("@default", &groups, &mut allowed);
    for line in UNIT
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
    {
        match line.strip_prefix('~') {
            Some(deny) => {
                let mut d = BTreeSet::new();
                deny.split_whitespace()
                    .for_each(|i| expand(i, &groups, &mut d));
                allowed.retain(|s| !d.contains(s));
            }
            None => line
                .split_whitespace()
                .for_each(|i| expand(i, &groups, &mut allowed)),
        }
    }
    allowed
}

/// systemd-analyze cannot see what the daemon calls: run it under strace through its paths
/// (attach, TLS and basic auth, /metrics, /sockets, /events, namespace polls, capability drop,
/// SIGTERM) and check each system call against the unit's SystemCallFilter=.
#[test]
fn the_units_syscall_filter_allows_every_syscall_the_daemon_makes() {
    let _g = serial();
    let dir = Scratch::new("strace");
    make_pki(&dir);
    let hash = bcrypt::hash("pw", 4).unwrap();
    let web = dir.write("web.yml", &format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  u: '{hash}'\n"));
    let trace = dir.path("strace.log");
    let wrap = ["strace", "-f", "-qq", "-o", trace.to_str().unwrap(), "--"];
    let d = start_full(
        &["--web.config.file", web.to_str().unwrap(), "--json"],
        &wrap,
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ca = dir.path("ca.crt");
    for path in ["/metrics", "/sockets", "/healthz"] {
        let c = curl(
            &dir,
            &[
                "--cacert",
                ca.to_str().unwrap(),
                "-u",
                "u:pw",
                &format!("https://127.0.0.1:{}{path}", d.port),
            ],
        );
        assert_eq!(c.status, 200, "{path}");
    }
    curl(
        &dir,
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "-u",
            "u:pw",
            "--max-time",
            "1",
            &format!("https://127.0.0.1:{}/events", d.port),
        ],
    );
    // ICMP rescans and sysctl polls run every second and half second.
    thread::sleep(Duration::from_secs(2));
    d.stop();
    let used = traced_syscalls(&fs::read_to_string(&trace).unwrap());
    assert!(
        used.contains("bpf") && used.contains("capset") && used.contains("setns"),
        "strace saw too little: {used:?}"
    );
    let allowed = unit_allowed_syscalls();
    let denied: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(
        denied.is_empty(),
        "the unit's SystemCallFilter= would refuse {denied:?} (the daemon used {used:?})"
    );
}

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
