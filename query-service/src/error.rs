//! Errors of the query-service, and how each becomes an RFC 9457 problem.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infra::problem::Problem;
use read_store::ProjectionError;

/// Why a query could not be answered (bad requests are [`Problem`]s straight away).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("projection: {0}")]
    Projection(#[from] ProjectionError),
    #[error("projection `{0}` has no live version yet")]
    NoLiveVersion(String),
    #[error("read model row cannot be decoded: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("{}: {}", .0.title, .0.detail.as_deref().unwrap_or(""))]
    Problem(Box<Problem>),
}

impl From<Problem> for QueryError {
    fn from(p: Problem) -> Self {
        QueryError::Problem(Box::new(p))
    }
}

/// The SQLSTATE of "relation does not exist": the projection-service has not created its
/// tables yet.
const UNDEFINED_TABLE: &str = "42P01";
const UNDEFINED_SCHEMA: &str = "3F000";

fn sqlx_problem(e: &sqlx::Error) -> Problem {
    match e {
        sqlx::Error::Database(db)
            if matches!(
                db.code().as_deref(),
                Some(UNDEFINED_TABLE | UNDEFINED_SCHEMA)
            ) =>
        {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-read-model",
                "The read models do not exist yet",
            )
            .detail("the projection-service has not created the read models yet")
            .retry_after(1)
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database-unavailable",
            "The read-model database is unavailable",
        )
        .detail(e.to_string())
        .retry_after(1),
        _ => internal(e),
    }
}

fn internal(e: &dyn std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "query failed");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
    )
    .detail("the query failed; the error is in the service's log")
}

impl QueryError {
    pub fn problem(&self) -> Problem {
        match self {
            QueryError::Database(e) => sqlx_problem(e),
            QueryError::Projection(ProjectionError::Database(e)) => sqlx_problem(e),
            QueryError::Projection(e) => internal(e),
            QueryError::NoLiveVersion(name) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-live-version",
                "No live read-model version",
            )
            .detail(format!(
                "projection `{name}` has no live version yet; the projection-service creates it"
            ))
            .retry_after(1),
            QueryError::Decode(e) => internal(e),
            QueryError::Problem(p) => (**p).clone(),
        }
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        self.problem().into_response()
    }
}

pub type Result<T, E = QueryError> = std::result::Result<T, E>;
