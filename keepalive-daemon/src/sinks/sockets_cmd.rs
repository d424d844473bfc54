//! `keepalive-daemon sockets`: the inventory of a running daemon, as a table like `ss` or JSON.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
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
        by_risk: args.sort.is_some(),
        limit: args.limit.map(|n| n as usize),
    };
    let path = if args.advise {
        "/advice".to_string()
    } else {
        format!("/sockets?{}", filter.to_query())
    };
    let mut body = fetch(args, &path)?;
    let broken = |e: std::io::Error| Error::Config(format!("reading the daemon's answer: {e}"));
    let not_json = |e: serde_json::Error| {
        Error::Config(format!("daemon answered something other than JSON: {e}"))
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        // As it comes: a million sockets are a few hundred MB of JSON.
        std::io::copy(&mut body, &mut out).map_err(broken)?;
        let _ = writeln!(out);
        return Ok(());
    }
    if args.advise {
        let doc: serde_json::Value = serde_json::from_reader(body).map_err(not_json)?;
        print!("{}", advice(&doc));
        return Ok(());
    }
    let _ = out.write_all(header().as_bytes());
    let mut rows = Rows::new(body);
    while let Some(row) = rows.next_row().map_err(broken)? {
        let s: serde_json::Value = serde_json::from_slice(&row).map_err(not_json)?;
        // A closed pipe (`| head`) ends the listing.
        if out.write_all(line(&s).as_bytes()).is_err() {
            break;
        }
    }
    Ok(())
}

/// The elements of a JSON array read one at a time, so that memory stays that of one row.
struct Rows<R> {
    r: R,
    started: bool,
    ended: bool,
}

impl<R: std::io::BufRead> Rows<R> {
    fn new(r: R) -> Self {
        Rows {
            r,
            started: false,
            ended: false,
        }
    }

    /// The next element's text, or None after the closing bracket.
    fn next_row(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut byte = [0u8; 1];
        if self.ended {
            return Ok(None);
        }
        if !self.started {
            loop {
                if self.r.read(&mut byte)? == 0 {
                    return Err(bad("not a JSON array"));
                }
                match byte[0] {
                    b'[' => break,
                    b if b.is_ascii_whitespace() => {}
                    _ => return Err(bad("not a JSON array")),
                }
            }
            self.started = true;
        }
        let (mut row, mut depth, mut in_str, mut escaped) = (Vec::new(), 0u32, false, false);
        loop {
            let buf = self.r.fill_buf()?;
            if buf.is_empty() {
                return Err(bad("the array ended early"));
            }
            let mut used = 0;
            for &b in buf {
                used += 1;
                if in_str {
                    row.push(b);
                    match (escaped, b) {
                        (true, _) => escaped = false,
                        (false, b'\\') => escaped = true,
                        (false, b'"') => in_str = false,
                        _ => {}
                    }
                    continue;
                }
                match b {
                    b',' | b']' if depth == 0 => {
                        self.r.consume(used);
                        self.ended = b == b']';
                        return match (row.iter().all(u8::is_ascii_whitespace), self.ended) {
                            (true, true) => Ok(None),
                            (true, false) => Err(bad("an empty element")),
                            (false, _) => Ok(Some(row)),
                        };
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => depth = depth.saturating_sub(1),
                    b'"' => in_str = true,
                    _ => {}
                }
                row.push(b);
            }
            self.r.consume(used);
        }
    }
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

/// The body of the daemon's answer, as a reader. HTTP/1.0, so that the streamed answer comes
/// plain until the connection closes rather than in chunks.
fn fetch(args: &SocketsArgs, path: &str) -> Result<BufReader<TcpStream>> {
    let unreachable = |e: std::io::Error| {
        Error::Config(format!(
            "no daemon answering on {} ({e}); start it or pass --web.listen-address",
            args.listen
        ))
    };
    let mut s =
        TcpStream::connect_timeout(&args.listen, Duration::from_secs(3)).map_err(unreachable)?;
    // Once connected, a failure is a daemon that stopped answering, not a missing one: say so
    // rather than tell the operator to start a daemon that is running.
    let silent = |e: std::io::Error| {
        Error::Config(format!(
            "the daemon on {} accepted the connection but stopped answering ({e})",
            args.listen
        ))
    };
    // Between two rows at most: a million rows take longer than that in all.
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(silent)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", args.listen).map_err(silent)?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).map_err(silent)?;
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).map_err(silent)? == 0 || l.trim_end().is_empty() {
            break;
        }
    }
    if status.split_whitespace().nth(1) != Some("200") {
        let mut body = String::new();
        let _ = r.read_to_string(&mut body);
        return Err(Error::Config(format!(
            "daemon refused the query: {}",
            body.trim()
        )));
    }
    Ok(r)
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

fn header() -> String {
    format!(
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
    )
}

fn line(s: &serde_json::Value) -> String {
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
    format!(
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
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> std::io::Result<Vec<String>> {
        // A tiny buffer: elements straddle refills.
        let mut r = Rows::new(BufReader::with_capacity(3, text.as_bytes()));
        let mut out = Vec::new();
        while let Some(row) = r.next_row()? {
            out.push(String::from_utf8(row).unwrap());
        }
        Ok(out)
    }

    #[test]
    fn reads_array_elements_one_at_a_time() {
        assert_eq!(rows(" [ ] ").unwrap(), Vec::<String>::new());
        let got = rows(r#"[{"a":"x,]}\"y","b":[1,2]},{"c":{}}]"#).unwrap();
        assert_eq!(got, [r#"{"a":"x,]}\"y","b":[1,2]}"#, r#"{"c":{}}"#]);
        assert!(rows("{}").is_err());
        assert!(rows(r#"[{"a":1},"#).is_err());
        assert!(rows("[1,,2]").is_err());
    }
}
