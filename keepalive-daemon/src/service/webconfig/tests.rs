use super::*;

fn p(text: &str) -> Result<WebConfig, String> {
    parse(
        text,
        Path::new("/nonexistent"),
        Path::new("/nonexistent/web.yml"),
    )
}

#[test]
fn empty_and_auth_only_files_are_plain_http() {
    let c = p("").unwrap();
    assert!(c.tls.is_none() && c.users.is_empty());
    let hash = bcrypt::hash("secret", 4).unwrap();
    let c = p(&format!("basic_auth_users:\n  alice: {hash}\n")).unwrap();
    assert!(c.tls.is_none());
    assert_eq!(c.summary(), "plain HTTP, basic auth (1 user)");
}

#[test]
fn mistakes_name_the_key() {
    for (text, want) in [
        (
            "tls_server_config:\n  cert_fil: x\n",
            "unknown field `cert_fil`",
        ),
        (
            "basic_auth_users:\n  alice: plaintext\n",
            "basic_auth_users.alice: not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: c.pem\n",
            "cannot read /nonexistent/c.pem",
        ),
        (
            "tls_server_config:\n  key_file: k.pem\n",
            "missing one of cert or cert_file",
        ),
        (
            "http_server_config:\n  headers:\n    X-Foo: bar\n",
            "\"X-Foo\" can not be configured",
        ),
        (
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
            "is not one of deny, sameorigin",
        ),
        (
            "rate_limit:\n  interval: 1 fortnight\n",
            "rate_limit.interval",
        ),
        (
            "rate_limit:\n  interval: 1s\n",
            "rate_limit.burst must be at least 1",
        ),
        ("nonsense: 1\n", "unknown field `nonsense`"),
    ] {
        let e = p(text).unwrap_err();
        assert!(e.contains(want), "{text:?}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn go_durations() {
    assert_eq!(go_duration("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(go_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(go_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(go_duration("1.5h"), Ok(Duration::from_secs(5400)));
    assert_eq!(go_duration("0"), Ok(Duration::ZERO));
    assert!(go_duration("10").is_err());
    assert!(go_duration("").is_err());
    assert!(go_duration("1d").is_err());
}

#[test]
fn passwords_are_checked_and_unknown_users_refused() {
    let hash = bcrypt::hash("secret", 4).unwrap();
    let dir = std::env::temp_dir().join(format!("ka-webconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("web.yml");
    std::fs::write(
        &path,
        format!("basic_auth_users:\n  alice: '{hash}'\nrate_limit:\n  interval: 1h\n  burst: 2\n"),
    )
    .unwrap();
    let w = Watched::load(&path).unwrap();
    let c = w.current();
    assert!(w.check_password(&c, "alice", "secret"));
    assert!(w.check_password(&c, "alice", "secret"), "cached");
    assert!(!w.check_password(&c, "alice", "wrong"));
    assert!(!w.check_password(&c, "mallory", "secret"));
    assert!(
        w.allow(&c) && w.allow(&c) && !w.allow(&c),
        "burst of 2, then 429"
    );
    // A new user appears without a restart.
    let hash2 = bcrypt::hash("other", 4).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(
        &path,
        format!("basic_auth_users:\n  alice: '{hash}'\n  bob: '{hash2}'\n"),
    )
    .unwrap();
    let c = w.current();
    assert!(w.check_password(&c, "bob", "other"));
    // A broken edit keeps the last good configuration.
    std::fs::write(&path, "basic_auth_users: [\n").unwrap();
    let c = w.current();
    assert!(w.check_password(&c, "bob", "other"));
    let _ = std::fs::remove_dir_all(&dir);
}
