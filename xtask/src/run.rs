use anyhow::Result;

use crate::{
    build,
    exec::{exec, privileged},
    setup,
};

#[derive(clap::Parser)]
pub struct Options {
    /// Arguments for keepalive-daemon (default: --json).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    setup::run(setup::Options {
        toolchain_only: false,
    })?;
    let build_opts = build::Options {
        release: true,
        musl: false,
        arm64: false,
    };
    build::build(&build_opts)?;
    let args = if opts.args.is_empty() {
        vec!["--json".to_owned()]
    } else {
        opts.args
    };
    // Loading BPF programs needs root (CAP_BPF + CAP_PERFMON at least).
    exec(privileged(build::binary(&build_opts, "keepalive-daemon")).args(args))
}
