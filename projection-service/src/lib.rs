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
//! and [`activate`] switches over atomically. The store's schema (control tables and
//! read-model migrations), its versions and its reader live in the `read-store` crate, shared
//! with query-service, and are re-exported here ([`error`], [`read`], [`reports`], [`version`]).
//!
//! Read models (all in business time, occurred-at): customer 360, timeline, pipeline (with
//! stage history, funnel, win rate, sales cycle, weighted forecast), stage-duration alerts,
//! audit trail, RFM, churn, and the four reports. [`ReadModels`] reads them.

pub mod alerts;
pub mod batches;
pub mod cli;
pub mod clock;
pub mod consumer;
mod describe;
pub mod jobs;
pub mod metrics;
pub mod projector;
pub mod read_models;
pub mod rebuild;
pub mod rfm;
pub mod service;
pub mod source;

/// The read-model store's errors, reader, reports and versions, from the `read-store` crate
/// (shared with query-service), under their former paths.
pub use read_store::{error, read, reports, version};

pub use alerts::{Alert, AlertChanges, OutboxEntry};
pub use batches::{
    BatchOptions, ConsumerSnapshot, DeadLetterSink, PartitionProgress, REPLAY_BATCH_RECORDS,
};
pub use clock::{Clock, FixedClock, ManualClock, SystemClock};
pub use error::{ProjectionError, Result};
pub use jobs::JobOptions;
pub use metrics::Metrics;
pub use projector::{ApplyOutcome, EventRef, Projectable, Projector};
pub use read::ReadModels;
pub use read_store::CHECKPOINT_CHANNEL;
pub use rebuild::{rebuild_read_model, RebuildOptions, RebuildOutcome};
pub use rfm::RfmRun;
pub use service::{
    replay, replay_on, ProjectionService, ReplayOptions, ReplayOutcome, ReplayProgress, RunOptions,
    ServiceError, ServiceStatus,
};
pub use source::{AlertSink, EmbeddedTopics, EventSource};
pub use version::{
    activate, drop_version, ensure_version, list_versions, live_version, migrate_control,
    version_status, ProjectionVersion, VersionInfo, VersionStatus,
};
