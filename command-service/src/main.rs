use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = command_service::Config::parse();
    config.log.init_tracing();
    command_service::run(config).await
}
