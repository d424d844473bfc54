//! `/sockets` streamed, ordered and cut: real loopback connections, the daemon's HTTP answer
//! and the `sockets` subcommand.
use std::{
    net::{TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};
mod service_support;

use service_support::*;

fn rows(port: u16, path: &str) -> Vec<serde_json::Value> {
    let (code, body) = http_get(port, path);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[test]
fn sorted_by_risk_limited_and_bad_values_refused() {
    let _g = serial();
    let d = start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = listener.local_addr().unwrap().port();
    let mut held = Vec::new();
    for _ in 0..3 {
        let c = TcpStream::connect(("127.0.0.1", lport)).unwrap();
        let (s, _) = listener.accept().unwrap();
        held.push((c, s));
    }
    // The listener, three clients and three accepted sockets carry the port.
    let path = format!("/sockets?port={lport}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all = rows(d.port, &path);
    while all.len() < 7 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        all = rows(d.port, &path);
    }
    assert_eq!(all.len(), 7, "{all:?}\n{}", d.log());
    let order: Vec<(u64, u64, u64)> = all
        .iter()
        .map(|s| {
            let n = |k: &str| s[k].as_u64().unwrap();
            (n("netns"), n("sport"), n("dport"))
        })
        .collect();
    assert!(order.is_sorted(), "by namespace and ports: {order:?}");

    // Loopback peers are local: the listener comes after them, by risk.
    let top = rows(d.port, &format!("{path}&sort=risk&limit=2"));
    assert_eq!(top.len(), 2, "{top:?}");
    assert!(top.iter().all(|s| s["risk"] == "local"), "{top:?}");
    let by_risk = rows(d.port, &format!("{path}&sort=risk"));
    assert_eq!(by_risk.len(), 7);
    assert_eq!(by_risk[6]["risk"], "listener", "{by_risk:?}");
    assert_eq!(
        rows(d.port, &format!("{path}&limit=1&risk=listener")).len(),
        1
    );

    for bad in ["limit=0", "limit=many", "sort=age"] {
        let (code, body) = http_get(d.port, &format!("/sockets?{bad}"));
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body.trim_end().lines().count(), 1, "{bad}: {body}");
    }

    // The subcommand: the same order and cut, as a table (header and rows) and as JSON.
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("sockets")
            .args(["--web.listen-address", &format!("127.0.0.1:{}", d.port)])
            .args(["--port", &lport.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(cli(&["--sort", "risk", "--limit", "2"]).lines().count(), 3);
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&cli(&["--json", "--limit", "3"])).unwrap();
    assert_eq!(json.len(), 3);
    assert_eq!(cli(&[]).lines().count(), 8);
    drop(held);
    d.stop();
}
