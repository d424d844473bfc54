//! The web configuration through real clients: TLS, client certificates, basic auth, reloads.
//! The daemon's command line is in cli.rs, the unit's system call filter in syscall_filter.rs,
//! the dashboard and rules against a live scrape in dashboard.rs.
use std::{fs, thread, time::Duration};
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
