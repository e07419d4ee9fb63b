use std::process::ExitCode;

use clap::Parser;
use projection_service::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init_tracing();
    match cli::main(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "projection-service failed");
            eprintln!("projection-service: {e}");
            ExitCode::FAILURE
        }
    }
}
