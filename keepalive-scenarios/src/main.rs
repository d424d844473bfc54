//! keepalive-scenarios: the real-kernel scenario suite for the keepalive observer.
//!
//! Builds client — router — server network namespaces, opens real keepalive connections,
//! breaks the path with nftables in the router, and compares what the daemon under test reports
//! with what the kernel itself reports (application errno, nstat counters, timing).

mod cleanup;
mod cmd;
mod daemon;
mod event;
mod flow;
mod http;
mod inventory;
mod nft;
mod nstat;
mod report;
mod scenarios;
mod sock;
mod suite;
mod topology;
mod verify;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use scenarios::Env;
use std::io::Write;
use std::path::PathBuf;
use suite::Scenario;
use topology::Family;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FamilyArg {
    Ipv4,
    Ipv6,
    Both,
}

#[derive(Parser, Debug)]
#[command(
    name = "keepalive-scenarios",
    about = "Real-kernel TCP keepalive scenarios checked against the daemon"
)]
struct Cli {
    /// Daemon binary under test (started once, shared by all scenarios).
    #[arg(long, value_name = "PATH", required_unless_present_any = ["no_daemon", "list"], conflicts_with = "no_daemon")]
    daemon: Option<PathBuf>,
    /// Check only the kernel side (application errno, timing, nstat), without a daemon.
    #[arg(long)]
    no_daemon: bool,
    /// Passed to the daemon as --hook-mode (also to the extra daemons some inventory scenarios
    /// start), and printed as mode= in the result lines.
    #[arg(long, default_value = "auto")]
    hook_mode: String,
    /// Scenario to run (repeatable); default all. See --list.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    #[arg(long, value_enum, default_value_t = FamilyArg::Both)]
    family: FamilyArg,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    #[arg(long, value_name = "PATH", default_value = "ip")]
    ip_bin: String,
    #[arg(long, value_name = "PATH", default_value = "nft")]
    nft_bin: String,
    #[arg(long, value_name = "PATH", default_value = "nstat")]
    nstat_bin: String,
    /// Extra argument for the daemon (repeatable).
    #[arg(long = "daemon-arg", value_name = "ARG", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Run a failed scenario again up to this many times, at the end of the suite; one that
    /// then passes is reported as flaky (its failure is kept in the output), not as passed.
    #[arg(long, default_value_t = 0)]
    retries: u32,
}

/// Starts the block that repeats every failure at the end of stdout (xtask quotes it).
const FAILED_HEADER: &str = "failed scenarios:";
/// Starts the block of scenarios that failed once and then passed when run again.
const FLAKY_HEADER: &str = "flaky scenarios (failed once, passed when run again):";

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => {
            println!("success");
            std::process::exit(0);
        }
        Ok(false) => {
            println!("failure");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            println!("failure");
            std::process::exit(1);
        }
    }
}

fn run(cli: &Cli) -> Result<bool> {
    if cli.list {
        for k in suite::all() {
            println!("{:<22} {}", k.name(), k.describe());
        }
        std::process::exit(0);
    }
    let kinds: Vec<Scenario> = if cli.scenarios.is_empty() {
        suite::all()
    } else {
        let mut v = Vec::new();
        for name in &cli.scenarios {
            match Scenario::parse(name) {
                Some(k) => v.push(k),
                None => bail!("unknown scenario {name:?} (see --list)"),
            }
        }
        v
    };
    let families = match cli.family {
        FamilyArg::Ipv4 => vec![Family::Ipv4],
        FamilyArg::Ipv6 => vec![Family::Ipv6],
        FamilyArg::Both => vec![Family::Ipv4, Family::Ipv6],
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (network namespaces, nftables)");
    }
    cleanup::install_signal_thread(&cli.ip_bin)?;

    let env = Env {
        ip_bin: cli.ip_bin.clone(),
        nft_bin: cli.nft_bin.clone(),
        nstat_bin: cli.nstat_bin.clone(),
        mode: if cli.no_daemon {
            "none".to_owned()
        } else {
            cli.hook_mode.clone()
        },
        prefix: format!("kat{}", std::process::id()),
        daemon_bin: cli.daemon.clone(),
        daemon_args: cli.daemon_args.clone(),
        hook_mode: cli.hook_mode.clone(),
    };
    let mut daemon = match &cli.daemon {
        Some(path) => Some(daemon::Daemon::start(
            path,
            &cli.hook_mode,
            &cli.daemon_args,
            "daemon",
        )?),
        None => None,
    };
    if let Some(d) = &daemon {
        let err = d.stderr_path();
        let out = err.with_extension("stdout");
        eprintln!(
            "daemon ready on {} (stderr: {}, stdout copy: {})",
            d.addr,
            err.display(),
            out.display()
        );
        match d.rung_lines() {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(e) => eprintln!("cannot read the daemon's hook rungs: {e:#}"),
        }
    }

    // Repeated at the very end: CI shows only a log's tail, and the VM stage follows this one.
    let mut failed: Vec<(Scenario, Family, String)> = Vec::new();
    let mut seq = 0;
    for kind in &kinds {
        for family in &families {
            seq += 1;
            if let Some(block) = run_one(*kind, *family, seq, &env, daemon.as_mut()) {
                failed.push((*kind, *family, block));
            }
        }
    }
    // A failure that does not repeat is reported as flaky, never hidden: its first line stays
    // above and is repeated in its own block below.
    let mut flaky = Vec::new();
    for _ in 0..cli.retries {
        let mut still = Vec::new();
        for (kind, family, first) in failed {
            seq += 1;
            eprintln!("  retrying {} {} once", kind.name(), family.name());
            match run_one(kind, family, seq, &env, daemon.as_mut()) {
                Some(block) => still.push((kind, family, block)),
                None => flaky.push(first),
            }
        }
        failed = still;
    }
    drop(daemon.take());
    if !flaky.is_empty() {
        println!("{FLAKY_HEADER}");
        for block in &flaky {
            println!("{block}");
        }
    }
    if !failed.is_empty() {
        println!("{FAILED_HEADER}");
        for (_, _, block) in &failed {
            println!("{block}");
        }
    }
    Ok(failed.is_empty())
}

/// Runs one scenario and prints its result line; on failure returns the line with the daemon's
/// stderr tail, for the blocks at the end.
fn run_one(
    kind: Scenario,
    family: Family,
    seq: usize,
    env: &Env,
    mut daemon: Option<&mut daemon::Daemon>,
) -> Option<String> {
    let started = std::time::Instant::now();
    // A panic is a failed scenario, not the end of the suite; the topology's Drop has already
    // removed its namespaces while unwinding.
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        kind.run(family, seq, env, daemon.as_deref_mut())
    }));
    let line = attempt.unwrap_or_else(|_| {
        let mut l = report::Line::new(kind.name(), family.name(), &env.mode);
        l.failures
            .push("the scenario panicked (see stderr)".to_owned());
        l
    });
    println!("{}", line.render());
    let _ = std::io::stdout().flush();
    eprintln!(
        "  took {} {}: {:.1}s",
        line.scenario,
        line.family,
        started.elapsed().as_secs_f64()
    );
    for note in &line.notes {
        eprintln!("  note {} {}: {note}", line.scenario, line.family);
    }
    if let (Some(why), true) = (&line.skipped, line.success()) {
        eprintln!("  skipped {} {}: {why}", line.scenario, line.family);
    }
    if line.success() {
        return None;
    }
    let mut block = line.render();
    if let Some(t) = daemon.as_ref().map(|d| d.stderr_tail(15)) {
        eprintln!("  daemon stderr tail:\n{t}");
        block.push_str("\n  daemon stderr tail:\n");
        block.push_str(&t);
    }
    Some(block)
}
