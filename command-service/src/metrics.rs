//! Prometheus metrics of command-service.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Commands by name and outcome (`appended`, `unchanged`, `replayed`, `refused`, `conflict`, ...).
    pub commands: IntCounterVec,
    /// Time from parsed request to answer, by command.
    pub command_seconds: HistogramVec,
    /// Records per append transaction.
    pub append_batch_size: Histogram,
    pub owned_partitions: IntGauge,
    /// Inbound-topic records by outcome (`appended`, `replayed`, `dead_lettered`).
    pub inbound: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let commands = IntCounterVec::new(
            Opts::new(
                "crm_commands_total",
                "Commands handled, by command and outcome",
            ),
            &["command", "outcome"],
        )?;
        let command_seconds = HistogramVec::new(
            HistogramOpts::new(
                "crm_command_duration_seconds",
                "Command latency, decide to committed append",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["command"],
        )?;
        let append_batch_size = Histogram::with_opts(
            HistogramOpts::new("crm_append_batch_size", "Records per append transaction").buckets(
                vec![
                    1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0,
                ],
            ),
        )?;
        let owned_partitions = IntGauge::new(
            "crm_owned_partitions",
            "Customer-event partitions this instance writes",
        )?;
        let inbound = IntCounterVec::new(
            Opts::new(
                "crm_inbound_records_total",
                "Inbound-topic records, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(commands.clone()))?;
        registry.register(Box::new(command_seconds.clone()))?;
        registry.register(Box::new(append_batch_size.clone()))?;
        registry.register(Box::new(owned_partitions.clone()))?;
        registry.register(Box::new(inbound.clone()))?;
        Ok(Metrics {
            registry,
            commands,
            command_seconds,
            append_batch_size,
            owned_partitions,
            inbound,
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
