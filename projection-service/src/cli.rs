//! The `projection-service` command line: every setting is a flag and an environment
//! variable.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use domain::policy::rfm::RfmWindow;
use domain::policy::StageThresholds;
pub use infra::config::ProjectionArgs;
use infra::config::{KafkaArgs, LogArgs};
use infra::kafka::{provision_topics, KafkaSettings};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::batches::{BatchOptions, REPLAY_BATCH_RECORDS};
use crate::clock::{Clock, FixedClock, SystemClock};
use crate::jobs::JobOptions;
use crate::metrics::Metrics;
use crate::rebuild::{rebuild_read_model, RebuildOptions};
use crate::service::{
    replay_on, ProjectionService, ReplayOptions, ReplayProgress, RunOptions, ServiceError,
};
use crate::source::EventSource;
use crate::version::{drop_version, ensure_version, list_versions, live_version, migrate_control};
use crate::ProjectionVersion;

/// Applies the customer-event streams to PostgreSQL read models, exactly once per event.
#[derive(Debug, Parser)]
#[command(name = "projection-service")]
pub struct Cli {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the customer-events topic into the read models; serve /healthz, /readyz, /metrics.
    Run(RunArgs),
    /// Build a projection version from offset zero while the live one serves; switch over when caught up.
    Replay(ReplayArgs),
    /// List the versions of the projections.
    Versions(VersionsArgs),
    /// Drop a version that is not live (its schema and checkpoints).
    Drop(DropArgs),
    /// Create or upgrade the control tables and every registered version's schema.
    Migrate(MigrateArgs),
}

/// Where the read models are: flattened into [`Cli`] and into `crm`'s commands.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL of the read models. `crm`'s default: a private PostgreSQL cluster under
    /// `<data-dir>/pg`, started and stopped with `crm`.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Largest number of PostgreSQL connections of the projection.
    #[arg(
        long,
        env = "CRM_DATABASE_MAX_CONNECTIONS",
        default_value_t = 8,
        global = true
    )]
    pub database_max_connections: u32,
}

/// A pool on the read models (at least two connections), as the projection runs on.
pub async fn pool(url: &str, connections: u32) -> Result<PgPool, ServiceError> {
    let pool = PgPoolOptions::new()
        .max_connections(connections.max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(crate::ProjectionError::from)?;
    Ok(pool)
}

/// Lanes a batch is applied in: the same setting for the live service and a replay.
#[derive(Debug, Clone, Args)]
pub struct LanesArgs {
    /// Lanes a batch is applied in at the same time, each with its partitions, in a
    /// transaction and on a database connection of its own.
    #[arg(long, env = "CRM_PROJECTION_APPLY_LANES", default_value_t = 2)]
    pub apply_lanes: usize,
}

#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Most records applied in one transaction.
    #[arg(long, env = "CRM_PROJECTION_BATCH_MAX", default_value_t = 1000)]
    pub batch_max: usize,
    /// Longest wait for a batch to fill, e.g. `200ms`.
    #[arg(long, env = "CRM_PROJECTION_BATCH_WAIT", default_value = "200ms", value_parser = parse_duration)]
    pub batch_wait: Duration,
    #[command(flatten)]
    pub lanes: LanesArgs,
}

/// A replay's batches: bigger than the live service's by default (fewer commits, more events
/// folded per customer and opportunity per statement; docs/benchmarks.md).
#[derive(Debug, Clone, Args)]
pub struct ReplayBatchArgs {
    /// Most records applied in one transaction while replaying.
    #[arg(long, env = "CRM_REPLAY_BATCH_MAX", default_value_t = REPLAY_BATCH_RECORDS)]
    pub batch_max: usize,
    #[command(flatten)]
    pub lanes: LanesArgs,
}

impl ReplayBatchArgs {
    pub fn options(&self) -> BatchOptions {
        BatchOptions {
            max_records: self.batch_max.max(1),
            lanes: self.lanes.apply_lanes.max(1),
            ..BatchOptions::default()
        }
    }
}

impl BatchArgs {
    pub fn options(&self) -> BatchOptions {
        BatchOptions {
            max_records: self.batch_max.max(1),
            max_wait: self.batch_wait,
            lanes: self.lanes.apply_lanes.max(1),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Days an opportunity may stay in qualification before an alert opens.
    #[arg(long, env = "CRM_STAGE_QUALIFICATION_DAYS", default_value_t = 14)]
    pub qualification_days: u32,
    /// Days in proposal before an alert opens.
    #[arg(long, env = "CRM_STAGE_PROPOSAL_DAYS", default_value_t = 21)]
    pub proposal_days: u32,
    /// Days in evaluation before an alert opens.
    #[arg(long, env = "CRM_STAGE_EVALUATION_DAYS", default_value_t = 21)]
    pub evaluation_days: u32,
    /// Days in negotiation before an alert opens.
    #[arg(long, env = "CRM_STAGE_NEGOTIATION_DAYS", default_value_t = 30)]
    pub negotiation_days: u32,
    /// Orders of the last this many days count for RFM.
    #[arg(long, env = "CRM_RFM_WINDOW_DAYS", default_value_t = 365)]
    pub rfm_window_days: u32,
    /// Pretend the current time is this (RFC 3339), for the sweep and RFM: for tests and
    /// demos. Default: the system clock.
    #[arg(long, env = "CRM_PROJECTION_NOW")]
    pub now: Option<DateTime<Utc>>,
}

impl PolicyArgs {
    pub fn thresholds(&self) -> StageThresholds {
        StageThresholds {
            qualification_days: self.qualification_days,
            proposal_days: self.proposal_days,
            evaluation_days: self.evaluation_days,
            negotiation_days: self.negotiation_days,
        }
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        match self.now {
            Some(at) => Arc::new(FixedClock(at)),
            None => Arc::new(SystemClock),
        }
    }
}

/// How often the live projection's jobs run.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// Interval of the stage-duration alert sweep, e.g. `60s`.
    #[arg(long, env = "CRM_SWEEP_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// Interval of the full RFM recompute, e.g. `1h`.
    #[arg(long, env = "CRM_RFM_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub rfm_interval: Duration,
    /// How often to recompute RFM if orders arrived since the last time.
    #[arg(long, env = "CRM_RFM_CHECK_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub rfm_check_interval: Duration,
}

/// How the live projection runs, declared once: flattened into [`RunArgs`] and `crm up`.
#[derive(Debug, Clone, Args)]
pub struct LiveArgs {
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub jobs: JobArgs,
}

impl LiveArgs {
    /// The options of the live `projection` (following its live version); the rest as
    /// [`RunOptions::new`] sets them.
    pub fn options(&self, projection: &ProjectionArgs) -> RunOptions {
        let floor = Duration::from_millis(10);
        let mut options = RunOptions::new(projection.projection.clone());
        options.batch = self.batch.options();
        options.jobs = JobOptions {
            sweep_interval: self.jobs.sweep_interval.max(floor),
            rfm_interval: self.jobs.rfm_interval.max(floor),
            rfm_check_interval: self.jobs.rfm_check_interval.max(floor),
            thresholds: self.policy.thresholds(),
            rfm_window: RfmWindow {
                days: self.policy.rfm_window_days,
            },
        };
        options
    }
}

/// Where the projection's /healthz, /readyz and /metrics are served, declared once:
/// flattened into [`RunArgs`] (which defaults it) and `crm up` (where it is optional).
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Address of the projection's /healthz, /readyz and /metrics (`crm up`: not served
    /// when absent).
    #[arg(
        id = "projection_listen",
        long = "listen",
        value_name = "ADDRESS",
        env = "CRM_PROJECTION_LISTEN"
    )]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Args)]
#[command(mut_arg("projection_listen", |a| a.default_value("127.0.0.1:8082")))]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub projection: ProjectionArgs,
    /// Project this version; default: follow the live version (version 1 on first start).
    #[arg(long = "version", env = "CRM_PROJECTION_VERSION")]
    pub version: Option<i32>,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub live: LiveArgs,
    /// Ready (/readyz) while no assigned partition lags by more than this many records.
    #[arg(long, env = "CRM_READY_MAX_LAG", default_value_t = 1000)]
    pub ready_max_lag: i64,
    /// How often to look for a new live version (when following it).
    #[arg(long, env = "CRM_VERSION_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub version_check_interval: Duration,
    /// CloudEvents `source` of the alerts published.
    #[arg(long, env = "CRM_ALERT_SOURCE", default_value = "/projection-service")]
    pub alert_source: String,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub projection: ProjectionArgs,
    /// The version to build (a new one, or one whose replay was interrupted).
    #[arg(
        long = "version",
        env = "CRM_PROJECTION_VERSION",
        required_unless_present = "read_model",
        conflicts_with = "read_model"
    )]
    pub version: Option<i32>,
    /// Rebuild only this read model of the live version, from offset zero, and switch it in
    /// atomically while the others keep serving (e.g. `pipeline`; an unknown name lists them).
    #[arg(long, env = "CRM_REPLAY_READ_MODEL")]
    pub read_model: Option<String>,
    /// Leave the version building when caught up instead of switching over.
    #[arg(long, env = "CRM_REPLAY_NO_ACTIVATE")]
    pub no_activate: bool,
    /// Caught up (and switched over) when at most this many records arrived since the replay
    /// last reached the end of the log; the running service applies them.
    #[arg(long, env = "CRM_REPLAY_CATCH_UP_LAG", default_value_t = 500)]
    pub catch_up_lag: u64,
    #[command(flatten)]
    pub batch: ReplayBatchArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VersionsArgs {
    /// Only this projection.
    #[arg(long, env = "CRM_PROJECTION")]
    pub projection: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DropArgs {
    #[command(flatten)]
    pub projection: ProjectionArgs,
    #[arg(long = "version")]
    pub version: i32,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub projection: ProjectionArgs,
}

pub use infra::config::parse_duration;

fn kafka_settings(kafka: &KafkaArgs) -> Result<KafkaSettings, ServiceError> {
    kafka
        .settings("projection-service")
        .ok_or_else(|| ServiceError::Config("--kafka-brokers (KAFKA_BROKERS) is required".into()))
}

async fn connect(cli: &Cli) -> Result<PgPool, ServiceError> {
    let url =
        cli.database.database_url.as_deref().ok_or_else(|| {
            ServiceError::Config("--database-url (DATABASE_URL) is required".into())
        })?;
    pool(url, cli.database.database_max_connections).await
}

/// Runs the command line.
pub async fn main(cli: Cli) -> Result<(), ServiceError> {
    let pool = connect(&cli).await?;
    match cli.command {
        Command::Run(args) => run(pool, args).await,
        Command::Replay(args) => run_replay(pool, args).await,
        Command::Versions(args) => {
            let versions = list_versions(&pool, args.projection.as_deref()).await?;
            println!(
                "{:<16} {:>7} {:<9} {:>12} {:<25} {:<25}",
                "PROJECTION", "VERSION", "STATUS", "RECORDS", "CREATED", "LIVE SINCE"
            );
            for v in versions {
                println!(
                    "{:<16} {:>7} {:<9} {:>12} {:<25} {:<25}",
                    v.version.name(),
                    v.version.version(),
                    v.status.as_str(),
                    v.records,
                    v.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    v.live_since
                        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                        .unwrap_or_default(),
                );
            }
            Ok(())
        }
        Command::Drop(args) => {
            let pv = ProjectionVersion::new(args.projection.projection, args.version)?;
            drop_version(&pool, &pv).await?;
            println!("dropped {}", pv.schema());
            Ok(())
        }
        Command::Migrate(args) => {
            migrate_control(&pool).await?;
            let name = args.projection.projection;
            let mut versions: Vec<ProjectionVersion> = list_versions(&pool, Some(&name))
                .await?
                .into_iter()
                .map(|v| v.version)
                .collect();
            if versions.is_empty() {
                versions.push(ProjectionVersion::new(name.clone(), 1)?);
            }
            for pv in versions {
                let status = ensure_version(&pool, &pv).await?;
                println!("{} migrated ({})", pv.schema(), status.as_str());
            }
            Ok(())
        }
    }
}

async fn run(pool: PgPool, args: RunArgs) -> Result<(), ServiceError> {
    let settings = kafka_settings(&args.kafka)?;
    let created = provision_topics(&settings).await?;
    if !created.is_empty() {
        tracing::info!(?created, "topics created");
    }
    let options = RunOptions {
        version: args.version,
        ready_max_lag: args.ready_max_lag,
        version_check_interval: args.version_check_interval.max(Duration::from_millis(10)),
        alert_source: args.alert_source.clone(),
        ..args.live.options(&args.projection)
    };
    let service = ProjectionService::start(pool, settings, options, args.live.policy.clock())?;
    let listen = args.health.listen.ok_or_else(|| {
        ServiceError::Config("--listen (CRM_PROJECTION_LISTEN) is required".into())
    })?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, "projection-service listening");
    let served = axum::serve(listener, service.router())
        .with_graceful_shutdown(infra::shutdown::shutdown_signal())
        .await;
    service.shutdown().await;
    served?;
    Ok(())
}

async fn run_replay(pool: PgPool, args: ReplayArgs) -> Result<(), ServiceError> {
    let settings = kafka_settings(&args.kafka)?;
    provision_topics(&settings).await?;
    replay_with_progress(pool, EventSource::Kafka(settings), &args).await
}

/// Replays as `replay` does (on Kafka or the embedded log), with progress on stderr.
pub async fn replay_with_progress(
    pool: PgPool,
    source: EventSource,
    args: &ReplayArgs,
) -> Result<(), ServiceError> {
    migrate_control(&pool).await?;
    let live = live_version(&pool, &args.projection.projection).await?;
    let version = match (&args.read_model, args.version) {
        (Some(read_model), _) => {
            return rebuild_with_progress(pool, source, args, read_model).await
        }
        (None, Some(version)) => version,
        (None, None) => {
            return Err(ServiceError::Config(
                "--version or --read-model is required".to_owned(),
            ))
        }
    };
    let options = ReplayOptions {
        projection: args.projection.projection.clone(),
        version,
        batch: args.batch.options(),
        activate: !args.no_activate,
        catch_up_lag: args.catch_up_lag,
        jobs: JobOptions {
            thresholds: args.policy.thresholds(),
            rfm_window: RfmWindow {
                days: args.policy.rfm_window_days,
            },
            ..JobOptions::default()
        },
    };
    eprintln!(
        "replaying {}_v{} from the beginning of {} (live: {})",
        options.projection,
        options.version,
        source.topic(),
        live.map(|pv| pv.schema()).unwrap_or_else(|| "none".into())
    );
    let mut printer = ProgressPrinter::new();
    let outcome = replay_on(
        pool,
        source,
        options,
        args.policy.clock(),
        Metrics::new()?,
        |p| printer.show(p),
    )
    .await;
    printer.finish();
    let outcome = outcome?;
    eprintln!(
        "{}: {} records ({} events applied, {} dead letters) in {:.1}s; {}",
        outcome.version.schema(),
        outcome.records,
        outcome.events_applied,
        outcome.dead_letters,
        outcome.elapsed.as_secs_f64(),
        if outcome.activated {
            "now live"
        } else {
            "left building"
        }
    );
    Ok(())
}

/// Rebuilds one read model of the live version (`--read-model`), with progress on stderr.
async fn rebuild_with_progress(
    pool: PgPool,
    source: EventSource,
    args: &ReplayArgs,
    read_model: &str,
) -> Result<(), ServiceError> {
    let mut options = RebuildOptions::new(args.projection.projection.clone(), read_model);
    options.batch = args.batch.options();
    options.catch_up_lag = args.catch_up_lag;
    eprintln!(
        "rebuilding read model {read_model} of {} from the beginning of {}",
        options.projection,
        source.topic()
    );
    let mut printer = ProgressPrinter::new();
    let outcome =
        rebuild_read_model(pool, source, options, Metrics::new()?, |p| printer.show(p)).await;
    printer.finish();
    let outcome = outcome?;
    eprintln!(
        "{}: read model {} rebuilt from {} records ({} events applied) in {:.1}s and switched in (held {:.0} ms)",
        outcome.version,
        outcome.read_model,
        outcome.records,
        outcome.events_applied,
        outcome.elapsed.as_secs_f64(),
        outcome.switch.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Progress on stderr: a bar on a terminal, otherwise a line every two seconds.
struct ProgressPrinter {
    bar: Option<indicatif::ProgressBar>,
    last_line: Option<Instant>,
}

impl ProgressPrinter {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} records {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        ProgressPrinter {
            bar,
            last_line: None,
        }
    }

    fn show(&mut self, p: &ReplayProgress) {
        let eta = p
            .eta
            .map(|d| format!("{}s", d.as_secs()))
            .unwrap_or_else(|| "?".into());
        let msg = format!("{:.0} events/s, ETA {eta}", p.events_per_second);
        if let Some(bar) = &self.bar {
            bar.set_length(p.records_done + p.remaining.unwrap_or(0));
            bar.set_position(p.records_done);
            bar.set_message(msg);
            return;
        }
        if self
            .last_line
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
            && !p.caught_up
        {
            return;
        }
        self.last_line = Some(Instant::now());
        let remaining = p
            .remaining
            .map(|r| r.to_string())
            .unwrap_or_else(|| "?".into());
        eprintln!(
            "replay: {} records done, {remaining} to go, {msg}{}",
            p.records_done,
            if p.caught_up { " (caught up)" } else { "" }
        );
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The flattened settings make one consistent command line.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
