//! The owner is whoever holds the socket now: PostgreSQL's postmaster accepts a connection,
//! forks a backend for it and closes its own copy; keepalive comes from
//! `tcp_keepalives_idle/interval/count`. `/sockets` must name the backend (the pid
//! `pg_backend_pid()` reports), not the postmaster, and the backend's events too.
use std::{
    fs,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{Ctx, proc::Proc};
use crate::http;

const PORT: u16 = 5432;

/// Where Debian puts the server binaries (not on PATH).
pub fn pg_bin(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A scratch directory owned by `nobody` (PostgreSQL refuses to run as root).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// setpriv's arguments to run `program args…` as nobody (setpriv execs it: same pid).
fn as_nobody(program: &Path, args: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--reuid=nobody".to_string(),
        "--regid=nogroup".to_string(),
        "--clear-groups".to_string(),
        program.display().to_string(),
    ];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let (Some(initdb), Some(postgres), Some(psql), Some(setpriv)) = (
        pg_bin("initdb"),
        pg_bin("postgres"),
        super::proc::find("psql"),
        super::proc::find("setpriv"),
    ) else {
        ctx.notes
            .push("PostgreSQL server, psql or setpriv not installed: skipped".into());
        return Ok(());
    };
    let dir = Scratch(std::env::temp_dir().join(format!(
        "kat-pg-{}-{}",
        std::process::id(),
        ctx.topo.family.name()
    )));
    fs::create_dir_all(&dir.0)?;
    let status = std::process::Command::new("chown")
        .args(["nobody:nogroup", &dir.0.display().to_string()])
        .status()?;
    if !status.success() {
        bail!("chown {} failed", dir.0.display());
    }
    let data = dir.0.join("data");
    let data_s = data.display().to_string();
    let args = as_nobody(&initdb, &["-D", &data_s, "-A", "trust", "-U", "nobody"]);
    let out = std::process::Command::new(&setpriv)
        .args(&args[..])
        .output()
        .with_context(|| format!("setpriv {args:?}"))?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut hba = fs::OpenOptions::new()
        .append(true)
        .open(data.join("pg_hba.conf"))?;
    writeln!(hba, "host all all 0.0.0.0/0 trust\nhost all all ::/0 trust")?;

    let addr = SocketAddr::new(ctx.topo.server_addr(), PORT);
    let sock_dir = dir.0.display().to_string();
    let listen = format!("listen_addresses={}", addr.ip());
    let pg_args = [
        "-D",
        &data_s,
        "-k",
        &sock_dir,
        "-p",
        "5432",
        "-c",
        &listen,
        "-c",
        "tcp_keepalives_idle=7",
        "-c",
        "tcp_keepalives_interval=3",
        "-c",
        "tcp_keepalives_count=4",
    ];
    let args = as_nobody(&postgres, &pg_args);
    let mut pg = Proc::spawn(&ctx.topo.server, &setpriv, &args)?;
    let postmaster = pg.pid;
    let host = addr.ip().to_string();
    let psql_args = [
        "-h",
        &host,
        "-p",
        "5432",
        "-U",
        "nobody",
        "-d",
        "postgres",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
    ]
    .map(String::from);
    // Retried until the postmaster listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut client, backend) = loop {
        pg.ensure_running()?;
        let mut c = Proc::spawn(&ctx.topo.client, &psql, &psql_args)?;
        c.write_stdin(b"select pg_backend_pid();\n")?;
        match c.wait_line(Duration::from_secs(5), |l| l.trim().parse::<u32>().is_ok()) {
            Ok(line) => break (c, line.trim().parse::<u32>()?),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => return Err(e.context("psql never connected")),
        }
    };
    ctx.check(backend != postmaster, || {
        format!("backend pid {backend} is the postmaster's")
    });

    // The server end of the connection, as /sockets lists it: the backend's, with
    // PostgreSQL's keepalive settings.
    let t0 = Instant::now();
    let limit = Duration::from_secs(15);
    let found = loop {
        let (_, body) = http::get(ctx.main.addr, &format!("/sockets?port={PORT}"))?;
        let list: Vec<Value> = serde_json::from_str(&body)?;
        let entry = list
            .into_iter()
            .find(|s| s["state"] == "ESTABLISHED" && s["sport"] == PORT);
        match entry {
            Some(e) if e["pid"] == backend && e["idle_s"] == 7 => break Some(e),
            other if t0.elapsed() > limit => break other,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    match found {
        Some(e) if e["pid"] == backend && e["comm"] == "postgres" && e["idle_s"] == 7 => {
            ctx.notes.push(format!(
                "backend {backend} named after {:.1}s (postmaster {postmaster})",
                t0.elapsed().as_secs_f64()
            ));
        }
        Some(e) => ctx.failures.push(format!(
            "server socket names pid {} comm {} idle {} after {:.0}s; backend {backend}, postmaster {postmaster}",
            e["pid"], e["comm"], e["idle_s"], limit.as_secs_f64()
        )),
        None => ctx.failures.push("server socket not listed".into()),
    }
    client.close_stdin();
    let _ = client.wait_exit(Duration::from_secs(5));
    drop(pg);
    Ok(())
}
