//! Rebuilding one read model from offset zero while every other one keeps serving
//! (`crm replay --read-model NAME`).
//!
//! The read model is built into a staging schema beside the live version (`rm_v1_rebuild`,
//! migrated like a version's, of which only that read model's tables fill), with checkpoints
//! of its own. Once it has caught up with the log, one transaction switches it in: it locks
//! the live read model's checkpoints (the live projector waits at its next batch), catches up
//! once more so the rebuilt one is at or past every offset the live one applied, moves the
//! live tables out (`rm_v1_retired`) and the rebuilt ones in (`ALTER TABLE … SET SCHEMA`,
//! which keeps their indexes, constraints and sequences), re-creates the version's views
//! over them, and hands the rebuilt checkpoints to the version. Readers see the old rows or
//! the new ones, never a mix; the other read models never stop. The live projector then
//! skips, for this read model, whatever the rebuild applied past its own position.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::batches::BatchOptions;
use crate::error::ProjectionError;
use crate::metrics::Metrics;
use crate::read_models::{self, ReadModel};
use crate::service::{consume_until_caught_up, ReplayProgress, ServiceError};
use crate::source::EventSource;
use crate::version::{live_version, migrate_control, migrate_into, READ_MODEL_MIGRATOR};
use crate::{ProjectionVersion, Projector};

/// How a rebuild of one read model behaves.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    pub projection: String,
    /// The read model's name, as [`read_models::names`] lists them.
    pub read_model: String,
    pub batch: BatchOptions,
    /// Ready to switch when at most this many records arrived since the rebuild last reached
    /// the end of the log (the switch applies the rest while it holds the live read model).
    pub catch_up_lag: u64,
    /// How long the switch waits for a lock (a long query on the read model's tables) before
    /// it gives up, leaving the live read model as it was.
    pub lock_timeout: Duration,
}

impl RebuildOptions {
    pub fn new(projection: impl Into<String>, read_model: impl Into<String>) -> Self {
        RebuildOptions {
            projection: projection.into(),
            read_model: read_model.into(),
            batch: BatchOptions::default(),
            catch_up_lag: 500,
            lock_timeout: Duration::from_secs(30),
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildOutcome {
    /// The live version whose read model was replaced.
    pub version: String,
    pub read_model: String,
    /// Records read (the whole log, and what arrived while it ran).
    pub records: u64,
    pub events_applied: u64,
    /// From the start to the switch.
    pub elapsed: Duration,
    /// How long the switch held the live read model (its projector waited that long).
    pub switch: Duration,
}

/// Rebuilds `options.read_model` of the live version of `options.projection` from offset
/// zero and switches it in (see the module's documentation). Reports progress about once a
/// second. On error the live read model is as it was.
pub async fn rebuild_read_model(
    pool: PgPool,
    source: EventSource,
    options: RebuildOptions,
    metrics: Metrics,
    mut on_progress: impl FnMut(&ReplayProgress) + Send,
) -> Result<RebuildOutcome, ServiceError> {
    migrate_control(&pool).await?;
    let model = read_models::find(&options.read_model).ok_or_else(|| {
        ProjectionError::UnknownReadModel {
            name: options.read_model.clone(),
            known: read_models::names().join(", "),
        }
    })?;
    model
        .rebuild_alone()
        .map_err(|why| ProjectionError::NotRebuildableAlone {
            read_model: model.name().to_owned(),
            why,
        })?;
    let live = live_version(&pool, &options.projection)
        .await?
        .ok_or_else(|| ProjectionError::NoLiveVersion(options.projection.clone()))?;
    let staging = format!("{}_rebuild", live.schema());
    let retired = format!("{}_retired", live.schema());

    // one rebuild of a version at a time: a session lock, held on this connection
    // on a connection of its own, outside the pool: the switch needs the pool's connections
    let mut guard = pool
        .connect_options()
        .connect()
        .await
        .map_err(ProjectionError::from)?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(format!("rebuild:{}", live.schema()))
        .fetch_one(&mut guard)
        .await
        .map_err(ProjectionError::from)?;
    if !locked {
        return Err(ProjectionError::RebuildRunning(live.schema()).into());
    }
    let outcome = rebuild_locked(
        &pool,
        source,
        &options,
        metrics,
        &mut on_progress,
        model,
        &live,
        &staging,
        &retired,
    )
    .await;
    // whatever happened, nothing of the rebuild is left behind but the live read model
    let cleanup = remove_rebuild(&pool, &staging, &retired).await;
    if let Err(e) = cleanup {
        tracing::warn!(error = %e, %staging, "removing the staging schema of a rebuild failed");
    }
    // the session lock goes with the connection
    if let Err(e) = guard.close().await {
        tracing::warn!(error = %e, "closing the rebuild's lock connection failed");
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn rebuild_locked(
    pool: &PgPool,
    source: EventSource,
    options: &RebuildOptions,
    metrics: Metrics,
    on_progress: &mut (impl FnMut(&ReplayProgress) + Send),
    model: &'static dyn ReadModel,
    live: &ProjectionVersion,
    staging: &str,
    retired: &str,
) -> Result<RebuildOutcome, ServiceError> {
    let started = Instant::now();
    // a fresh staging schema (an interrupted rebuild's is dropped), migrated as a version's is
    remove_rebuild(pool, staging, retired)
        .await
        .map_err(ProjectionError::from)?;
    migrate_into(pool, staging, &READ_MODEL_MIGRATOR).await?;
    let projector = Projector::rebuilding(pool.clone(), live.clone(), model, staging.to_owned());
    tracing::info!(read_model = model.name(), version = %live.schema(), %staging, "rebuilding a read model from offset zero");

    // 1. from offset zero to (about) the end of the log, while the live version serves
    let first = consume_until_caught_up(
        &source,
        &projector,
        options.batch,
        options.catch_up_lag,
        metrics.clone(),
        started,
        on_progress,
    )
    .await?;

    // 2. the switch, in one transaction
    let mut tx = pool.begin().await.map_err(ProjectionError::from)?;
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", options.lock_timeout.as_millis()))
        .execute(&mut *tx)
        .await
        .map_err(ProjectionError::from)?;
    let held = Instant::now();
    // the live read model's checkpoints: its projector waits here at its next batch
    let applied: Vec<(String, i32, i64)> = sqlx::query_as(
        r#"SELECT topic, "partition", "offset" FROM projection.read_model_checkpoints
            WHERE schema_name = $1 AND read_model = $2
            ORDER BY read_model, topic, "partition"
              FOR UPDATE"#,
    )
    .bind(live.schema())
    .bind(model.name())
    .fetch_all(&mut *tx)
    .await
    .map_err(ProjectionError::from)?;
    // what the live read model applied meanwhile (and more): the end of the log is past it
    // One lane (the live read model waits meanwhile, holding its connections), and bounded:
    // on a timeout the switch is rolled back and the live read model goes on as it was.
    let last = tokio::time::timeout(
        options.lock_timeout,
        consume_until_caught_up(
            &source,
            &projector,
            BatchOptions {
                lanes: 1,
                ..options.batch
            },
            0,
            metrics,
            started,
            on_progress,
        ),
    )
    .await
    .map_err(|_| {
        ServiceError::Config(format!(
            "the rebuilt read model {} did not catch up within {:?} while the live one waited; nothing was switched",
            model.name(),
            options.lock_timeout
        ))
    })??;
    let rebuilt: HashMap<(String, i32), i64> = sqlx::query_as(
        r#"SELECT topic, "partition", "offset" FROM projection.read_model_checkpoints
            WHERE schema_name = $1 AND read_model = $2"#,
    )
    .bind(staging)
    .bind(model.name())
    .fetch_all(&mut *tx)
    .await
    .map_err(ProjectionError::from)?
    .into_iter()
    .map(|(t, p, o): (String, i32, i64)| ((t, p), o))
    .collect();
    for (topic, partition, offset) in applied {
        let at = rebuilt
            .get(&(topic.clone(), partition))
            .copied()
            .unwrap_or(-1);
        if at < offset {
            return Err(ProjectionError::RebuildBehind {
                read_model: model.name().to_owned(),
                topic,
                partition,
                rebuilt: at,
                live: offset,
            }
            .into());
        }
    }
    let tables: Vec<&str> = model
        .tables()
        .iter()
        .chain(model.other_tables())
        .copied()
        .collect();
    switch_tables(&mut tx, &live.schema(), staging, retired, &tables)
        .await
        .map_err(ProjectionError::from)?;
    sqlx::query(
        "DELETE FROM projection.read_model_checkpoints WHERE schema_name = $1 AND read_model = $2",
    )
    .bind(live.schema())
    .bind(model.name())
    .execute(&mut *tx)
    .await
    .map_err(ProjectionError::from)?;
    sqlx::query(
        "UPDATE projection.read_model_checkpoints SET schema_name = $1, updated_at = now()
          WHERE schema_name = $2 AND read_model = $3",
    )
    .bind(live.schema())
    .bind(staging)
    .bind(model.name())
    .execute(&mut *tx)
    .await
    .map_err(ProjectionError::from)?;
    tx.commit().await.map_err(ProjectionError::from)?;
    let switch = held.elapsed();
    tracing::info!(read_model = model.name(), version = %live.schema(), ?switch, "switched the rebuilt read model in");
    Ok(RebuildOutcome {
        version: live.schema(),
        read_model: model.name().to_owned(),
        records: first.records_done + last.records_done,
        events_applied: first.events_applied + last.events_applied,
        elapsed: started.elapsed(),
        switch,
    })
}

/// Drops a rebuild's staging and retired schemas and the staging checkpoints.
async fn remove_rebuild(pool: &PgPool, staging: &str, retired: &str) -> Result<(), sqlx::Error> {
    for schema in [staging, retired] {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(pool)
            .await?;
    }
    sqlx::query("DELETE FROM projection.read_model_checkpoints WHERE schema_name = $1")
        .bind(staging)
        .execute(pool)
        .await?;
    Ok(())
}

/// Moves `tables` of `live` into `retired` and those of `staging` into `live`, and re-creates
/// the views of `live` (a view is bound to the tables it was created over, not to their
/// names). On the caller's transaction.
async fn switch_tables(
    conn: &mut PgConnection,
    live: &str,
    staging: &str,
    retired: &str,
    tables: &[&str],
) -> Result<(), sqlx::Error> {
    // the views' definitions, with names as seen from the live schema (unqualified)
    sqlx::query("SELECT set_config('search_path', $1, true)")
        .bind(live)
        .execute(&mut *conn)
        .await?;
    let views: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT c.oid::int8, c.relname::text, pg_get_viewdef(c.oid, true)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relkind = 'v'",
    )
    .bind(live)
    .fetch_all(&mut *conn)
    .await?;
    // which view reads which other view
    let uses: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT DISTINCT r.ev_class::int8, d.refobjid::int8
           FROM pg_rewrite r
           JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                           AND d.refclassid = 'pg_class'::regclass
          WHERE d.refobjid <> r.ev_class",
    )
    .fetch_all(&mut *conn)
    .await?;
    let order = creation_order(&views, &uses);
    for i in order.iter().rev() {
        let name = &views[*i].1;
        sqlx::query(&format!("DROP VIEW {live}.{name}"))
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(&format!("CREATE SCHEMA {retired}"))
        .execute(&mut *conn)
        .await?;
    for table in tables {
        sqlx::query(&format!("ALTER TABLE {live}.{table} SET SCHEMA {retired}"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!("ALTER TABLE {staging}.{table} SET SCHEMA {live}"))
            .execute(&mut *conn)
            .await?;
    }
    for i in &order {
        let (_, name, def) = &views[*i];
        sqlx::query(&format!("CREATE VIEW {live}.{name} AS {def}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The views in an order they can be created in: each after the views it reads.
fn creation_order(views: &[(i64, String, String)], uses: &[(i64, i64)]) -> Vec<usize> {
    let index: HashMap<i64, usize> = views
        .iter()
        .enumerate()
        .map(|(i, (oid, _, _))| (*oid, i))
        .collect();
    let mut needs: Vec<Vec<usize>> = vec![Vec::new(); views.len()];
    for (view, used) in uses {
        if let (Some(v), Some(u)) = (index.get(view), index.get(used)) {
            needs[*v].push(*u);
        }
    }
    let mut order = Vec::with_capacity(views.len());
    let mut placed = HashSet::new();
    // views cannot read each other in a cycle, so each pass places at least one
    while order.len() < views.len() {
        let before = order.len();
        for (v, needed) in needs.iter().enumerate() {
            if !placed.contains(&v) && needed.iter().all(|u| placed.contains(u)) {
                placed.insert(v);
                order.push(v);
            }
        }
        if order.len() == before {
            // not reachable for real views; keep every one rather than loop
            order.extend((0..views.len()).filter(|v| !placed.contains(v)));
            break;
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::creation_order;

    #[test]
    fn views_are_created_after_the_views_they_read() {
        let views = vec![
            (30, "c".to_owned(), String::new()),
            (10, "a".to_owned(), String::new()),
            (20, "b".to_owned(), String::new()),
        ];
        // c reads b, b reads a; a reads a table (not a view)
        let uses = vec![(30, 20), (20, 10), (10, 5)];
        let order: Vec<&str> = creation_order(&views, &uses)
            .into_iter()
            .map(|i| views[i].1.as_str())
            .collect();
        assert_eq!(order, ["a", "b", "c"]);
    }
}
