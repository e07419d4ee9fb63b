//! # read-store
//!
//! The read-model store in PostgreSQL: its schema — the control tables (projection versions,
//! checkpoints) and each version's read-model tables, as migrations — the projection versions
//! that live in it ([`ProjectionVersion`], [`live_version`], [`activate`], ...), the
//! notification channel on which committed batches are announced ([`CHECKPOINT_CHANNEL`]),
//! and the typed reader of a version's read models ([`ReadModels`], with the four
//! [`reports`]).
//!
//! Shared by projection-service, which writes the store, and query-service, which reads it;
//! neither depends on the other.

pub mod error;
pub mod read;
pub mod reports;
pub mod version;

pub use error::{ProjectionError, Result};
pub use read::ReadModels;
pub use version::{
    activate, drop_version, ensure_version, list_versions, live_version, migrate_control,
    version_status, ProjectionVersion, VersionInfo, VersionStatus,
};

/// The PostgreSQL notification channel on which every committed batch is announced (no
/// payload): query-service's read-your-writes waits wake on it instead of polling.
pub const CHECKPOINT_CHANNEL: &str = "crm_projection_checkpoints";
