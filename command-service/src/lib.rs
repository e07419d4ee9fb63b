//! # command-service
//!
//! Commands in, validated events out. For each partition of the customer-events topic that
//! this instance owns (by consumer-group assignment), it keeps every customer's current state,
//! decides commands against it with [`domain::decide`], and appends the events with a
//! transactional producer bound to that partition — so a replaced owner is fenced and can
//! append nothing more.

pub mod http;
pub mod inbound;
pub mod metrics;
pub mod organisation;
pub mod streams;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use domain::limits::BusinessTimeWindow;
use infra::auth::{AuthArgs, AuthState, Authenticator};
use infra::config::{BusinessTimeArgs, IdempotencyArgs, KafkaArgs, LogArgs};
use infra::kafka::{
    provision_topics, KafkaSettings, OwnershipChange, OwnershipView, PartitionOwnership,
};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::inbound::InboundReaders;
use crate::metrics::Metrics;
use crate::streams::{CustomerStreams, WriterLoss};
use infra::log::{CustomerLog, KafkaCustomerLog};

/// Every setting, as a flag and an environment variable (`command-service --help`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "command-service",
    version,
    about = "Validates CRM commands and appends their events to Kafka"
)]
pub struct Config {
    #[command(flatten)]
    pub command: CommandArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// The service's own settings, declared once: flattened into [`Config`] and into `crm up`
/// (which names the listen address `--command-listen` and sources its events `/crm`).
#[derive(Debug, Clone, clap::Args)]
pub struct CommandArgs {
    /// Address the command API listens on.
    #[arg(
        id = "command_listen",
        long = "listen",
        value_name = "ADDRESS",
        env = "CRM_COMMAND_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "CRM_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// The CloudEvents `source` of the events appended (by `crm up`: and of the alerts it
    /// publishes).
    #[arg(
        id = "event_source",
        long = "source",
        value_name = "SOURCE",
        env = "CRM_EVENT_SOURCE",
        default_value = "/command-service"
    )]
    pub source: String,
    #[command(flatten)]
    pub business_time: BusinessTimeArgs,
    #[command(flatten)]
    pub idempotency: IdempotencyArgs,
}

/// The running service: what every HTTP handler can reach.
pub struct App {
    pub streams: Arc<CustomerStreams>,
    pub metrics: Metrics,
    /// Who is calling: bearer tokens, API keys, inbound sources.
    pub auth: Arc<Authenticator>,
}

impl App {
    /// The one way a host assembles the service: its settings, the log it appends to, and
    /// who may call. The binary ([`start_on_kafka`]), `crm up` and the bench call it.
    pub fn build(
        args: &CommandArgs,
        log: Arc<dyn CustomerLog>,
        auth: Authenticator,
    ) -> anyhow::Result<Arc<App>> {
        let app = App::new(log, args.source.clone(), auth, args.business_time.window())?;
        app.streams
            .set_idempotency_window(args.idempotency.idempotency_window);
        Ok(app)
    }

    /// The service on `log` with the default idempotency window: what [`App::build`] does
    /// with settings given one by one (the tests' way in).
    pub fn new(
        log: Arc<dyn CustomerLog>,
        source: String,
        auth: Authenticator,
        business_time: BusinessTimeWindow,
    ) -> anyhow::Result<Arc<App>> {
        let metrics = Metrics::new().context("registering metrics")?;
        let topic = log.topic();
        let streams = Arc::new(CustomerStreams::new(
            log,
            topic,
            source,
            metrics.clone(),
            business_time,
        ));
        Ok(Arc::new(App {
            streams,
            metrics,
            auth: Arc::new(auth),
        }))
    }
}

impl AuthState for App {
    fn authenticator(&self) -> &Authenticator {
        &self.auth
    }
}

/// Applies ownership changes as the group reports them: a partition taken over is rebuilt,
/// then its inbound partition is read; a partition given up stops both.
///
/// A partition whose writer died (a broker restart, a fence) was given up by
/// [`CustomerStreams`] on its own; the group still assigns it here, and will not assign it
/// again. So it is taken back, with a fresh writer and its history re-read, as long as the
/// group assigns it: after half a second when the writer failed, after
/// [`OwnershipView::settle_time`] when it was fenced (by then a member that was asleep has
/// heard from the group that the partition moved, so a stale owner never fences the real
/// one), and again with a growing pause while the broker cannot be reached.
pub async fn follow_ownership(
    app: Arc<App>,
    inbound: Arc<InboundReaders>,
    mut changes: UnboundedReceiver<OwnershipChange>,
    group: OwnershipView,
) {
    let (retake_tx, mut retakes) = tokio::sync::mpsc::unbounded_channel::<(i32, u32)>();
    let schedule = |partition: i32, attempt: u32, after: Duration| {
        let tx = retake_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // The receiver lives as long as this loop; nothing to do once it is gone.
            let _ = tx.send((partition, attempt));
        });
    };
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                None => break,
                Some(OwnershipChange::Assigned(partitions)) => {
                    match app.streams.assign(&partitions).await {
                        Ok(()) => inbound.start(&partitions),
                        Err(e) => {
                            tracing::error!(error = %e, ?partitions, "taking partitions over failed; retrying");
                            for &p in &partitions {
                                schedule(p, 1, Duration::from_secs(1));
                            }
                        }
                    }
                }
                Some(OwnershipChange::Revoked(partitions)) => {
                    inbound.stop(&partitions);
                    app.streams.revoke(&partitions).await;
                }
            },
            lost = app.streams.lost_writers() => {
                for (partition, loss) in lost {
                    inbound.stop(&[partition]);
                    let after = match loss {
                        WriterLoss::Failed => Duration::from_millis(500),
                        WriterLoss::Fenced => group.settle_time(),
                    };
                    schedule(partition, 1, after);
                }
            }
            Some((partition, attempt)) = retakes.recv() => {
                if !group.assigns(partition) {
                    tracing::info!(partition, "the group moved the partition on: not taken back");
                    continue;
                }
                if app.streams.owns(partition).await {
                    continue;
                }
                match app.streams.assign(&[partition]).await {
                    Ok(()) => {
                        tracing::info!(partition, attempt, "partition taken back");
                        inbound.start(&[partition]);
                    }
                    Err(e) => {
                        tracing::warn!(partition, attempt, error = %e, "taking the partition back failed; retrying");
                        schedule(partition, attempt + 1, Duration::from_secs(u64::from(attempt.min(5))));
                    }
                }
            }
        }
    }
}

/// Runs command-service against Kafka until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let settings = config
        .kafka
        .settings("command-service")
        .context("--kafka-brokers (KAFKA_BROKERS) is required")?;
    let auth = Authenticator::from_args(&config.auth).context("authentication settings")?;
    let (app, ownership) = start_on_kafka(&config.command, &settings, auth).await?;
    serve(app, config.command.listen, config.command.max_body_bytes).await?;
    ownership.shutdown().await;
    Ok(())
}

/// The service on Kafka, as the binary and `crm up` run it: the topics provisioned, the
/// [`App`] built on the customer-events topic, the organisation stream followed, and the
/// partitions this member of the command-service group is assigned taken over (with their
/// inbound partitions). [`PartitionOwnership::shutdown`] leaves the group.
pub async fn start_on_kafka(
    args: &CommandArgs,
    settings: &KafkaSettings,
    auth: Authenticator,
) -> anyhow::Result<(Arc<App>, PartitionOwnership)> {
    let topics = provision_topics(settings)
        .await
        .context("provisioning topics")?;
    tracing::info!(?topics, "topics ready");
    let app = App::build(
        args,
        Arc::new(KafkaCustomerLog {
            settings: settings.clone(),
        }),
        auth,
    )?;
    tokio::spawn(organisation::follow_organisation(
        app.streams.clone(),
        settings.clone(),
    ));
    let (ownership, changes) =
        PartitionOwnership::start(settings).context("joining the command-service group")?;
    let inbound = InboundReaders::new(app.clone(), settings.clone())
        .context("creating the inbound readers' producers")?;
    tokio::spawn(follow_ownership(
        app.clone(),
        inbound,
        changes,
        ownership.view(),
    ));
    Ok((app, ownership))
}

/// Serves the HTTP API until SIGINT/SIGTERM.
pub async fn serve(app: Arc<App>, listen: SocketAddr, max_body_bytes: usize) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "command-service listening");
    axum::serve(listener, http::router(app, max_body_bytes))
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
