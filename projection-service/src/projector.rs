//! The projector: applies batches of events to the read models of one projection version,
//! with the checkpoint of every (topic, partition) in the same transaction.
//!
//! The customer-events topic carries two streams: every customer's, and the organisation
//! stream (sales teams, key = the nil UUID). A consumer decodes each record with
//! [`domain::StreamEvent::from_kafka`] and hands either kind to [`Projector::apply`]: customer
//! events fill the customer read models, organisation events the `teams` / `team_members`
//! read model (which query-service's visibility of a sales director reads). Both go into the
//! audit trail.

use std::collections::{BTreeMap, HashMap};

use domain::{RecordedEvent, RecordedOrganisationEvent, StreamEvent};
use infra::Position;
use sqlx::PgPool;

use crate::alerts::Alert;
use crate::error::Result;
use crate::read_models::{Batch, Effects, NewEvent, REGISTRY};
use crate::version::{begin_in, ensure_version, ProjectionVersion, VersionStatus};

/// The PostgreSQL notification channel on which every committed batch is announced (no
/// payload): query-service's read-your-writes waits wake on it instead of polling.
pub const CHECKPOINT_CHANNEL: &str = "crm_projection_checkpoints";

/// One event of the customer-events topic, by reference: what [`Projectable`] yields.
#[derive(Debug, Clone, Copy)]
pub enum EventRef<'a> {
    Customer(&'a RecordedEvent),
    Organisation(&'a RecordedOrganisationEvent),
}

/// What the projector applies: a customer's event, an organisation event, or either
/// ([`StreamEvent`], as a consumer decodes them).
pub trait Projectable {
    fn event_ref(&self) -> EventRef<'_>;
}

impl Projectable for RecordedEvent {
    fn event_ref(&self) -> EventRef<'_> {
        EventRef::Customer(self)
    }
}

impl Projectable for RecordedOrganisationEvent {
    fn event_ref(&self) -> EventRef<'_> {
        EventRef::Organisation(self)
    }
}

impl Projectable for StreamEvent {
    fn event_ref(&self) -> EventRef<'_> {
        match self {
            StreamEvent::Customer(e) => EventRef::Customer(e),
            StreamEvent::Organisation(e) => EventRef::Organisation(e),
        }
    }
}

/// What one [`Projector::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Events written to the read models.
    pub applied: usize,
    /// Events at or below their partition's checkpoint (redelivered): nothing written.
    pub skipped: usize,
    /// Alerts closed by stage changes, wins and losses in the batch (also in the outbox).
    pub alerts_closed: Vec<Alert>,
    /// The checkpoint of each partition of the batch after it: the last applied offset.
    pub positions: Vec<Position>,
}

/// Applies events to one projection version. Cheap to clone; share one per process.
#[derive(Debug, Clone)]
pub struct Projector {
    pool: PgPool,
    version: ProjectionVersion,
}

impl Projector {
    /// Migrates the control tables and the version's schema and registers the version (live
    /// if the projection has no live version yet, building otherwise).
    pub async fn open(pool: PgPool, version: ProjectionVersion) -> Result<(Self, VersionStatus)> {
        let status = ensure_version(&pool, &version).await?;
        Ok((Projector { pool, version }, status))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn version(&self) -> &ProjectionVersion {
        &self.version
    }

    /// Whether the audit trail holds this event already: its id, or its stream's sequence.
    pub async fn already_recorded(&self, metadata: &domain::EventMetadata) -> Result<bool> {
        let mut tx = begin_in(&self.pool, &self.version).await?;
        let found: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM audit_trail
                             WHERE event_id = $1 OR (customer_id = $2 AND sequence = $3))",
        )
        .bind(metadata.id)
        .bind(metadata.customer_id.as_uuid())
        .bind(metadata.sequence as i64)
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(found)
    }

    /// Records the topic the projection reads and its partition count.
    pub async fn record_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        sqlx::query(
            "INSERT INTO projection.topics (topic, partitions) VALUES ($1, $2)
             ON CONFLICT (topic) DO UPDATE SET partitions = EXCLUDED.partitions, updated_at = now()",
        )
        .bind(topic)
        .bind(partitions)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The records this version dead-lettered, over its whole life.
    pub async fn dead_letters(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            r#"SELECT coalesce(sum(dead_letters), 0)::bigint FROM projection.checkpoints
                WHERE projection = $1 AND version = $2"#,
        )
        .bind(self.version.name())
        .bind(self.version.version())
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    /// The last applied offset of every (topic, partition) this version has seen. A consumer
    /// seeks each assigned partition to `offset + 1` (to the beginning when absent).
    pub async fn positions(&self) -> Result<Vec<Position>> {
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(
            r#"SELECT topic, "partition", "offset" FROM projection.checkpoints
                WHERE projection = $1 AND version = $2 AND "offset" >= 0
                ORDER BY topic, "partition""#,
        )
        .bind(self.version.name())
        .bind(self.version.version())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(topic, partition, offset)| Position {
                topic,
                partition,
                offset,
            })
            .collect())
    }

    /// Applies a batch in one transaction: every event above its partition's checkpoint is
    /// written to the read models, in batch order, and the checkpoints move to the last
    /// applied offsets. Events at or below the checkpoint (a redelivery, or a duplicate inside
    /// the batch) are skipped, so applying a batch twice changes nothing. On error nothing
    /// of the batch is written.
    ///
    /// Within one partition the batch must be in offset order, as a consumer delivers it.
    pub async fn apply<E: Projectable + Sync>(
        &self,
        batch: &[(Position, E)],
    ) -> Result<ApplyOutcome> {
        self.apply_with_skips(batch, &[]).await
    }

    /// As [`Projector::apply`], and in the same transaction moves the checkpoint past each
    /// position of `skipped`: records that are not events (dead-lettered) and so write nothing,
    /// but must not be read again. A skip never moves a checkpoint back. The caller must pass
    /// every event that precedes a skipped record in its partition (in this call or an
    /// earlier one), or those events would be skipped too.
    pub async fn apply_with_skips<E: Projectable + Sync>(
        &self,
        batch: &[(Position, E)],
        skipped: &[Position],
    ) -> Result<ApplyOutcome> {
        let mut outcome = ApplyOutcome::default();
        if batch.is_empty() && skipped.is_empty() {
            return Ok(outcome);
        }
        let mut tx = begin_in(&self.pool, &self.version).await?;

        // Lock the checkpoints of the batch's partitions (creating them at -1), in a fixed
        // order so that two instances during a rebalance cannot deadlock: the second waits,
        // then sees the first one's offsets and skips what it applied.
        let mut current: BTreeMap<(String, i32), (i64, bool)> = BTreeMap::new();
        for pos in batch.iter().map(|(pos, _)| pos).chain(skipped) {
            current
                .entry((pos.topic.clone(), pos.partition))
                .or_insert((-1, false));
        }
        let topics: Vec<String> = current.keys().map(|(t, _)| t.clone()).collect();
        let partitions: Vec<i32> = current.keys().map(|(_, p)| *p).collect();
        sqlx::query(
            r#"INSERT INTO projection.checkpoints (projection, version, topic, "partition", "offset")
               SELECT $1, $2, t, p, -1 FROM unnest($3::text[], $4::int[]) AS u(t, p)
               ORDER BY t, p
               ON CONFLICT DO NOTHING"#,
        )
        .bind(self.version.name())
        .bind(self.version.version())
        .bind(&topics)
        .bind(&partitions)
        .execute(&mut *tx)
        .await?;
        let stored: Vec<(String, i32, i64)> = sqlx::query_as(
            r#"SELECT c.topic, c."partition", c."offset" FROM projection.checkpoints c
                WHERE c.projection = $1 AND c.version = $2
                  AND (c.topic, c."partition") IN (SELECT * FROM unnest($3::text[], $4::int[]))
                ORDER BY c.topic, c."partition"
                  FOR UPDATE"#,
        )
        .bind(self.version.name())
        .bind(self.version.version())
        .bind(&topics)
        .bind(&partitions)
        .fetch_all(&mut *tx)
        .await?;
        for (topic, partition, offset) in stored {
            current.insert((topic, partition), (offset, false));
        }

        // the checkpoints as stored: a record past them is new to this version
        let stored = current.clone();
        let mut new = Batch::default();
        for (pos, event) in batch {
            let key = (pos.topic.clone(), pos.partition);
            let Some(entry) = current.get_mut(&key) else {
                continue;
            };
            if pos.offset <= entry.0 {
                outcome.skipped += 1;
                continue;
            }
            new.events.push(NewEvent {
                position: pos,
                event: event.event_ref(),
            });
            *entry = (pos.offset, true);
            outcome.applied += 1;
        }
        // every read model writes the new events, on this transaction
        let mut effects = Effects::default();
        if !new.events.is_empty() {
            for model in REGISTRY {
                if let Err(e) = model.apply(&mut tx, &new, &mut effects).await {
                    tracing::warn!(read_model = model.name(), error = %e, "a read model refused the batch");
                    return Err(e);
                }
            }
        }
        // dead-lettered records count once: when they move their partition's checkpoint
        let mut dead: HashMap<(String, i32), i64> = HashMap::new();
        for pos in skipped {
            let key = (pos.topic.clone(), pos.partition);
            if stored
                .get(&key)
                .is_some_and(|(offset, _)| pos.offset > *offset)
            {
                *dead.entry(key.clone()).or_default() += 1;
            }
            if let Some(entry) = current.get_mut(&key) {
                if pos.offset > entry.0 {
                    *entry = (pos.offset, true);
                }
            }
        }

        for ((topic, partition), (offset, moved)) in &current {
            if *moved {
                let dead_letters = dead.get(&(topic.clone(), *partition)).copied().unwrap_or(0);
                sqlx::query(
                    r#"UPDATE projection.checkpoints
                          SET "offset" = $5, dead_letters = dead_letters + $6, updated_at = now()
                        WHERE projection = $1 AND version = $2 AND topic = $3 AND "partition" = $4"#,
                )
                .bind(self.version.name())
                .bind(self.version.version())
                .bind(topic)
                .bind(partition)
                .bind(offset)
                .bind(dead_letters)
                .execute(&mut *tx)
                .await?;
            }
        }
        // read-your-writes waiters wake when this commits (LISTEN/NOTIFY: delivered on commit)
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHECKPOINT_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;

        outcome.alerts_closed = effects.alerts_closed;
        outcome.positions = current
            .into_iter()
            .filter(|(_, (offset, _))| *offset >= 0)
            .map(|((topic, partition), (offset, _))| Position {
                topic,
                partition,
                offset,
            })
            .collect();
        Ok(outcome)
    }
}
