//! The periodic jobs beside the consumer: the stage-duration alert sweep, the publisher that
//! puts alert changes from the outbox on the alerts topic, and the RFM recompute.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use domain::policy::rfm::RfmWindow;
use domain::policy::StageThresholds;
use infra::embedded::OwnedRecord;
use infra::kafka::{KafkaSettings, LogError};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use uuid::Uuid;

use crate::alerts::Alert;
use crate::clock::Clock;
use crate::error::ProjectionError;
use crate::metrics::Metrics;
use crate::source::{AlertSink, KafkaAlertSink};
use crate::version::{begin_in, version_status, VersionStatus};
use crate::Projector;

/// The CloudEvents type of a published alert change.
pub const ALERT_OPENED_TYPE: &str = "crm.alert.opened.v1";
pub const ALERT_CLOSED_TYPE: &str = "crm.alert.closed.v1";

/// Why publishing alert changes failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("projection: {0}")]
    Projection(#[from] ProjectionError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("alerts topic: {0}")]
    Sink(#[from] LogError),
    #[error("alert payload: {0}")]
    Json(#[from] serde_json::Error),
}

/// When the jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobOptions {
    /// The alert sweep (and the publisher after it).
    pub sweep_interval: Duration,
    /// The RFM recompute, unconditionally (recency moves with time).
    pub rfm_interval: Duration,
    /// How often to check whether orders arrived since the last recompute (and recompute).
    pub rfm_check_interval: Duration,
    pub thresholds: StageThresholds,
    pub rfm_window: RfmWindow,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            sweep_interval: Duration::from_secs(60),
            rfm_interval: Duration::from_secs(3600),
            rfm_check_interval: Duration::from_secs(30),
            thresholds: StageThresholds::default(),
            rfm_window: RfmWindow::default(),
        }
    }
}

/// The body of a message on the alerts topic.
#[derive(Debug, Clone, Serialize)]
pub struct AlertMessage<'a> {
    /// `opened` or `closed`.
    pub change: &'a str,
    /// When it changed: the sweep's `now` (opened) or the event's occurred-at (closed).
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub alert: &'a Alert,
}

/// Puts alert changes from a version's outbox on the alerts topic (Kafka, or the embedded
/// default's `alerts` log).
#[derive(Clone)]
pub struct AlertPublisher {
    sink: Arc<dyn AlertSink>,
    source: String,
}

impl AlertPublisher {
    /// To the alerts topic on Kafka.
    pub fn new(settings: &KafkaSettings, source: impl Into<String>) -> Result<Self, LogError> {
        Ok(Self::with_sink(
            Arc::new(KafkaAlertSink::new(settings)?),
            source,
        ))
    }

    /// To any [`AlertSink`].
    pub fn with_sink(sink: Arc<dyn AlertSink>, source: impl Into<String>) -> Self {
        AlertPublisher {
            sink,
            source: source.into(),
        }
    }

    /// Publishes every unpublished change of the outbox, oldest first, and marks them
    /// published once the broker acknowledged them. The rows are locked while they are
    /// published (`SKIP LOCKED`), so two instances do not publish the same change; a crash
    /// after the acknowledgement and before the commit publishes it again (at least once;
    /// `ce_id` is `<alert id>:<change>`, so notifiers can drop the repeat).
    pub async fn publish(
        &self,
        projector: &Projector,
        metrics: &Metrics,
    ) -> Result<usize, PublishError> {
        let mut published = 0;
        loop {
            let n = self.publish_some(projector, metrics, 500).await?;
            published += n;
            if n < 500 {
                return Ok(published);
            }
        }
    }

    async fn publish_some(
        &self,
        projector: &Projector,
        metrics: &Metrics,
        limit: i64,
    ) -> Result<usize, PublishError> {
        let mut tx = begin_in(projector.pool(), projector.version()).await?;
        let rows: Vec<(i64, String, DateTime<Utc>, serde_json::Value)> = sqlx::query_as(
            "SELECT id, change, at, payload FROM alert_outbox WHERE published_at IS NULL
              ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut records = Vec::with_capacity(rows.len());
        let mut changes = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for (id, change, at, payload) in &rows {
            let alert: Alert = serde_json::from_value(payload.clone())?;
            let body = serde_json::to_vec(&AlertMessage {
                change,
                at: *at,
                alert: &alert,
            })?;
            let key = alert.customer_id.to_string();
            let ce_type = if change == "closed" {
                ALERT_CLOSED_TYPE
            } else {
                ALERT_OPENED_TYPE
            };
            let ce_id = alert_event_id(alert.alert_id, change);
            let time = at.to_rfc3339_opts(SecondsFormat::Micros, true);
            let headers: Vec<(String, Vec<u8>)> = [
                ("ce_specversion", "1.0"),
                ("ce_id", ce_id.as_str()),
                ("ce_source", self.source.as_str()),
                ("ce_type", ce_type),
                ("ce_subject", key.as_str()),
                ("ce_time", time.as_str()),
                ("content-type", "application/json"),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.as_bytes().to_vec()))
            .collect();
            records.push(OwnedRecord {
                key: key.into_bytes(),
                headers,
                value: body,
            });
            changes.push(change.clone());
            ids.push(*id);
        }
        self.sink.send_all(records).await?;
        for change in changes {
            metrics.alerts_published.with_label_values(&[&change]).inc();
        }
        sqlx::query("UPDATE alert_outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids.len())
    }
}

/// Marks every change of the outbox published without publishing it: a replayed version's
/// alerts rebuild history that the previous version already announced.
pub async fn discard_alert_changes(projector: &Projector) -> Result<u64, ProjectionError> {
    let mut tx = begin_in(projector.pool(), projector.version()).await?;
    let done =
        sqlx::query("UPDATE alert_outbox SET published_at = now() WHERE published_at IS NULL")
            .execute(&mut *tx)
            .await?
            .rows_affected();
    tx.commit().await?;
    Ok(done)
}

/// Runs the jobs for one version until `stop` turns true. The sweep and the publisher run
/// only while the version is live (a building or retired version announces nothing); the
/// RFM recompute runs for any version.
pub async fn run_jobs(
    projector: Projector,
    publisher: AlertPublisher,
    options: JobOptions,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    alerts_closed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let start = Instant::now();
    let mut sweep = interval_at(start + options.sweep_interval, options.sweep_interval);
    let mut rfm = interval_at(start + options.rfm_interval, options.rfm_interval);
    let mut rfm_check = interval_at(
        start + options.rfm_check_interval,
        options.rfm_check_interval,
    );
    for i in [&mut sweep, &mut rfm, &mut rfm_check] {
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
            _ = sweep.tick() => {
                if is_live(&projector).await {
                    run_sweep(&projector, &options, clock.as_ref(), &metrics).await;
                    publish(&publisher, &projector, &metrics).await;
                }
            }
            _ = alerts_closed.notified() => {
                if is_live(&projector).await {
                    publish(&publisher, &projector, &metrics).await;
                }
            }
            _ = rfm.tick() => {
                run_rfm(&projector, &options, clock.as_ref(), &metrics).await;
            }
            _ = rfm_check.tick() => {
                match projector.rfm_stale().await {
                    Ok(true) => run_rfm(&projector, &options, clock.as_ref(), &metrics).await,
                    Ok(false) => {}
                    Err(e) => {
                        metrics.errors.with_label_values(&["rfm"]).inc();
                        tracing::warn!(error = %e, "checking RFM staleness failed");
                    }
                }
            }
        }
    }
}

async fn is_live(projector: &Projector) -> bool {
    match version_status(projector.pool(), projector.version()).await {
        Ok(status) => status == Some(VersionStatus::Live),
        Err(e) => {
            tracing::warn!(error = %e, "reading the version's status failed");
            false
        }
    }
}

async fn run_sweep(
    projector: &Projector,
    options: &JobOptions,
    clock: &dyn Clock,
    metrics: &Metrics,
) {
    let now = clock.now();
    match projector.sweep_alerts(now, &options.thresholds).await {
        Ok(changes) => {
            metrics.jobs.with_label_values(&["sweep"]).inc();
            if !changes.opened.is_empty() {
                tracing::info!(%now, opened = changes.opened.len(), "alert sweep opened alerts");
            }
        }
        Err(e) => {
            metrics.errors.with_label_values(&["sweep"]).inc();
            tracing::warn!(error = %e, "alert sweep failed");
        }
    }
}

async fn publish(publisher: &AlertPublisher, projector: &Projector, metrics: &Metrics) {
    match publisher.publish(projector, metrics).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(published = n, "alert changes published"),
        Err(e) => {
            metrics.errors.with_label_values(&["publish"]).inc();
            tracing::warn!(error = %e, "publishing alert changes failed; retried at the next sweep");
        }
    }
}

async fn run_rfm(
    projector: &Projector,
    options: &JobOptions,
    clock: &dyn Clock,
    metrics: &Metrics,
) {
    let as_of = clock.now();
    match projector.recompute_rfm(as_of, options.rfm_window).await {
        Ok(run) => {
            metrics.jobs.with_label_values(&["rfm"]).inc();
            tracing::info!(%as_of, scored = run.scored, "RFM recomputed");
        }
        Err(e) => {
            metrics.errors.with_label_values(&["rfm"]).inc();
            tracing::warn!(error = %e, "RFM recompute failed");
        }
    }
}

/// A `ce_id` never repeats for different changes: `<alert id>:<change>`.
pub fn alert_event_id(alert_id: Uuid, change: &str) -> String {
    format!("{alert_id}:{change}")
}
