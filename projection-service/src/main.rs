use std::process::ExitCode;

use clap::Parser;
use projection_service::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    infra::config::init_tracing(cli.log_format);
    match cli::main(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "projection-service failed");
            eprintln!("projection-service: {e}");
            ExitCode::FAILURE
        }
    }
}
