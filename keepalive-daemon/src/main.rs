//! keepalive-daemon: TCP keepalive seen from inside the kernel.
use std::process::ExitCode;

mod attach;
mod btf;
mod calibrate;
mod caps;
mod check;
mod cli;
mod config;
mod decode;
mod error;
mod event;
mod http;
mod icmp;
mod inventory;
mod inventory_metrics;
mod inventory_offsets;
mod kernel;
mod kernel_loss;
mod logging;
mod metrics;
mod netns;
mod notify;
mod offsets;
mod owners;
mod pipeline;
mod rewalk;
mod sinks;
mod socket_filter;
mod sockets_cmd;
mod sysctl;
mod tracefs;
mod tracker;
mod unseen;
mod webconfig;

fn main() -> ExitCode {
    let parsed = cli::parse();
    if let Some(cli::Command::Sockets(args)) = &parsed.options.command {
        return match sockets_cmd::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keepalive-daemon sockets: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        };
    }
    // Order: configuration (flags over file), then its checks, then bind, attach, drop
    // capabilities and tell systemd READY (pipeline::run).
    let opts = match config::resolve(&parsed) {
        Ok(opts) => opts,
        Err(e) => {
            logging::fatal(&e);
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    logging::init(opts.log_level, opts.log_format);
    log::debug!("effective configuration: {opts:?}");
    if opts.config_check {
        return check::run(&opts);
    }
    let web = match opts
        .web_config_file
        .as_deref()
        .map(webconfig::Watched::load)
        .transpose()
    {
        Ok(web) => web,
        Err(e) => {
            let e = error::Error::Config(e);
            logging::fatal(&e);
            return ExitCode::from(e.exit_code() as u8);
        }
    };

    // glibc gives each thread that allocates its own arena and keeps what they freed; with the
    // event loop, HTTP readers and blocking scans moving between threads, RSS then steps up by
    // arenas rather than following the data. Two arenas are plenty for two workers.
    #[cfg(target_env = "gnu")]
    // SAFETY: a plain setting, made before the runtime starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            logging::fatal(format!("cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(pipeline::run(opts, web)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            notify::stopping(&e.to_string());
            logging::fatal(&e);
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
