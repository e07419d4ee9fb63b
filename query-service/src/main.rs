use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = query_service::Config::parse();
    infra::config::init_tracing(config.log_format);
    query_service::run(config).await
}
