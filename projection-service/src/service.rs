//! The running projection-service: a supervisor that keeps a consumer and the periodic jobs
//! going for one projection version (pinned, or following the live one), its HTTP endpoints,
//! and the replay that builds a new version from offset zero.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use infra::kafka::{KafkaSettings, LogError};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};

use crate::batches::{BatchOptions, ConsumerError, ConsumerSnapshot, ConsumerState};
use crate::clock::Clock;
use crate::error::ProjectionError;
use crate::jobs::{discard_alert_changes, run_jobs, AlertPublisher, JobOptions};
use crate::metrics::Metrics;
use crate::source::{self, ConsumeOptions, EventSource};
use crate::version::{activate, live_version};
use crate::{ProjectionVersion, Projector};

/// Why the service or a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    #[error("kafka: {0}")]
    Log(#[from] LogError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// How `run` behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub projection: String,
    /// `None`: follow the live version (switching when a replay activates a new one); the
    /// first deployment creates version 1.
    pub version: Option<i32>,
    pub batch: BatchOptions,
    pub jobs: JobOptions,
    /// Ready while every assigned partition's lag is at most this.
    pub ready_max_lag: i64,
    /// How often a service that follows the live version looks for a switch-over.
    pub version_check_interval: Duration,
    /// CloudEvents `source` of published alerts.
    pub alert_source: String,
}

impl RunOptions {
    pub fn new(projection: impl Into<String>) -> Self {
        RunOptions {
            projection: projection.into(),
            version: None,
            batch: BatchOptions::default(),
            jobs: JobOptions::default(),
            ready_max_lag: 1000,
            version_check_interval: Duration::from_secs(5),
            alert_source: "/projection-service".to_owned(),
        }
    }
}

#[derive(Clone)]
struct Current {
    version: ProjectionVersion,
    state: Arc<ConsumerState>,
}

struct Shared {
    current: Mutex<Option<Current>>,
    metrics: Metrics,
    ready_max_lag: i64,
    /// Why the consumer last stopped with an error (e.g. the position of an event a read
    /// model refuses), until the projection is ready again.
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn set(&self, current: Option<Current>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = current;
    }

    fn set_failure(&self, failure: Option<String>) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = failure;
    }

    fn status(&self) -> ServiceStatus {
        let current = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut status = match current {
            Some(c) => {
                let consumer = c.state.snapshot();
                ServiceStatus {
                    ready: consumer.ready(self.ready_max_lag),
                    projection: Some(c.version.name().to_owned()),
                    version: Some(c.version.version()),
                    consumer,
                    failure: None,
                }
            }
            None => ServiceStatus {
                ready: false,
                projection: None,
                version: None,
                consumer: ConsumerSnapshot::default(),
                failure: None,
            },
        };
        if status.ready {
            self.set_failure(None);
        } else {
            status.failure = self
                .failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
        }
        status
    }
}

/// What `/readyz` answers.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub ready: bool,
    pub projection: Option<String>,
    pub version: Option<i32>,
    pub consumer: ConsumerSnapshot,
    /// Why the projection is stuck, when it is: the consumer's last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// The running service. Dropping it stops the supervisor at its next step; prefer
/// [`ProjectionService::shutdown`], which waits until the consumer has left its group.
pub struct ProjectionService {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ProjectionService {
    /// Starts the supervisor on Kafka: it opens the version (migrating its schema), starts
    /// the consumer and the jobs, and restarts them after failures or on a switch-over.
    pub fn start(
        pool: PgPool,
        settings: KafkaSettings,
        options: RunOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServiceError> {
        Self::start_on(pool, EventSource::Kafka(settings), options, clock)
    }

    /// As [`ProjectionService::start`], on any source (Kafka or the embedded log).
    pub fn start_on(
        pool: PgPool,
        source: EventSource,
        options: RunOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServiceError> {
        ProjectionVersion::new(options.projection.clone(), options.version.unwrap_or(1))?;
        let metrics = Metrics::new()?;
        let shared = Arc::new(Shared {
            current: Mutex::new(None),
            metrics,
            ready_max_lag: options.ready_max_lag,
            failure: Mutex::new(None),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            pool,
            source,
            options,
            clock,
            shared.clone(),
            stop_rx,
        ));
        Ok(ProjectionService {
            shared,
            stop,
            task: Some(task),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn status(&self) -> ServiceStatus {
        self.shared.status()
    }

    /// `/healthz`, `/readyz`, `/metrics`.
    pub fn router(&self) -> Router {
        router(self.shared.clone())
    }

    /// Stops the jobs and the consumer (which applies what it has read and leaves its group).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ProjectionService {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

enum Next {
    Stop,
    Switch,
    Restart,
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
    }
}

async fn supervise(
    pool: PgPool,
    source: EventSource,
    options: RunOptions,
    clock: Arc<dyn Clock>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    let metrics = shared.metrics.clone();
    loop {
        if *stop.borrow() {
            return;
        }
        let version = match options.version {
            Some(v) => v,
            // no live version yet (or no control tables): version 1, which creates them
            None => match live_version(&pool, &options.projection).await {
                Ok(Some(live)) => live.version(),
                Ok(None) | Err(_) => 1,
            },
        };
        let started = start_version(
            pool.clone(),
            source.clone(),
            options.clone(),
            version,
            clock.clone(),
            metrics.clone(),
        )
        .await;
        let running = match started {
            Ok(r) => r,
            Err(e) => {
                metrics.errors.with_label_values(&["start"]).inc();
                tracing::error!(error = %e, ?backoff, "starting the projection failed; retrying");
                if sleep_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        shared.set(Some(Current {
            version: running.version.clone(),
            state: running.consumer.state().clone(),
        }));
        tracing::info!(version = %running.version.schema(), "projecting");

        let next = loop {
            tokio::select! {
                _ = stop.changed() => break Next::Stop,
                _ = tokio::time::sleep(options.version_check_interval.min(Duration::from_secs(1))) => {}
            }
            if running.consumer.is_finished() {
                break Next::Restart;
            }
            if options.version.is_none()
                && running.checked.elapsed() >= options.version_check_interval
            {
                match live_version(&pool, &options.projection).await {
                    Ok(Some(live)) if live != running.version => {
                        tracing::info!(from = %running.version.schema(), to = %live.schema(), "the live version changed; switching over");
                        break Next::Switch;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "looking up the live version failed"),
                }
            }
        };
        shared.set(None);
        let _ = running.jobs_stop.send(true);
        let _ = running.jobs.await;
        match running.consumer.stop().await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                metrics.errors.with_label_values(&["consumer"]).inc();
                tracing::error!(error = %e, "the consumer failed");
                shared.set_failure(Some(e.to_string()));
            }
        }
        match next {
            Next::Stop => return,
            Next::Switch => {}
            Next::Restart => {
                if sleep_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

struct Running {
    version: ProjectionVersion,
    consumer: crate::batches::ConsumerHandle,
    jobs: tokio::task::JoinHandle<()>,
    jobs_stop: watch::Sender<bool>,
    checked: Instant,
}

async fn start_version(
    pool: PgPool,
    source: EventSource,
    options: RunOptions,
    version: i32,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
) -> Result<Running, ServiceError> {
    let pv = ProjectionVersion::new(options.projection.clone(), version)?;
    let (projector, status) = Projector::open(pool, pv.clone()).await?;
    tracing::info!(version = %pv.schema(), status = status.as_str(), "opened projection version");
    let publisher = AlertPublisher::with_sink(source.alerts()?, options.alert_source.clone());
    let alerts_closed = Arc::new(Notify::new());
    let consumer = source::start(
        &source,
        ConsumeOptions {
            projector: projector.clone(),
            batch: options.batch,
            metrics: metrics.clone(),
            alerts_closed: alerts_closed.clone(),
            catch_up: None,
        },
    )?;
    let (jobs_stop, jobs_stop_rx) = watch::channel(false);
    let jobs = tokio::spawn(run_jobs(
        projector,
        publisher,
        options.jobs,
        clock,
        metrics.clone(),
        alerts_closed,
        jobs_stop_rx,
    ));
    Ok(Running {
        version: pv,
        consumer,
        jobs,
        jobs_stop,
        checked: Instant::now(),
    })
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::map_response(
            infra::headers::security_headers,
        ))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let status = shared.status();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(status)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}

// ------------------------------------------------------------------ replay

/// How a replay behaves.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub projection: String,
    pub version: i32,
    pub batch: BatchOptions,
    /// Switch over once caught up.
    pub activate: bool,
    /// Caught up when at most this many records arrived since the replay reached the ends
    /// of the partitions as they were when it last asked (events may keep arriving; the
    /// service that follows the live version applies the rest).
    pub catch_up_lag: u64,
    pub jobs: JobOptions,
}

/// Where a replay stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayProgress {
    /// Records handled since the replay started (applied, skipped, dead-lettered).
    pub records_done: u64,
    pub events_applied: u64,
    pub dead_letters: u64,
    /// Records left to the current end of the log; unknown until the client reported.
    pub remaining: Option<u64>,
    pub events_per_second: f64,
    pub eta: Option<Duration>,
    pub elapsed: Duration,
    pub caught_up: bool,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayOutcome {
    pub version: ProjectionVersion,
    pub records: u64,
    pub events_applied: u64,
    pub dead_letters: u64,
    pub activated: bool,
    pub elapsed: Duration,
}

/// Builds `options.version` from the beginning of the log (or from its checkpoints, when an
/// earlier replay of it was interrupted) with every partition assigned by hand, while the
/// live version keeps serving. Reports progress about once a second. Once every partition
/// is at its end: recomputes RFM and sweeps alerts as of `clock.now()` (the rebuilt alerts
/// are not announced again), then activates the version unless told not to.
pub async fn replay(
    pool: PgPool,
    settings: KafkaSettings,
    options: ReplayOptions,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    on_progress: impl FnMut(&ReplayProgress) + Send,
) -> Result<ReplayOutcome, ServiceError> {
    replay_on(
        pool,
        EventSource::Kafka(settings),
        options,
        clock,
        metrics,
        on_progress,
    )
    .await
}

/// As [`replay`], on any source (Kafka or the embedded log).
pub async fn replay_on(
    pool: PgPool,
    source: EventSource,
    options: ReplayOptions,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    mut on_progress: impl FnMut(&ReplayProgress) + Send,
) -> Result<ReplayOutcome, ServiceError> {
    let pv = ProjectionVersion::new(options.projection.clone(), options.version)?;
    let (projector, status) = Projector::open(pool.clone(), pv.clone()).await?;
    tracing::info!(version = %pv.schema(), status = status.as_str(), "replaying");
    let started = Instant::now();
    let snapshot = consume_until_caught_up(
        &source,
        &projector,
        options.batch,
        options.catch_up_lag,
        metrics,
        started,
        &mut on_progress,
    )
    .await?;

    let now = clock.now();
    projector
        .recompute_rfm(now, options.jobs.rfm_window)
        .await?;
    projector
        .sweep_alerts(now, &options.jobs.thresholds)
        .await?;
    discard_alert_changes(&projector).await?;
    if options.activate {
        activate(&pool, &pv).await?;
        tracing::info!(version = %pv.schema(), "caught up; now live");
    } else {
        tracing::info!(version = %pv.schema(), "caught up; left building (--no-activate)");
    }
    Ok(ReplayOutcome {
        version: pv,
        records: snapshot.records_done,
        events_applied: snapshot.events_applied,
        dead_letters: snapshot.dead_letters,
        activated: options.activate,
        elapsed: started.elapsed(),
    })
}

/// Consumes `source` into `projector` from its checkpoints with every partition assigned by
/// hand, until caught up (at most `catch_up_lag` records arrived since it reached the ends of
/// the partitions as they were when it last asked). Reports progress about once a second,
/// and once more when caught up; `started` is when the whole operation began.
pub(crate) async fn consume_until_caught_up(
    source: &EventSource,
    projector: &Projector,
    batch: BatchOptions,
    catch_up_lag: u64,
    metrics: Metrics,
    started: Instant,
    on_progress: &mut (impl FnMut(&ReplayProgress) + Send),
) -> Result<ConsumerSnapshot, ServiceError> {
    let mut handle = source::start(
        source,
        ConsumeOptions {
            projector: projector.clone(),
            batch,
            metrics,
            alerts_closed: Arc::new(Notify::new()),
            catch_up: Some(catch_up_lag),
        },
    )?;
    let state = handle.state().clone();
    let mut rate = 0.0f64;
    let mut last = (Instant::now(), 0u64);
    let progress = |snapshot: &ConsumerSnapshot, rate: f64, caught_up: bool| {
        let remaining = snapshot.total_lag().map(|l| u64::try_from(l).unwrap_or(0));
        let eta = match remaining {
            _ if caught_up => Some(Duration::ZERO),
            Some(0) => Some(Duration::ZERO),
            Some(r) if rate > 0.0 => Some(Duration::from_secs_f64(r as f64 / rate)),
            _ => None,
        };
        ReplayProgress {
            records_done: snapshot.records_done,
            events_applied: snapshot.events_applied,
            dead_letters: snapshot.dead_letters,
            remaining,
            events_per_second: rate,
            eta,
            elapsed: started.elapsed(),
            caught_up,
        }
    };
    let consuming = Instant::now();
    while !handle.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (at, done) = last;
        let secs = at.elapsed().as_secs_f64();
        if secs < 1.0 || handle.is_finished() {
            continue;
        }
        let snapshot = state.snapshot();
        let now_rate = snapshot.records_done.saturating_sub(done) as f64 / secs;
        rate = if rate == 0.0 {
            now_rate
        } else {
            0.7 * rate + 0.3 * now_rate
        };
        last = (Instant::now(), snapshot.records_done);
        on_progress(&progress(&snapshot, rate, false));
    }
    handle.join().await?;
    let snapshot = state.snapshot();
    if !snapshot.reached_end {
        return Err(ServiceError::Consumer(ConsumerError::Stopped));
    }
    let final_rate = snapshot.records_done as f64 / consuming.elapsed().as_secs_f64().max(0.001);
    on_progress(&progress(&snapshot, final_rate, true));
    Ok(snapshot)
}
