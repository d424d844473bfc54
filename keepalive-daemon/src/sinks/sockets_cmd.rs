//! `keepalive-daemon sockets`: the inventory of a running daemon, as a table like `ss` or JSON.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use crate::{
    error::{Error, Result},
    service::cli::SocketsArgs,
    sinks::socket_filter::{Filter, WorkloadFilter},
};

pub fn run(args: &SocketsArgs) -> Result<()> {
    let filter = Filter {
        port: args.port,
        comm: args.comm.clone(),
        netns: args.netns,
        keepalive: args.keepalive.as_deref().map(|k| k == "on"),
        at_risk: args.at_risk.then_some(true),
        risk: args.exposed.then(|| "exposed".to_string()),
        workload: WorkloadFilter {
            process: args.process.clone(),
            unit: args.unit.clone(),
            container: args.container.clone(),
            pod: args.pod.clone(),
            k8s_namespace: args.k8s_namespace.clone(),
            role: args.role.clone(),
            peer_group: args.peer_group.clone(),
        },
    };
    let path = if args.advise {
        "/advice".to_string()
    } else {
        format!("/sockets?{}", filter.to_query())
    };
    let body = fetch(args, &path)?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let not_json = |e: serde_json::Error| {
        Error::Config(format!("daemon answered something other than JSON: {e}"))
    };
    if args.advise {
        let doc: serde_json::Value = serde_json::from_str(&body).map_err(not_json)?;
        print!("{}", advice(&doc));
        return Ok(());
    }
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).map_err(not_json)?;
    print!("{}", table(&list));
    Ok(())
}

/// One paragraph per workload and peer group, then the learned path timeouts.
fn advice(doc: &serde_json::Value) -> String {
    let empty = Vec::new();
    let items = doc["items"].as_array().unwrap_or(&empty);
    let mut out = String::new();
    if items.is_empty() {
        out.push_str("No exposed or at-risk connections.\n");
    }
    for i in items {
        out.push_str(&format!(
            "{} exposed, {} at risk: {}\n",
            i["exposed"],
            i["at_risk"],
            i["advice"].as_str().unwrap_or("")
        ));
    }
    let paths = doc["paths"].as_array().unwrap_or(&empty);
    if !paths.is_empty() {
        out.push_str(
            "\nLearned path idle timeouts (largest silence answered .. smallest reset):\n",
        );
    }
    let s = |v: &serde_json::Value| v.as_f64().map_or("?".into(), |x| format!("{x:.1}s"));
    for p in paths {
        out.push_str(&format!(
            "  {:<16} {:<22} {:>8} .. {:<8} ({} answered, {} reset; budget {})\n",
            p["peer_group"].as_str().unwrap_or("?"),
            p["subnet"].as_str().unwrap_or("(whole group)"),
            s(&p["lower_s"]),
            s(&p["upper_s"]),
            p["answered"],
            p["reset"],
            p["budget_s"]
                .as_u64()
                .map_or("-".into(), |b| format!("{b}s")),
        ));
    }
    out
}

fn fetch(args: &SocketsArgs, path: &str) -> Result<String> {
    let unreachable = |e: std::io::Error| {
        Error::Config(format!(
            "no daemon answering on {} ({e}); start it or pass --web.listen-address",
            args.listen
        ))
    };
    let mut s =
        TcpStream::connect_timeout(&args.listen, Duration::from_secs(3)).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(unreachable)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        args.listen
    )
    .map_err(unreachable)?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(unreachable)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(Error::Config(format!(
            "daemon refused the query: {}",
            body.trim()
        )));
    }
    Ok(body.to_string())
}

/// The most specific workload a socket names: its pod, else its container, else its unit.
fn workload(s: &serde_json::Value) -> String {
    let get = |k: &str| s.get(k).and_then(|v| v.as_str());
    match (
        get("pod"),
        get("k8s_namespace"),
        get("container"),
        get("unit"),
    ) {
        (Some(pod), Some(ns), ..) => format!("pod:{ns}/{pod}"),
        (Some(pod), None, ..) => format!("pod:{pod}"),
        (None, _, Some(c), _) => format!("container:{c}"),
        (None, _, None, Some(u)) => u.to_string(),
        _ => "-".into(),
    }
}

fn table(list: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<11} {:<28} {:<28} {:<22} {:<28} {:>3} {:>7} {:>6} {:>4} {:>8} {:>6} {:>7} {:>8} {:>8} {:>8} {:<10} {}\n",
        "State",
        "Local",
        "Peer",
        "Process",
        "Workload",
        "KA",
        "Idle",
        "Intvl",
        "Cnt",
        "UserTO",
        "TTD",
        "Next",
        "IdleNow",
        "LastSnd",
        "LastRcv",
        "PeerGroup",
        "Risk"
    );
    for s in list {
        let get = |k: &str| s.get(k).cloned().unwrap_or(serde_json::Value::Null);
        let txt = |k: &str| match get(k) {
            serde_json::Value::String(v) => v,
            serde_json::Value::Null => "-".into(),
            v => v.to_string(),
        };
        let addr = |a: &str, p: &str| {
            let ip = txt(a);
            if ip.contains(':') {
                format!("[{ip}]:{}", txt(p))
            } else {
                format!("{ip}:{}", txt(p))
            }
        };
        // Values set on the socket itself are plain; inherited namespace defaults are marked *.
        let src = |v: &str, from: &str| {
            if txt(from) == "sysctl" {
                format!("{}*", txt(v))
            } else {
                txt(v)
            }
        };
        let process = match (get("comm"), get("pid")) {
            (serde_json::Value::String(c), serde_json::Value::Number(p)) => format!("{c}/{p}"),
            _ => "-".into(),
        };
        let next = match get("next_probe_ms") {
            serde_json::Value::Number(ms) => format!("{:.1}s", ms.as_f64().unwrap_or(0.0) / 1000.0),
            _ => "-".into(),
        };
        let secs = |k: &str| match get(k) {
            serde_json::Value::Number(n) => format!("{:.1}s", n.as_f64().unwrap_or(0.0)),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:<11} {:<28} {:<28} {:<22} {:<28} {:>3} {:>7} {:>6} {:>4} {:>8} {:>6} {:>7} {:>8} {:>8} {:>8} {:<10} {}\n",
            txt("state"),
            addr("saddr", "sport"),
            addr("daddr", "dport"),
            process,
            workload(s),
            if get("keepalive") == serde_json::Value::Bool(true) {
                "on"
            } else {
                "off"
            },
            src("idle_s", "idle_from"),
            src("intvl_s", "intvl_from"),
            src("cnt", "cnt_from"),
            txt("user_timeout_ms"),
            txt("time_to_detect_s"),
            next,
            secs("idle_now_s"),
            secs("last_send_s"),
            secs("last_recv_s"),
            txt("peer_group"),
            match txt("risk").as_str() {
                "exposed" => "EXPOSED",
                "at_risk" => "AT-RISK",
                "covered" => "covered",
                "listener" => "listener",
                _ => "",
            },
        ));
    }
    out
}
