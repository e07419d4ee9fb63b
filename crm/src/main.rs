//! `crm`: the whole platform in one process.
//!
//! `crm up` runs command-service, projection-service and query-service together. With
//! `--kafka-brokers` and `--database-url` it runs on Kafka and that PostgreSQL; with neither,
//! on the embedded default: the event log in files under `--data-dir` and the read models in
//! a private PostgreSQL cluster under it, surviving restarts, with the same domain, the same
//! command handling and the same projection code. With only `--database-url`: the embedded
//! log and that database.

mod admin;
mod datadir;
mod demo;
mod local_auth;
mod postgres;
mod up;

use anyhow::Context;
use clap::{Parser, Subcommand};
use infra::config::{KafkaArgs, LogArgs};
use infra::kafka::provision_topics;

use crate::datadir::DataDirArgs;

#[derive(Debug, Parser)]
#[command(
    name = "crm",
    version,
    about = "An event-sourced CRM: every customer touchpoint an immutable event"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the platform (command, projection and query services): on Kafka and PostgreSQL
    /// when --kafka-brokers and --database-url are given, else on the embedded default.
    Up(Box<up::Up>),
    /// Create the platform's topics on Kafka (idempotent).
    Topics(KafkaArgs),
    /// Load a realistic generated data set through the command API of a running platform,
    /// and wait until the query API shows it.
    Demo(DemoArgs),
    /// Mint a bearer token for local use (signed with the data directory's secret, or the
    /// configured HS256 secret).
    Token(TokenArgs),
    /// Build a projection version from offset zero (Kafka with --kafka-brokers, else the
    /// embedded log) and switch over when caught up.
    Replay(Box<admin::ReplayCmd>),
    /// Create or upgrade the read models' control tables and every version's schema.
    Migrate(admin::MigrateCmd),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// Who the token is for: becomes the actor of every event it causes.
    #[arg(long)]
    subject: String,
    /// A role: administrator, sales_director, account_manager, executive, service_agent,
    /// auditor, channel_adapter. Repeat for several.
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
    /// Hours until it expires.
    #[arg(long, default_value_t = 12)]
    hours: u64,
    #[command(flatten)]
    data: DataDirArgs,
    #[command(flatten)]
    auth: infra::auth::AuthArgs,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// The command API to load through.
    #[arg(long, env = "CRM_COMMAND_URL", default_value = "http://127.0.0.1:8081")]
    command_url: String,
    /// The query API whose read models the demo waits for.
    #[arg(long, env = "CRM_QUERY_URL", default_value = "http://127.0.0.1:8082")]
    query_url: String,
    /// How many customers to generate.
    #[arg(long, default_value_t = 200)]
    customers: usize,
    /// Seed of the generator: the same seed gives the same data.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Longest wait for the read models to catch up, in seconds.
    #[arg(long, default_value_t = 600)]
    catch_up_timeout: u64,
    #[command(flatten)]
    data: DataDirArgs,
    #[command(flatten)]
    auth: infra::auth::AuthArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init_tracing();
    match cli.command {
        Commands::Up(up) => up.run().await,
        Commands::Demo(d) => {
            let mint = |subject: &str, role: &str| {
                local_auth::token(&d.auth, &d.data.dir, subject, &[role.to_owned()], 12)
            };
            demo::Demo {
                command_url: d.command_url.clone(),
                query_url: d.query_url.clone(),
                customers: d.customers,
                seed: d.seed,
                catch_up_timeout: std::time::Duration::from_secs(d.catch_up_timeout),
                data_dir: d.data.dir.clone(),
            }
            .run(&mint)
            .await
        }
        Commands::Token(t) => {
            println!(
                "{}",
                local_auth::token(&t.auth, &t.data.dir, &t.subject, &t.roles, t.hours)?
            );
            Ok(())
        }
        Commands::Topics(kafka) => {
            let settings = kafka
                .settings("crm")
                .context("--kafka-brokers (KAFKA_BROKERS) is required")?;
            let topics = provision_topics(&settings)
                .await
                .context("provisioning topics")?;
            for t in topics {
                println!("{t}");
            }
            Ok(())
        }
        Commands::Replay(r) => r.run().await,
        Commands::Migrate(m) => m.run().await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The services' flags flattened into `crm up` (some renamed there) make one consistent
    /// command line: no flag twice, every renamed one present.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
