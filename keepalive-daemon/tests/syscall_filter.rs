//! The systemd unit's SystemCallFilter= against what the daemon really calls: the daemon run
//! under strace through its paths, each system call checked against the filter as systemd
//! expands it. A filter too narrow kills the service at the first call it misses, so this is
//! checked on the running daemon rather than by reading the code.
use std::{fs, process::Command, thread, time::Duration};
mod service_support;

use service_support::*;

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
