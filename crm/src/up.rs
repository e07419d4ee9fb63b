//! `crm up`: command-service, projection-service and query-service in one process, on Kafka
//! and PostgreSQL or on the embedded default, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use infra::config::{KafkaArgs, ProjectionArgs};
use infra::kafka::PartitionOwnership;
use projection_service::cli::{HealthArgs, LiveArgs};
use projection_service::{EventSource, ProjectionService, RunOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{DatabaseArgs, Store};
use crate::datadir::{self, DataDirArgs, DataDirLock};
use crate::local_auth;

#[derive(Debug, clap::Args)]
#[command(
    // the services' own flags, named here beside one another
    mut_arg("command_listen", |a| a.long("command-listen")),
    mut_arg("query_listen", |a| a.long("query-listen")),
    mut_arg("projection_listen", |a| a.long("projection-listen")),
    mut_arg("query_max_wait_ms", |a| a.long("query-max-wait-ms")),
    mut_arg("query_db_connections", |a| a.long("query-db-connections")),
    mut_arg("event_source", |a| a.default_value("/crm")),
)]
pub struct Up {
    #[command(flatten)]
    data: DataDirArgs,
    #[command(flatten)]
    command: command_service::CommandArgs,
    #[command(flatten)]
    query: query_service::QueryArgs,
    #[command(flatten)]
    health: HealthArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    projection: ProjectionArgs,
    #[command(flatten)]
    live: LiveArgs,
    #[command(flatten)]
    auth: infra::auth::AuthArgs,
}

/// What runs on the log: the command API and, on Kafka, its group membership.
struct CommandSide {
    app: Arc<command_service::App>,
    source: EventSource,
    ownership: Option<PartitionOwnership>,
}

impl Up {
    pub async fn run(mut self) -> anyhow::Result<()> {
        let embedded_log = self.kafka.brokers.is_none();
        let embedded_db = self.database.database_url.is_none();
        std::fs::create_dir_all(&self.data.dir)
            .with_context(|| format!("creating {}", self.data.dir.display()))?;
        if local_auth::use_local_secret_if_unconfigured(&mut self.auth, &self.data.dir)? {
            println!(
                "Authentication: bearer tokens signed with the secret in {}/auth; mint one with\n  crm token --data-dir {} --subject am-li --role account_manager",
                self.data.dir.display(),
                self.data.dir.display()
            );
        }
        // the ports first: a port in use fails before anything starts
        let command_listener = bind(self.command.listen, "the command API").await?;
        let query_listener = bind(self.query.listen, "the query API").await?;
        let projection_listener = match self.health.listen {
            Some(a) => Some(bind(a, "the projection's health endpoints").await?),
            None => None,
        };
        let _lock = if embedded_log || embedded_db {
            Some(DataDirLock::acquire(&self.data.dir)?)
        } else {
            None
        };
        let store = Store::open(&self.database, &self.data.dir, false).await?;
        let result = self
            .serve(
                &store,
                command_listener,
                query_listener,
                projection_listener,
            )
            .await;
        store.close().await;
        result
    }

    async fn serve(
        &self,
        store: &Store,
        command_listener: TcpListener,
        query_listener: TcpListener,
        projection_listener: Option<TcpListener>,
    ) -> anyhow::Result<()> {
        let pool = store.pool(self.database.database_max_connections).await?;
        let query_pool = query_service::pool(&store.url, self.query.db_connections)?;
        let side = self.command_side().await?;
        let projection = ProjectionService::start_on(
            pool.clone(),
            side.source.clone(),
            self.run_options(),
            self.live.policy.clock(),
        )
        .context("starting the projection")?;
        let query = query_service::App::build(
            &self.query,
            &self.projection,
            query_pool.clone(),
            infra::auth::Authenticator::from_args(&self.auth).context("authentication settings")?,
        )
        .context("starting the query API")?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut servers = Vec::new();
        servers.push(spawn_server(
            "command API",
            command_listener,
            command_service::http::router(side.app.clone(), self.command.max_body_bytes),
            stop_rx.clone(),
        ));
        servers.push(spawn_server(
            "query API",
            query_listener,
            query_service::router(query),
            stop_rx.clone(),
        ));
        if let Some(listener) = projection_listener {
            servers.push(spawn_server(
                "projection health",
                listener,
                projection.router(),
                stop_rx.clone(),
            ));
        }
        let on = match (&self.kafka.brokers, &self.database.database_url) {
            (Some(b), Some(_)) => format!("Kafka ({b}) and PostgreSQL"),
            (Some(b), None) => format!(
                "Kafka ({b}) and the embedded PostgreSQL in {}",
                datadir::pg_dir(&self.data.dir).display()
            ),
            (None, Some(_)) => format!(
                "the embedded log in {} and PostgreSQL",
                datadir::log_dir(&self.data.dir).display()
            ),
            (None, None) => format!("the embedded default in {}", self.data.dir.display()),
        };
        tracing::info!(%on, "running");
        println!("CRM running on {on}");
        println!(
            "  command API  http://{}  (OpenAPI: /openapi.json)",
            self.command.listen
        );
        println!(
            "  query API    http://{}  (OpenAPI: /openapi.json)",
            self.query.listen
        );
        if let Some(a) = self.health.listen {
            println!("  projection   http://{a}/readyz");
        }

        // until a signal, or until a server fails
        let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<String>(4);
        let mut waits = Vec::new();
        for (name, server) in servers {
            let failed = failed_tx.clone();
            waits.push(tokio::spawn(async move {
                let outcome = match server.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("{name}: {e}")),
                    Err(e) => Err(format!("{name}: {e}")),
                };
                if let Err(e) = &outcome {
                    let _ = failed.send(e.clone()).await;
                }
                outcome
            }));
        }
        drop(failed_tx);
        let failure = tokio::select! {
            _ = infra::shutdown::shutdown_signal() => {
                tracing::info!("shutting down");
                None
            }
            Some(e) = failed_rx.recv() => {
                tracing::error!(error = %e, "a server failed; shutting down");
                Some(e)
            }
        };
        let _ = stop_tx.send(true);
        for wait in waits {
            let _ = tokio::time::timeout(Duration::from_secs(15), wait).await;
        }
        projection.shutdown().await;
        if let Some(ownership) = side.ownership {
            ownership.shutdown().await;
        }
        pool.close().await;
        query_pool.close().await;
        match failure {
            Some(e) => Err(anyhow::anyhow!(e)),
            None => Ok(()),
        }
    }

    async fn command_side(&self) -> anyhow::Result<CommandSide> {
        let auth =
            infra::auth::Authenticator::from_args(&self.auth).context("authentication settings")?;
        if let Some(settings) = self.kafka.settings("crm") {
            let (app, ownership) =
                command_service::start_on_kafka(&self.command, &settings, auth).await?;
            return Ok(CommandSide {
                app,
                source: EventSource::Kafka(settings),
                ownership: Some(ownership),
            });
        }
        let topics = datadir::open_topics(&self.data.dir, self.kafka.partitions)?;
        let log = topics.customer_events.clone();
        let app = command_service::App::build(&self.command, log.clone(), auth)?;
        // one process owns every partition of the embedded log
        let all: Vec<i32> = (0..infra::log::CustomerLog::partitions(log.as_ref())).collect();
        app.streams
            .assign(&all)
            .await
            .context("reading the embedded log")?;
        Ok(CommandSide {
            app,
            source: EventSource::Embedded(topics),
            ownership: None,
        })
    }

    fn run_options(&self) -> RunOptions {
        let mut options = self.live.options(&self.projection);
        options.alert_source = self.command.source.clone();
        options
    }
}

async fn bind(address: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address} for {what}"))
}

type Server = tokio::task::JoinHandle<std::io::Result<()>>;

fn spawn_server(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> (&'static str, Server) {
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    (name, task)
}
