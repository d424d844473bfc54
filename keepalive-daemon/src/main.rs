//! keepalive-daemon: TCP keepalive seen from inside the kernel.
use std::process::ExitCode;

use keepalive_daemon::{
    error, pipeline,
    service::{cli, config, heap, logging, notify, webconfig},
    sinks::sockets_cmd,
};

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
        return pipeline::check::run(&opts);
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

    heap::limit_arenas();
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
