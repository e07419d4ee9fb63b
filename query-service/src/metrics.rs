//! Prometheus metrics of the query-service.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Time to the answer's head (for CSV streams: to the first chunk), by route template,
    /// method and status.
    pub request_seconds: HistogramVec,
    /// Read-your-writes waits by outcome (`reached`, `timed_out`).
    pub position_waits: IntCounterVec,
    /// Time spent waiting for a position.
    pub position_wait_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "crm_query_request_duration_seconds",
                "Query latency by route, method and status",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route", "method", "status"],
        )?;
        let position_waits = IntCounterVec::new(
            Opts::new(
                "crm_query_position_waits_total",
                "Read-your-writes waits by outcome",
            ),
            &["outcome"],
        )?;
        let position_wait_seconds = HistogramVec::new(
            HistogramOpts::new(
                "crm_query_position_wait_seconds",
                "Time waited for the read model to reach a position",
            )
            .buckets(vec![
                0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0,
            ]),
            &["outcome"],
        )?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(position_waits.clone()))?;
        registry.register(Box::new(position_wait_seconds.clone()))?;
        Ok(Metrics {
            registry,
            request_seconds,
            position_waits,
            position_wait_seconds,
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
