//! keepalive-daemon: TCP keepalive seen from inside the kernel.
use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;

mod attach;
mod btf;
mod cli;
mod decode;
mod error;
mod event;
mod http;
mod icmp;
mod inventory;
mod inventory_metrics;
mod inventory_offsets;
mod kernel;
mod metrics;
mod netns;
mod offsets;
mod owners;
mod pipeline;
mod sinks;
mod socket_filter;
mod sockets_cmd;
mod sysctl;
mod tracefs;
mod tracker;

fn main() -> ExitCode {
    let opts = cli::Options::parse();
    if let Some(cli::Command::Sockets(args)) = &opts.command {
        return match sockets_cmd::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keepalive-daemon sockets: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        };
    }
    let opts = opts.run;
    env_logger::Builder::new()
        .filter_level(opts.log_level)
        .format(|buf, record| {
            writeln!(buf, "{} {:<5} {}", buf.timestamp_millis(), record.level(), record.args())
        })
        .target(env_logger::Target::Stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keepalive-daemon: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(pipeline::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keepalive-daemon: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
