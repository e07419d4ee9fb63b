//! # query-service
//!
//! The read side over HTTP, for dashboards and analysts: customers (filters, text search,
//! keyset pagination), the 360° view, timelines, opportunities, the pipeline, stage-duration
//! alerts, RFM segments, churn, the four reports and the audit trail, as JSON or streamed CSV.
//!
//! Every request reads the **live** version of the projection (`projection.projection_versions`),
//! so a replay's switch-over is picked up at once. `CRM-Min-Position` gives read-your-writes:
//! the request waits, bounded, until the live version's checkpoint has reached the position a
//! command answered with (see [`position`]).
//!
//! Closed by default: every route but `/healthz`, `/readyz`, `/metrics` and `/openapi.json`
//! needs a bearer token or an API key ([`infra::auth`]). Each route is one query operation of
//! the permission table (`domain::access::PERMISSIONS`): a caller whose roles may not use it
//! gets 403. Then record visibility: an account manager sees the customers they own, a sales
//! director those owned by the members of the teams they direct (the `teams` read model of
//! the organisation stream) and their own, the other roles every customer. Lists leave the
//! other customers out; a single resource of one answers 404, exactly as if it did not exist.
//! Reports are company-wide figures: the permission alone decides.

pub mod access;
pub mod error;
pub mod http;
pub mod list;
pub mod metrics;
pub mod params;
pub mod position;
pub mod routes;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use infra::auth::{AuthArgs, AuthState, Authenticator};
use infra::config::{LogArgs, ProjectionArgs};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

pub use crate::error::{QueryError, Result};
pub use crate::http::{openapi, router};
use crate::metrics::Metrics;

/// Every setting, as a flag and an environment variable (`query-service --help`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "query-service",
    version,
    about = "Serves the CRM read models over HTTP"
)]
pub struct Config {
    #[command(flatten)]
    pub query: QueryArgs,
    /// PostgreSQL holding the read models (written by the projection-service).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[command(flatten)]
    pub projection: ProjectionArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// The service's own settings, declared once: flattened into [`Config`] and into `crm up`
/// (which names them `--query-listen`, `--query-max-wait-ms`, `--query-db-connections`).
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// Address the query API listens on.
    #[arg(
        id = "query_listen",
        long = "listen",
        value_name = "ADDRESS",
        env = "CRM_QUERY_LISTEN",
        default_value = "127.0.0.1:8082"
    )]
    pub listen: SocketAddr,
    /// Longest a request with `CRM-Min-Position` waits for the read model, in milliseconds.
    #[arg(
        id = "query_max_wait_ms",
        long = "max-wait-ms",
        value_name = "MAX_WAIT_MS",
        env = "CRM_QUERY_MAX_WAIT_MS",
        default_value_t = 2000
    )]
    pub max_wait_ms: u64,
    /// Connections of the query API to PostgreSQL.
    #[arg(
        id = "query_db_connections",
        long = "db-connections",
        value_name = "DB_CONNECTIONS",
        env = "CRM_QUERY_DB_CONNECTIONS",
        default_value_t = 16
    )]
    pub db_connections: u32,
}

/// The running service: what every handler can reach.
pub struct App {
    pub pool: PgPool,
    /// The projection name (`rm`); its live version's schema is read per request.
    pub projection: String,
    /// Bound of a read-your-writes wait.
    pub max_wait: Duration,
    pub metrics: Metrics,
    /// Who is calling: bearer tokens and API keys.
    pub auth: Arc<Authenticator>,
    /// Wakes read-your-writes waits when a batch commits.
    pub checkpoints: position::CheckpointSignal,
}

impl AuthState for App {
    fn authenticator(&self) -> &Authenticator {
        &self.auth
    }
}

impl App {
    /// The one way a host assembles the service: its settings, the projection it serves, a
    /// pool on the read models ([`pool`]) and who may call. The binary, `crm up` and the
    /// bench call it.
    pub fn build(
        args: &QueryArgs,
        projection: &ProjectionArgs,
        pool: PgPool,
        auth: Authenticator,
    ) -> Result<Arc<App>> {
        App::new(
            pool,
            projection.projection.clone(),
            Duration::from_millis(args.max_wait_ms),
            auth,
        )
    }

    /// [`App::build`] with the settings given one by one (the tests' way in). `auth`
    /// authenticates every request but the open paths; see [`Authenticator::from_args`].
    pub fn new(
        pool: PgPool,
        projection: impl Into<String>,
        max_wait: Duration,
        auth: Authenticator,
    ) -> Result<Arc<App>> {
        let projection = projection.into();
        // the same rule as the projection-service's names: it is spliced into SQL as a schema
        read_store::ProjectionVersion::new(projection.clone(), 1)?;
        let metrics = Metrics::new().map_err(|e| {
            QueryError::Problem(Box::new(infra::problem::Problem::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("metrics: {e}"),
            )))
        })?;
        Ok(Arc::new(App {
            pool,
            projection,
            max_wait,
            metrics,
            auth: Arc::new(auth),
            checkpoints: position::CheckpointSignal::default(),
        }))
    }

    /// The schema of the live version, read now (a switch-over shows at the next request).
    pub async fn schema(&self) -> Result<String> {
        match read_store::live_version(&self.pool, &self.projection).await? {
            Some(v) => Ok(v.schema()),
            None => Err(QueryError::NoLiveVersion(self.projection.clone())),
        }
    }
}

/// A pool that connects lazily: the service starts (and `/readyz` says why it is not ready)
/// while the database is away.
pub fn pool(database_url: &str, connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(database_url)
        .context("--database-url (DATABASE_URL) is not a PostgreSQL URL")?
        .application_name("query-service")
        // PostgreSQL's JIT compiles a plan it thinks expensive with LLVM, which costs hundreds
        // of milliseconds per call for the pipeline's aggregates and saves nothing on read
        // models this size: never on the request path (docs/benchmarks.md)
        // and no parallel workers either: on the request path their start-up (about 10 ms)
        // costs more than the page they would help read
        .options([("jit", "off"), ("max_parallel_workers_per_gather", "0")])
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    Ok(PgPoolOptions::new()
        .max_connections(connections.max(1))
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Runs the query-service until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let auth = Authenticator::from_args(&config.auth).context("authentication settings")?;
    let pool = pool(&config.database_url, config.query.db_connections)?;
    let app = App::build(&config.query, &config.projection, pool, auth)
        .context("starting the query-service")?;
    serve(app, config.query.listen).await
}

/// Serves the HTTP API until SIGINT/SIGTERM.
pub async fn serve(app: Arc<App>, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, projection = %app.projection, "query-service listening");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(infra::shutdown::shutdown_signal())
        .await
        .context("serving HTTP")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The flattened settings make one consistent command line.
    #[test]
    fn the_command_line_is_consistent() {
        super::Config::command().debug_assert();
    }
}
