use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = query_service::Config::parse();
    config.log.init_tracing();
    query_service::run(config).await
}
