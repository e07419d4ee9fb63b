//! The services as separate processes (`crm-bench serve-command`, `serve-projection`,
//! `serve-query`, `replay`): the harness starts its own binary in these roles so that each
//! service's memory is its own and the HTTP clients do not share the services' runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use infra::auth::{AuthArgs, Authenticator};
use infra::kafka::KafkaSettings;
use infra::log::KafkaCustomerLog;
use projection_service::{BatchOptions, JobOptions, ReplayOptions, RunOptions, SystemClock};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::stats::vm_hwm_kib;

/// What every role needs to find the broker and its topics.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    #[arg(long)]
    pub brokers: String,
    #[arg(long)]
    pub prefix: String,
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// Extra librdkafka properties for every client of the role, `key=value,...` (to try
    /// a tuning without touching the services; the figures record what was set).
    #[arg(long, env = "CRM_BENCH_KAFKA_EXTRA", default_value = "")]
    pub kafka_extra: String,
}

impl LogArgs {
    pub fn settings(&self, client_id: &str) -> KafkaSettings {
        let mut s = KafkaSettings::new(self.brokers.clone(), self.prefix.clone());
        s.partitions = self.partitions;
        s.client_id = client_id.to_owned();
        s.extra = self
            .kafka_extra
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        s
    }
}

#[derive(Debug, clap::Args)]
pub struct ServeCommandArgs {
    #[command(flatten)]
    pub log: LogArgs,
    /// The service's own settings, as its binary takes them (`--listen`,
    /// `--idempotency-window`, ...).
    #[command(flatten)]
    pub service: command_service::CommandArgs,
    #[command(flatten)]
    pub auth: TokenArgs,
}

/// The `ce_source` of the harness's records on the inbound topic.
pub const INBOUND_SOURCE: &str = "/channels/bench";

/// HS256 secret, issuer and audience of the harness's minted tokens.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    #[arg(long)]
    pub secret: String,
    #[arg(long)]
    pub issuer: String,
    #[arg(long)]
    pub audience: String,
}

impl TokenArgs {
    pub fn authenticator(&self) -> anyhow::Result<Authenticator> {
        Authenticator::from_args(&AuthArgs {
            jwt_hs256_secret: Some(self.secret.clone()),
            jwt_issuer: Some(self.issuer.clone()),
            jwt_audience: Some(self.audience.clone()),
            channel_sources: Some(format!("{INBOUND_SOURCE}=adapter:bench-inbound")),
            ..AuthArgs::default()
        })
        .context("authentication settings")
    }
}

/// command-service: the real App and router; every partition assigned to this instance by
/// hand (what the consumer group would do with one member, without the join's seconds).
pub async fn command(args: ServeCommandArgs) -> anyhow::Result<()> {
    let settings = args.log.settings("bench-command-service");
    let auth = args.auth.authenticator()?;
    let app = command_service::App::build(
        &args.service,
        Arc::new(KafkaCustomerLog {
            settings: settings.clone(),
        }),
        auth,
    )?;
    let all: Vec<i32> = (0..settings.partitions).collect();
    app.streams
        .assign(&all)
        .await
        .context("taking every partition over")?;
    // and the inbound topic's partitions of the same numbers, as `follow_ownership` does
    let inbound = command_service::inbound::InboundReaders::new(app.clone(), settings.clone())
        .context("creating the inbound readers' producers")?;
    inbound.start(&all);
    command_service::serve(app, args.service.listen, args.service.max_body_bytes).await
}

#[derive(Debug, clap::Args)]
pub struct DbArgs {
    #[arg(long)]
    pub database_url: String,
}

pub async fn connect(url: &str, connections: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

#[derive(Debug, clap::Args)]
pub struct ProjectionArgs {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

/// projection-service following the live version (consumer group, default batches).
pub async fn projection(args: ProjectionArgs) -> anyhow::Result<()> {
    let pool = connect(&args.db.database_url, 8).await?;
    let service = projection_service::ProjectionService::start(
        pool,
        args.log.settings("bench-projection-service"),
        RunOptions::new("rm"),
        Arc::new(SystemClock),
    )?;
    infra::shutdown::shutdown_signal().await;
    service.shutdown().await;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ServeQueryArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The service's own settings, as its binary takes them (`--listen`, ...).
    #[command(flatten)]
    pub service: query_service::QueryArgs,
    #[command(flatten)]
    pub projection: infra::config::ProjectionArgs,
    #[command(flatten)]
    pub auth: TokenArgs,
}

/// query-service over the live version, as its binary runs it (16 connections, 2 s wait).
pub async fn query(args: ServeQueryArgs) -> anyhow::Result<()> {
    let pool = query_service::pool(&args.db.database_url, args.service.db_connections)?;
    let app = query_service::App::build(
        &args.service,
        &args.projection,
        pool,
        args.auth.authenticator()?,
    )
    .map_err(|e| anyhow::anyhow!("starting the query-service: {e}"))?;
    query_service::serve(app, args.service.listen).await
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[arg(long, default_value_t = 1)]
    pub version: i32,
    #[arg(long, default_value_t = projection_service::REPLAY_BATCH_RECORDS)]
    pub max_records: usize,
}

/// projection-service's replay from offset zero into a new version, activated at the end.
/// Prints one JSON line: what it did, how long it took, and its peak memory.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let pool = connect(&args.db.database_url, 8).await?;
    let started = Instant::now();
    let mut consumer_done = None;
    let outcome = projection_service::replay(
        pool,
        args.log.settings("bench-replay"),
        ReplayOptions {
            projection: "rm".into(),
            version: args.version,
            batch: BatchOptions {
                max_records: args.max_records,
                ..BatchOptions::default()
            },
            activate: true,
            catch_up_lag: 0,
            jobs: JobOptions::default(),
        },
        Arc::new(SystemClock),
        projection_service::Metrics::new()?,
        |p| {
            if p.caught_up {
                consumer_done = Some(p.elapsed);
            }
            eprintln!(
                "replay: {} records, {} events, {:.0} events/s",
                p.records_done, p.events_applied, p.events_per_second
            );
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("replay: {e}"))?;
    let total = started.elapsed();
    println!(
        "{}",
        json!({
            "records": outcome.records,
            "events_applied": outcome.events_applied,
            "dead_letters": outcome.dead_letters,
            "consumer_seconds": consumer_done.map(|d| d.as_secs_f64()),
            "total_seconds": total.as_secs_f64(),
            "vm_hwm_kib": vm_hwm_kib(std::process::id()),
        })
    );
    Ok(())
}
