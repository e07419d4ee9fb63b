//! Prometheus metrics of the projection-service (one registry per service instance).

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// The service's metrics. Cheap to clone (every field is a shared handle).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Records of each partition not applied yet: high watermark − (checkpoint + 1).
    pub lag: IntGaugeVec,
    /// The checkpoint (last applied offset) of each partition.
    pub checkpoint: IntGaugeVec,
    /// Events written to the read models.
    pub events_applied: IntCounter,
    /// Redelivered events skipped (at or below the checkpoint).
    pub events_skipped: IntCounter,
    /// Events applied per second, over the last few seconds.
    pub events_per_second: Gauge,
    /// Wall time of one batch: decode, dead letters, the read-model transaction.
    pub batch_seconds: Histogram,
    /// Records per batch.
    pub batch_size: Histogram,
    /// Records sent to the dead-letter topic, by kind (`decode`, `apply`).
    pub dead_letters: IntCounterVec,
    /// Records the live version has dead-lettered over its whole life (kept in PostgreSQL,
    /// so unlike the counter above it survives restarts).
    pub dead_letters_recorded: IntGauge,
    /// Alert changes published on the alerts topic, by change (`opened`, `closed`).
    pub alerts_published: IntCounterVec,
    /// Sweeps and RFM recomputes run, by job.
    pub jobs: IntCounterVec,
    /// Failed batch attempts (retried), sweeps and recomputes, by what failed.
    pub errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let lag = IntGaugeVec::new(
            Opts::new(
                "projection_partition_lag",
                "Records of a partition not yet applied (high watermark - checkpoint - 1)",
            ),
            &["topic", "partition"],
        )?;
        let checkpoint = IntGaugeVec::new(
            Opts::new(
                "projection_checkpoint_offset",
                "Last applied offset of a partition",
            ),
            &["topic", "partition"],
        )?;
        let events_applied = IntCounter::new(
            "projection_events_applied_total",
            "Events written to the read models",
        )?;
        let events_skipped = IntCounter::new(
            "projection_events_skipped_total",
            "Redelivered events at or below their checkpoint, skipped",
        )?;
        let events_per_second = Gauge::new(
            "projection_events_per_second",
            "Events applied per second, recent",
        )?;
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "projection_batch_duration_seconds",
                "Time to decode and apply one batch",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("projection_batch_size", "Records per batch").buckets(vec![
                1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
            ]),
        )?;
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "projection_dead_letters_total",
                "Records sent to the dead-letter topic",
            ),
            &["kind"],
        )?;
        let dead_letters_recorded = IntGauge::new(
            "projection_dead_letters",
            "Records this projection version has dead-lettered since it was built",
        )?;
        let alerts_published = IntCounterVec::new(
            Opts::new(
                "projection_alerts_published_total",
                "Alert changes published on the alerts topic",
            ),
            &["change"],
        )?;
        let jobs = IntCounterVec::new(
            Opts::new("projection_jobs_total", "Periodic jobs run"),
            &["job"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new("projection_errors_total", "Failures (retried), by stage"),
            &["stage"],
        )?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(checkpoint.clone()))?;
        registry.register(Box::new(events_applied.clone()))?;
        registry.register(Box::new(events_skipped.clone()))?;
        registry.register(Box::new(events_per_second.clone()))?;
        registry.register(Box::new(batch_seconds.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(dead_letters_recorded.clone()))?;
        registry.register(Box::new(alerts_published.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(Metrics {
            registry,
            lag,
            checkpoint,
            events_applied,
            events_skipped,
            events_per_second,
            batch_seconds,
            batch_size,
            dead_letters,
            dead_letters_recorded,
            alerts_published,
            jobs,
            errors,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}
