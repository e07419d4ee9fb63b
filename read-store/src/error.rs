//! Errors of the read-model store and of the projection-service that writes it (the
//! projection's own variants, such as [`ProjectionError::Encode`], live here too so that one
//! error type serves both).

/// Why a projection operation failed. Database errors are transient or fatal for the batch:
/// nothing of the batch was written (the transaction rolled back), so the caller may retry it.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error(
        "invalid projection name `{0}`: lower-case letters, digits and `_`, starting with a letter"
    )]
    InvalidName(String),
    #[error("projection {projection} has no version {version}")]
    UnknownVersion { projection: String, version: i32 },
    #[error("projection {projection} version {version} is live and cannot be dropped")]
    DropLive { projection: String, version: i32 },
    #[error("no read model is named `{name}`; the read models are: {known}")]
    UnknownReadModel { name: String, known: String },
    #[error("read model {read_model} cannot be rebuilt alone: {why}")]
    NotRebuildableAlone {
        read_model: String,
        why: &'static str,
    },
    #[error("projection {0} has no live version: nothing to rebuild a read model of")]
    NoLiveVersion(String),
    #[error("a rebuild of a read model of {0} is running already")]
    RebuildRunning(String),
    #[error("the rebuilt read model {read_model} is behind the live one at {topic}:{partition} ({rebuilt} < {live}) after catching up")]
    RebuildBehind {
        read_model: String,
        topic: String,
        partition: i32,
        rebuilt: i64,
        live: i64,
    },
    #[error("event body cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("value out of range: {0}")]
    OutOfRange(String),
}

pub type Result<T, E = ProjectionError> = std::result::Result<T, E>;
