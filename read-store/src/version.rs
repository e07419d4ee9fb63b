//! Projection versions: each version of a projection lives in a PostgreSQL schema of its own
//! (`<projection>_v<version>`, e.g. `rm_v1`). A replay fills a new version while the live one
//! keeps serving; [`activate`] switches over in one transaction.

use sqlx::{PgPool, Postgres, Transaction};

use crate::error::{ProjectionError, Result};

/// The control tables (`projection.projection_versions`, `projection.checkpoints`).
pub static CONTROL_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/control");

/// The read-model tables, views and functions, applied inside each version's schema.
pub static READ_MODEL_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/read_model");

/// The schema that holds the control tables.
pub const CONTROL_SCHEMA: &str = "projection";

/// A projection at one version, e.g. `rm` version 1, stored in schema `rm_v1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProjectionVersion {
    name: String,
    version: i32,
}

impl ProjectionVersion {
    /// `name` is lower-case letters, digits and `_`, starting with a letter; `version` ≥ 1.
    pub fn new(name: impl Into<String>, version: i32) -> Result<Self> {
        let name = name.into();
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && name.len() <= 40;
        if !valid || version < 1 {
            return Err(ProjectionError::InvalidName(format!("{name} v{version}")));
        }
        Ok(ProjectionVersion { name, version })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    /// The PostgreSQL schema of this version. Safe to splice into SQL: validated in `new`.
    pub fn schema(&self) -> String {
        format!("{}_v{}", self.name, self.version)
    }
}

/// The lifecycle of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionStatus {
    Building,
    Live,
    Retired,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Building => "building",
            VersionStatus::Live => "live",
            VersionStatus::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "building" => Some(VersionStatus::Building),
            "live" => Some(VersionStatus::Live),
            "retired" => Some(VersionStatus::Retired),
            _ => None,
        }
    }
}

/// Runs `migrator` on one connection whose `search_path` is `schema`, so that its tables and
/// its `_sqlx_migrations` bookkeeping land in that schema. For the projection-service (a
/// rebuild migrates its staging schema).
pub async fn migrate_into(
    pool: &PgPool,
    schema: &str,
    migrator: &sqlx::migrate::Migrator,
) -> Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("SET search_path TO {schema}"))
        .execute(&mut *conn)
        .await?;
    // `run_direct`, not `run`: the future of `run` cannot be proven `Send` inside spawned
    // tasks (a higher-ranked lifetime of `Acquire`)
    let outcome = migrator.run_direct(&mut *conn).await;
    let reset = sqlx::query("RESET search_path").execute(&mut *conn).await;
    if outcome.is_err() || reset.is_err() {
        // never hand a connection with a changed search_path back to the pool
        drop(conn.detach());
    }
    outcome?;
    reset?;
    Ok(())
}

/// Creates or upgrades the control tables.
pub async fn migrate_control(pool: &PgPool) -> Result<()> {
    migrate_into(pool, CONTROL_SCHEMA, &CONTROL_MIGRATOR).await
}

/// Creates or upgrades the control tables and the schema of `pv`, and registers `pv`:
/// live when the projection has no live version yet (first deployment), building otherwise.
/// Returns the version's status.
pub async fn ensure_version(pool: &PgPool, pv: &ProjectionVersion) -> Result<VersionStatus> {
    migrate_control(pool).await?;
    migrate_into(pool, &pv.schema(), &READ_MODEL_MIGRATOR).await?;
    let mut tx = pool.begin().await?;
    lock_projection(&mut tx, pv.name()).await?;
    let existing: Option<(String,)> = sqlx::query_as(
        "SELECT status FROM projection.projection_versions WHERE projection = $1 AND version = $2",
    )
    .bind(pv.name())
    .bind(pv.version())
    .fetch_optional(&mut *tx)
    .await?;
    let status = match existing {
        Some((s,)) => VersionStatus::parse(&s).unwrap_or(VersionStatus::Building),
        None => {
            let (live,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM projection.projection_versions WHERE projection = $1 AND status = 'live'",
            )
            .bind(pv.name())
            .fetch_one(&mut *tx)
            .await?;
            let status = if live == 0 {
                VersionStatus::Live
            } else {
                VersionStatus::Building
            };
            sqlx::query(
                "INSERT INTO projection.projection_versions (projection, version, schema_name, status, live_since)
                 VALUES ($1, $2, $3, $4, CASE WHEN $4 = 'live' THEN now() END)",
            )
            .bind(pv.name())
            .bind(pv.version())
            .bind(pv.schema())
            .bind(status.as_str())
            .execute(&mut *tx)
            .await?;
            status
        }
    };
    tx.commit().await?;
    Ok(status)
}

/// Serialises version changes of one projection.
pub(crate) async fn lock_projection(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('projection:' || $1))")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The live version of a projection, if any: what queries read.
pub async fn live_version(pool: &PgPool, name: &str) -> Result<Option<ProjectionVersion>> {
    let row: Option<(i32,)> = sqlx::query_as(
        "SELECT version FROM projection.projection_versions WHERE projection = $1 AND status = 'live'",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    row.map(|(v,)| ProjectionVersion::new(name, v)).transpose()
}

/// Makes `pv` the live version and retires the one that was live, atomically: a reader that
/// looks up the live version sees either the old or the new one, never none.
pub async fn activate(pool: &PgPool, pv: &ProjectionVersion) -> Result<()> {
    let mut tx = pool.begin().await?;
    lock_projection(&mut tx, pv.name()).await?;
    let exists: Option<(String,)> = sqlx::query_as(
        "SELECT status FROM projection.projection_versions WHERE projection = $1 AND version = $2",
    )
    .bind(pv.name())
    .bind(pv.version())
    .fetch_optional(&mut *tx)
    .await?;
    if exists.is_none() {
        return Err(ProjectionError::UnknownVersion {
            projection: pv.name().to_owned(),
            version: pv.version(),
        });
    }
    sqlx::query(
        "UPDATE projection.projection_versions SET status = 'retired', retired_at = now()
          WHERE projection = $1 AND status = 'live' AND version <> $2",
    )
    .bind(pv.name())
    .bind(pv.version())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE projection.projection_versions SET status = 'live', live_since = now(), retired_at = NULL
          WHERE projection = $1 AND version = $2 AND status <> 'live'",
    )
    .bind(pv.name())
    .bind(pv.version())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// One registered version, as `projection-service versions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: ProjectionVersion,
    pub status: VersionStatus,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub live_since: Option<chrono::DateTime<chrono::Utc>>,
    pub retired_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Records applied or skipped so far: the sum over partitions of checkpoint + 1.
    pub records: i64,
}

/// Every registered version of every projection (or of `name`), by projection and version.
pub async fn list_versions(pool: &PgPool, name: Option<&str>) -> Result<Vec<VersionInfo>> {
    migrate_control(pool).await?;
    type Row = (
        String,
        i32,
        String,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        r#"SELECT v.projection, v.version, v.status, v.created_at, v.live_since, v.retired_at,
                  coalesce((SELECT sum(c."offset" + 1) FROM projection.checkpoints c
                             WHERE c.projection = v.projection AND c.version = v.version), 0)::bigint
             FROM projection.projection_versions v
            WHERE $1::text IS NULL OR v.projection = $1
            ORDER BY v.projection, v.version"#,
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(
            |(projection, version, status, created_at, live_since, retired_at, records)| {
                Ok(VersionInfo {
                    version: ProjectionVersion::new(projection, version)?,
                    status: VersionStatus::parse(&status).unwrap_or(VersionStatus::Building),
                    created_at,
                    live_since,
                    retired_at,
                    records,
                })
            },
        )
        .collect()
}

/// The status of one version, if it is registered.
pub async fn version_status(
    pool: &PgPool,
    pv: &ProjectionVersion,
) -> Result<Option<VersionStatus>> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT status FROM projection.projection_versions WHERE projection = $1 AND version = $2",
    )
    .bind(pv.name())
    .bind(pv.version())
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(s,)| VersionStatus::parse(&s)))
}

/// Drops a version that is not live: its schema, its registration and its checkpoints.
pub async fn drop_version(pool: &PgPool, pv: &ProjectionVersion) -> Result<()> {
    let mut tx = pool.begin().await?;
    lock_projection(&mut tx, pv.name()).await?;
    let status: Option<(String,)> = sqlx::query_as(
        "SELECT status FROM projection.projection_versions WHERE projection = $1 AND version = $2",
    )
    .bind(pv.name())
    .bind(pv.version())
    .fetch_optional(&mut *tx)
    .await?;
    if status.as_ref().is_some_and(|(s,)| s == "live") {
        return Err(ProjectionError::DropLive {
            projection: pv.name().to_owned(),
            version: pv.version(),
        });
    }
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", pv.schema()))
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM projection.read_model_checkpoints WHERE schema_name = $1")
        .bind(pv.schema())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "DELETE FROM projection.projection_versions WHERE projection = $1 AND version = $2",
    )
    .bind(pv.name())
    .bind(pv.version())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Begins a transaction that reads and writes the schema of `pv` (`SET LOCAL search_path`).
/// For the projection-service.
pub async fn begin_in(
    pool: &PgPool,
    pv: &ProjectionVersion,
) -> Result<Transaction<'static, Postgres>> {
    begin_in_schema(pool, &pv.schema()).await
}

/// Begins a transaction that reads and writes `schema` (`SET LOCAL search_path`). For the
/// projection-service.
pub async fn begin_in_schema(
    pool: &PgPool,
    schema: &str,
) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_schema_names() {
        let pv = ProjectionVersion::new("rm", 3);
        assert_eq!(
            pv.as_ref().map(ProjectionVersion::schema).ok(),
            Some("rm_v3".to_owned())
        );
        for bad in ["", "Rm", "1rm", "rm;drop", "rm-x", "rm v"] {
            assert!(ProjectionVersion::new(bad, 1).is_err(), "{bad:?}");
        }
        assert!(ProjectionVersion::new("rm", 0).is_err());
    }

    /// The migrations are embedded from this crate's `migrations/` directory.
    #[test]
    fn migrations_are_embedded() {
        let versions =
            |m: &sqlx::migrate::Migrator| m.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(versions(&CONTROL_MIGRATOR), [1, 2, 3, 4]);
        assert_eq!(versions(&READ_MODEL_MIGRATOR), [1, 2, 3, 4, 5]);
    }
}
