//! `portico`: the one binary. See `portico --help`.

use clap::Parser;
use portico::cli::{Cli, Command};

/// mimalloc: the gateway allocates per call (headers, bodies); measured in `bench/`.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format.as_deref();
    // `serve` installs its own telemetry once its settings (which may name a trace collector)
    // are read; the other commands log only.
    let logs = || portico::telemetry::init(format, None);
    let result = match cli.command {
        Command::Serve(args) => portico::commands::serve(args, format).await,
        Command::Apply(args) => logs().and(portico::commands::apply(args).await),
        Command::Export(args) => logs().and(portico::commands::export(args).await),
        Command::Admin(args) => logs().and(portico::commands::admin(args).await),
        Command::Migrate(args) => logs().and(portico::commands::migrate(args).await),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
