//! `crm`: the whole platform in one process.
//!
//! With `--kafka-brokers` it runs against Kafka; without, on the embedded default: the event
//! log kept in files under `--data-dir`, surviving restarts, with the same domain and the same
//! command handling.

mod demo;
mod local_auth;
#[allow(dead_code)] // wired into `crm up` next
mod postgres;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use infra::config::{init_tracing, KafkaArgs, LogFormat};
use infra::embedded::EmbeddedLog;
use infra::kafka::provision_topics;

#[derive(Debug, Parser)]
#[command(
    name = "crm",
    version,
    about = "An event-sourced CRM: every customer touchpoint an immutable event"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "CRM_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the platform: on Kafka when --kafka-brokers is given, else on the embedded log.
    Up(Up),
    /// Create the platform's topics on Kafka (idempotent).
    Topics(KafkaArgs),
    /// Load a realistic generated data set through the command API of a running platform.
    Demo(DemoArgs),
    /// Mint a bearer token for local use (signed with the data directory's secret, or the
    /// configured HS256 secret).
    Token(TokenArgs),
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
    /// The data directory whose secret signs the token.
    #[arg(long, env = "CRM_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    #[command(flatten)]
    auth: infra::auth::AuthArgs,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// The command API to load through.
    #[arg(long, env = "CRM_COMMAND_URL", default_value = "http://127.0.0.1:8081")]
    command_url: String,
    /// How many customers to generate.
    #[arg(long, default_value_t = 200)]
    customers: usize,
    /// Seed of the generator: the same seed gives the same data.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// The data directory of the running platform, whose secret signs the demo's tokens.
    #[arg(long, env = "CRM_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    #[command(flatten)]
    auth: infra::auth::AuthArgs,
}

#[derive(Debug, clap::Args)]
struct Up {
    /// Where the embedded default keeps its data.
    #[arg(long, env = "CRM_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Address of the command API.
    #[arg(long, env = "CRM_COMMAND_LISTEN", default_value = "127.0.0.1:8081")]
    command_listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "CRM_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_body_bytes: usize,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    auth: infra::auth::AuthArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Commands::Up(up) => up.run(cli.log_format).await,
        Commands::Demo(d) => {
            let mint = |subject: &str, role: &str| {
                local_auth::token(&d.auth, &d.data_dir, subject, &[role.to_owned()], 12)
            };
            demo::Demo {
                command_url: d.command_url.clone(),
                customers: d.customers,
                seed: d.seed,
            }
            .run(&mint)
            .await
        }
        Commands::Token(t) => {
            println!(
                "{}",
                local_auth::token(&t.auth, &t.data_dir, &t.subject, &t.roles, t.hours)?
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
    }
}

impl Up {
    async fn run(mut self, log_format: LogFormat) -> anyhow::Result<()> {
        if local_auth::use_local_secret_if_unconfigured(&mut self.auth, &self.data_dir)? {
            println!(
                "Authentication: bearer tokens signed with the secret in {}/auth; mint one with\n  crm token --subject am-li --role account_manager",
                self.data_dir.display()
            );
        }
        if self.kafka.brokers.is_some() {
            return command_service::run(command_service::Config {
                listen: self.command_listen,
                kafka: self.kafka,
                max_body_bytes: self.max_body_bytes,
                source: "/crm".into(),
                log_format,
                auth: self.auth,
            })
            .await;
        }
        let dir = self.data_dir.join("log");
        let log = EmbeddedLog::open(&dir, "customer-events".into(), self.kafka.partitions)
            .with_context(|| format!("opening the embedded log in {}", dir.display()))?;
        let auth =
            infra::auth::Authenticator::from_args(&self.auth).context("authentication settings")?;
        let app = command_service::App::new(Arc::new(log), "/crm".into(), auth)?;
        let all: Vec<i32> = (0..self.kafka.partitions).collect();
        app.streams
            .assign(&all)
            .await
            .context("reading the embedded log")?;
        tracing::info!(data_dir = %self.data_dir.display(), "running on the embedded default (no --kafka-brokers)");
        println!(
            "CRM command API on http://{}  (OpenAPI: /openapi.json)",
            self.command_listen
        );
        command_service::serve(app, self.command_listen, self.max_body_bytes).await
    }
}
