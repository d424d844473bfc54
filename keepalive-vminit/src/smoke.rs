//! `kat.smoke=1`: checks that the guest offers what the suite and daemon rely on, without
//! running either. Used to bring up a new kernel in the table, and while those binaries are
//! being changed. Lines use the suite's format so the host parses them the same way.

use std::process::Command;

type Check = fn() -> Result<(), String>;

pub fn run(mode: &str, prefix: &str) -> bool {
    let checks: [(&str, Check); 6] = [
        ("btf", btf),
        ("kallsyms", kallsyms),
        ("netns-veth", netns_veth),
        ("nftables", nftables),
        ("nstat", nstat),
        ("clients", clients),
    ];
    let mut ok = true;
    for (name, check) in checks {
        let (result, detail) = match check() {
            Ok(()) => ("success", String::new()),
            Err(e) => ("failure", format!(" error={e:?}")),
        };
        ok &= result == "success";
        println!("{prefix} scenario=smoke-{name} family=any mode={mode} result={result}{detail}");
    }
    ok
}

fn btf() -> Result<(), String> {
    let len = std::fs::metadata("/sys/kernel/btf/vmlinux")
        .map_err(|e| e.to_string())?
        .len();
    if len == 0 {
        Err("empty /sys/kernel/btf/vmlinux".into())
    } else {
        Ok(())
    }
}

/// The tracepoint mode filters on this address; a zero means kallsyms is hidden from us.
fn kallsyms() -> Result<(), String> {
    let text = std::fs::read_to_string("/proc/kallsyms").map_err(|e| e.to_string())?;
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("tcp_keepalive_timer"))
        .ok_or("tcp_keepalive_timer not in /proc/kallsyms")?;
    if line.starts_with("0000000000000000") {
        Err("addresses hidden".into())
    } else {
        Ok(())
    }
}

fn netns_veth() -> Result<(), String> {
    sh("/bin/ip", &["netns", "add", "katsmoke"])?;
    let r = sh(
        "/bin/ip",
        &[
            "-n", "katsmoke", "link", "add", "kat0", "type", "veth", "peer", "name", "kat1",
        ],
    )
    .and_then(|()| {
        sh(
            "/bin/ip",
            &["-n", "katsmoke", "addr", "add", "fd00::1/64", "dev", "kat0"],
        )
    });
    let _ = sh("/bin/ip", &["netns", "del", "katsmoke"]);
    r
}

fn nftables() -> Result<(), String> {
    let rules = "table inet katsmoke {\n chain forward_chain {\n  type filter hook forward priority 0;\n  \
                 ct state invalid counter reject with tcp reset\n  \
                 ip daddr 192.0.2.1 counter reject with icmpx type host-unreachable\n  \
                 ip6 daddr 2001:db8::1 counter drop\n }\n}\n";
    std::fs::write("/tmp/katsmoke.nft", rules).map_err(|e| e.to_string())?;
    sh("/bin/nft", &["-f", "/tmp/katsmoke.nft"])?;
    sh("/bin/nft", &["delete", "table", "inet", "katsmoke"])
}

fn nstat() -> Result<(), String> {
    let out = Command::new("/bin/nstat")
        .args(["-az", "TcpExtTCPKeepAlive"])
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&out.stdout).contains("TcpExtTCPKeepAlive") {
        Ok(())
    } else {
        Err(format!(
            "no TcpExtTCPKeepAlive in nstat output: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The third-party clients the host shipped (each optional) start with their libraries, and
/// python3 finds its standard library.
fn clients() -> Result<(), String> {
    let runs: [(&str, &[&str]); 4] = [
        ("/bin/socat", &["-V"]),
        ("/bin/curl", &["--version"]),
        ("/bin/redis-server", &["--version"]),
        (
            "/bin/python3",
            &["-c", "import socket, sys, json, subprocess"],
        ),
    ];
    for (program, args) in runs {
        if std::path::Path::new(program).exists() {
            sh(program, args)?;
        }
    }
    Ok(())
}

fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
