mod bed;
mod bench;
mod build;
mod deploy_checks;
mod exec;
mod image;
mod kube;
mod package;
mod run;
mod setup;
mod test;
mod vm;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Tasks for the keepalive observer workspace", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Install whatever is missing: nightly rust-src, bpf-linker, the musl target, Debian tools.
    Setup(setup::Options),
    /// Build the daemon (and its eBPF object) and the scenario suite.
    Build(build::Options),
    /// Build in release mode and start the daemon on this host.
    Run(run::Options),
    /// Every test: unit tests, host scenarios, and the scenario suite in QEMU.
    Test(test::Options),
    /// Boot Debian kernels in QEMU and run the scenario suite in each hook mode.
    Vm(vm::Options),
    /// Boot a Debian system with systemd in QEMU, install the .deb as an operator would and
    /// check the running service.
    Bed(bed::Options),
    /// Build the Debian package (target/debian/) and check its contents.
    Package(package::Options),
    /// Write the OCI image (target/oci/keepalive-daemon) without a container daemon, check it
    /// with skopeo and, with --run, run it under podman as the Kubernetes DaemonSet would.
    Image(image::Options),
    /// Check deploy/kubernetes: kubernetes-validate --strict against the oldest and newest
    /// supported Kubernetes, the ServiceMonitor/PodMonitor fields, the manifests' agreement.
    Kube(kube::Options),
    /// Measure the daemon's costs next to an empty program, ss polling and bpftrace; writes
    /// BENCHMARKS.md.
    Bench(bench::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Every path the tasks use is relative to the workspace root, whatever the caller's cwd.
    std::env::set_current_dir(exec::workspace_root())?;
    match cli.command {
        Command::Setup(opts) => setup::run(opts),
        Command::Build(opts) => build::run(opts),
        Command::Run(opts) => run::run(opts),
        Command::Test(opts) => test::run(opts),
        Command::Vm(opts) => vm::run(opts),
        Command::Bed(opts) => bed::run(opts),
        Command::Package(opts) => package::run(opts),
        Command::Image(opts) => image::run(opts),
        Command::Kube(opts) => kube::run(opts),
        Command::Bench(opts) => bench::run(opts),
    }
}
