//! `portico`: the one binary. See `portico --help`.

use clap::Parser;
use portico::cli::{Cli, Command};

/// mimalloc: the gateway allocates per call (headers, bodies); measured in `bench/`.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    portico::telemetry::init(cli.log_format.as_deref());
    let result = match cli.command {
        Command::Serve(args) => portico::commands::serve(args).await,
        Command::Apply(args) => portico::commands::apply(args).await,
        Command::Export(args) => portico::commands::export(args).await,
        Command::Admin(args) => portico::commands::admin(args).await,
        Command::Migrate(args) => portico::commands::migrate(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
