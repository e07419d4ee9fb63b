//! # projection-service
//!
//! Applies the customer streams to PostgreSQL read models with exactly-once effect: a
//! [`Projector`] writes a batch of events and the (topic, partition) checkpoints in one
//! transaction, and skips whatever is at or below a checkpoint. A consumer only has to start
//! each partition past [`Projector::positions`] and hand batches to [`Projector::apply`]:
//! the Kafka consumer, or the tailer of the embedded log of `crm up` ([`source`]).
//!
//! Each projection version lives in its own PostgreSQL schema (`rm_v1`, ...), registered in
//! `projection.projection_versions`; a replay builds a new version while the live one serves
//! and [`activate`] switches over atomically.
//!
//! Read models (all in business time, occurred-at): customer 360, timeline, pipeline (with
//! stage history, funnel, win rate, sales cycle, weighted forecast), stage-duration alerts,
//! audit trail, RFM, churn, and the four reports. [`ReadModels`] reads them.

pub mod alerts;
pub mod cli;
pub mod clock;
pub mod consumer;
mod describe;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod projector;
pub mod read;
pub mod read_models;
pub mod rebuild;
pub mod reports;
pub mod rfm;
pub mod service;
pub mod source;
pub mod version;

pub use alerts::{Alert, AlertChanges, OutboxEntry};
pub use clock::{Clock, FixedClock, ManualClock, SystemClock};
pub use consumer::{BatchOptions, ConsumerSnapshot, PartitionProgress};
pub use error::{ProjectionError, Result};
pub use jobs::JobOptions;
pub use metrics::Metrics;
pub use projector::{ApplyOutcome, EventRef, Projectable, Projector, CHECKPOINT_CHANNEL};
pub use read::ReadModels;
pub use rebuild::{rebuild_read_model, RebuildOptions, RebuildOutcome};
pub use rfm::RfmRun;
pub use service::{
    replay, replay_on, ProjectionService, ReplayOptions, ReplayOutcome, ReplayProgress, RunOptions,
    ServiceError, ServiceStatus,
};
pub use source::{AlertSink, DeadLetterSink, EmbeddedTopics, EventSource};
pub use version::{
    activate, drop_version, ensure_version, list_versions, live_version, migrate_control,
    version_status, ProjectionVersion, VersionInfo, VersionStatus,
};
