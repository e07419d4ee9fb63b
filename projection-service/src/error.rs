//! Errors of the projection-service.

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
    #[error("event body cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("value out of range: {0}")]
    OutOfRange(String),
}

pub type Result<T, E = ProjectionError> = std::result::Result<T, E>;
