use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = command_service::Config::parse();
    infra::config::init_tracing(config.log_format);
    command_service::run(config).await
}
