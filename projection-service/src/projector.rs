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

use domain::{
    CustomerEvent, OrganisationEvent, RecordedEvent, RecordedOrganisationEvent, StreamEvent,
};
use infra::Position;
use sqlx::PgPool;

use crate::alerts::Alert;
use crate::error::Result;
use crate::read_models::ReadModel;
use crate::read_models::{Batch, Effects, NewEvent, REGISTRY};
use crate::version::{begin_in, begin_in_schema, ensure_version, ProjectionVersion, VersionStatus};
use read_store::CHECKPOINT_CHANNEL;

/// One event of the customer-events topic, by reference: what [`Projectable`] yields.
#[derive(Debug, Clone, Copy)]
pub enum EventRef<'a> {
    Customer(&'a RecordedEvent),
    Organisation(&'a RecordedOrganisationEvent),
}

impl<'a> EventRef<'a> {
    /// The customer's event, when it is one.
    pub fn customer_event(&self) -> Option<&'a CustomerEvent> {
        match self {
            EventRef::Customer(r) => Some(&r.event),
            EventRef::Organisation(_) => None,
        }
    }

    /// The organisation's event, when it is one.
    pub fn organisation_event(&self) -> Option<&'a OrganisationEvent> {
        match self {
            EventRef::Organisation(r) => Some(&r.event),
            EventRef::Customer(_) => None,
        }
    }

    /// The envelope, of either stream.
    pub fn metadata(&self) -> &'a domain::EventMetadata {
        match self {
            EventRef::Customer(r) => &r.metadata,
            EventRef::Organisation(r) => &r.metadata,
        }
    }

    /// The CloudEvents type, of either stream.
    pub fn event_type(&self) -> &'static str {
        match self {
            EventRef::Customer(r) => r.event.event_type(),
            EventRef::Organisation(r) => r.event.event_type(),
        }
    }

    /// The JSON body, of either stream.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            EventRef::Customer(r) => r.event.to_json(),
            EventRef::Organisation(r) => r.event.to_json(),
        }
    }
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

/// Applies events to one projection version: to every read model in the version's schema,
/// or, for a rebuild of one read model, to that one in a staging schema
/// ([`crate::rebuild`]). Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Projector {
    pool: PgPool,
    version: ProjectionVersion,
    target: Target,
    /// A batch's partitions are applied in up to this many transactions at once.
    lanes: usize,
}

/// What a projector writes.
#[derive(Clone)]
enum Target {
    /// Every read model of [`REGISTRY`], in the version's schema.
    Version,
    /// One read model, rebuilt from offset zero in a staging schema beside the live version.
    Rebuild {
        read_model: &'static dyn ReadModel,
        schema: String,
    },
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Projector");
        d.field("version", &self.version.schema());
        if let Target::Rebuild { read_model, schema } = &self.target {
            d.field("rebuilding", &read_model.name())
                .field("into", schema);
        }
        d.finish()
    }
}

impl Projector {
    /// Migrates the control tables and the version's schema and registers the version (live
    /// if the projection has no live version yet, building otherwise).
    pub async fn open(pool: PgPool, version: ProjectionVersion) -> Result<(Self, VersionStatus)> {
        let status = ensure_version(&pool, &version).await?;
        Ok((
            Projector {
                pool,
                version,
                target: Target::Version,
                lanes: 1,
            },
            status,
        ))
    }

    /// A projector that writes only `read_model`, into the staging `schema` (prepared by the
    /// caller), with checkpoints of its own; `version` is the live version it will replace
    /// the read model of.
    pub(crate) fn rebuilding(
        pool: PgPool,
        version: ProjectionVersion,
        read_model: &'static dyn ReadModel,
        schema: String,
    ) -> Self {
        Projector {
            pool,
            version,
            target: Target::Rebuild { read_model, schema },
            lanes: 1,
        }
    }

    /// The same projector, applying a batch's partitions in up to `lanes` transactions at
    /// once, each on a connection of its own (the pool must have them); 1 by default.
    pub fn with_lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn version(&self) -> &ProjectionVersion {
        &self.version
    }

    /// The schema its batches write: the version's, or the staging schema of a rebuild.
    pub fn schema(&self) -> String {
        match &self.target {
            Target::Version => self.version.schema(),
            Target::Rebuild { schema, .. } => schema.clone(),
        }
    }

    /// The read models it writes, in the order a batch is applied to them.
    pub(crate) fn read_models(&self) -> &[&'static dyn ReadModel] {
        match &self.target {
            Target::Version => REGISTRY,
            Target::Rebuild { read_model, .. } => std::slice::from_ref(read_model),
        }
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

    /// The records this version dead-lettered, over its whole life (none for a rebuild: the
    /// version counts them).
    pub async fn dead_letters(&self) -> Result<u64> {
        if matches!(self.target, Target::Rebuild { .. }) {
            return Ok(0);
        }
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

    /// The offset of every (topic, partition) up to which each of its read models has applied
    /// the log: the lowest of their checkpoints, so a read model that is behind (one added
    /// since, or rebuilt) reads again what it missed and the others skip it. A consumer seeks
    /// each assigned partition to `offset + 1` (to the beginning when absent).
    pub async fn positions(&self) -> Result<Vec<Position>> {
        let names: Vec<&str> = self.read_models().iter().map(|m| m.name()).collect();
        let rows: Vec<(String, i32, i64, i64)> = sqlx::query_as(
            r#"SELECT topic, "partition", min("offset"), count(*) FROM projection.read_model_checkpoints
                WHERE schema_name = $1 AND read_model = ANY($2)
                GROUP BY topic, "partition"
                ORDER BY topic, "partition""#,
        )
        .bind(self.schema())
        .bind(&names)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            // a read model without a checkpoint there has applied nothing of it
            .filter(|(_, _, offset, models)| *offset >= 0 && *models == names.len() as i64)
            .map(|(topic, partition, offset, _)| Position {
                topic,
                partition,
                offset,
            })
            .collect())
    }

    /// Applies a batch in one transaction: every event above a read model's checkpoint of its
    /// partition is written to that read model, in batch order, and the checkpoints move to
    /// the last offsets of the batch. Events at or below every checkpoint (a redelivery, or a
    /// duplicate inside the batch) are skipped, so applying a batch twice changes nothing. On
    /// error nothing of the batch is written.
    ///
    /// Within one partition the batch must be in offset order, as a consumer delivers it, and
    /// must follow what the consumer read since it sought past [`Projector::positions`].
    pub async fn apply<E: Projectable + Sync>(
        &self,
        batch: &[(Position, E)],
    ) -> Result<ApplyOutcome> {
        self.apply_with_skips(batch, &[]).await
    }

    /// As [`Projector::apply`], and in the same transaction moves the checkpoints past each
    /// position of `skipped`: records that are not events (dead-lettered) and so write nothing,
    /// but must not be read again. A skip never moves a checkpoint back. The caller must pass
    /// every event that precedes a skipped record in its partition (in this call or an
    /// earlier one), or those events would be skipped too.
    ///
    /// With lanes ([`Projector::with_lanes`]) the batch's partitions are split among them and
    /// each lane is one transaction, run at the same time as the others: each lane is applied
    /// exactly once or not at all, and on an error the lanes that committed are skipped when
    /// the batch is applied again.
    pub async fn apply_with_skips<E: Projectable + Sync>(
        &self,
        batch: &[(Position, E)],
        skipped: &[Position],
    ) -> Result<ApplyOutcome> {
        if batch.is_empty() && skipped.is_empty() {
            return Ok(ApplyOutcome::default());
        }
        let events: Vec<(&Position, EventRef<'_>)> =
            batch.iter().map(|(p, e)| (p, e.event_ref())).collect();
        let skipped: Vec<&Position> = skipped.iter().collect();
        let mut partitions: Vec<(&str, i32)> = events
            .iter()
            .map(|(p, _)| *p)
            .chain(skipped.iter().copied())
            .map(|p| (p.topic.as_str(), p.partition))
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        let lanes = self.lanes.min(partitions.len());
        if lanes <= 1 {
            return self.apply_lane(&events, &skipped).await;
        }
        let lane_of = |p: &Position| {
            partitions
                .binary_search(&(p.topic.as_str(), p.partition))
                .map(|i| i % lanes)
                .unwrap_or(0)
        };
        let mut lane_events: Vec<Vec<(&Position, EventRef<'_>)>> = vec![Vec::new(); lanes];
        let mut lane_skipped: Vec<Vec<&Position>> = vec![Vec::new(); lanes];
        for (pos, event) in &events {
            lane_events[lane_of(pos)].push((pos, *event));
        }
        for pos in &skipped {
            lane_skipped[lane_of(pos)].push(pos);
        }
        // every lane runs to its end (none is cancelled half-way), then the first error wins
        let results = futures::future::join_all(
            lane_events
                .iter()
                .zip(&lane_skipped)
                .map(|(events, skipped)| self.apply_lane(events, skipped)),
        )
        .await;
        let mut outcome = ApplyOutcome::default();
        for result in results {
            let lane = result?;
            outcome.applied += lane.applied;
            outcome.skipped += lane.skipped;
            outcome.alerts_closed.extend(lane.alerts_closed);
            outcome.positions.extend(lane.positions);
        }
        outcome.positions.sort();
        Ok(outcome)
    }

    /// Applies events of some partitions in one transaction (see
    /// [`Projector::apply_with_skips`]).
    async fn apply_lane(
        &self,
        batch: &[(&Position, EventRef<'_>)],
        skipped: &[&Position],
    ) -> Result<ApplyOutcome> {
        let mut outcome = ApplyOutcome::default();
        if batch.is_empty() && skipped.is_empty() {
            return Ok(outcome);
        }
        let models = self.read_models();
        let schema = self.schema();
        let mut tx = begin_in_schema(&self.pool, &schema).await?;

        // the partitions of the batch, and the last offset of each
        let mut last: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for pos in batch
            .iter()
            .map(|(pos, _)| *pos)
            .chain(skipped.iter().copied())
        {
            let entry = last.entry((pos.topic.clone(), pos.partition)).or_insert(-1);
            *entry = (*entry).max(pos.offset);
        }
        let keys: Vec<&(String, i32)> = last.keys().collect();
        let topics: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
        let partitions: Vec<i32> = keys.iter().map(|(_, p)| *p).collect();
        let names: Vec<&str> = models.iter().map(|m| m.name()).collect();

        // Lock every read model's checkpoint of the batch's partitions (creating them at -1),
        // in a fixed order so that two instances during a rebalance cannot deadlock: the
        // second waits, then sees the first one's offsets and skips what it applied.
        sqlx::query(
            r#"INSERT INTO projection.read_model_checkpoints (schema_name, read_model, topic, "partition", "offset")
               SELECT $1, m, t, p, -1 FROM unnest($2::text[]) AS n(m)
                CROSS JOIN unnest($3::text[], $4::int[]) AS u(t, p)
               ORDER BY m, t, p
               ON CONFLICT DO NOTHING"#,
        )
        .bind(&schema)
        .bind(&names)
        .bind(&topics)
        .bind(&partitions)
        .execute(&mut *tx)
        .await?;
        let rows: Vec<(String, String, i32, i64)> = sqlx::query_as(
            r#"SELECT read_model, topic, "partition", "offset" FROM projection.read_model_checkpoints
                WHERE schema_name = $1 AND read_model = ANY($2)
                  AND (topic, "partition") IN (SELECT * FROM unnest($3::text[], $4::int[]))
                ORDER BY read_model, topic, "partition"
                  FOR UPDATE"#,
        )
        .bind(&schema)
        .bind(&names)
        .bind(&topics)
        .bind(&partitions)
        .fetch_all(&mut *tx)
        .await?;
        // each read model's checkpoints, in the order of `keys`
        let mut stored: HashMap<&str, Vec<i64>> =
            names.iter().map(|n| (*n, vec![-1; keys.len()])).collect();
        for (model, topic, partition, offset) in &rows {
            let Ok(i) = keys.binary_search(&&(topic.clone(), *partition)) else {
                continue;
            };
            if let Some(offsets) = stored.get_mut(model.as_str()) {
                offsets[i] = *offset;
            }
        }
        let slot = |pos: &Position| {
            keys.binary_search_by(|(topic, partition)| {
                (topic.as_str(), *partition).cmp(&(pos.topic.as_str(), pos.partition))
            })
            .ok()
        };
        // the lowest and highest checkpoint of each partition over the read models
        let lowest: Vec<i64> = (0..keys.len())
            .map(|i| stored.values().map(|o| o[i]).min().unwrap_or(-1))
            .collect();
        let highest: Vec<i64> = (0..keys.len())
            .map(|i| stored.values().map(|o| o[i]).max().unwrap_or(-1))
            .collect();

        // Read models at the same checkpoints (all of them, unless one is catching up) share
        // one batch: the events past those checkpoints, in batch order.
        let mut groups: Vec<(Vec<i64>, Batch<'_>)> = Vec::new();
        let mut group_of: Vec<usize> = Vec::with_capacity(models.len());
        for name in &names {
            let offsets = &stored[name];
            let g = match groups.iter().position(|(o, _)| o == offsets) {
                Some(g) => g,
                None => {
                    let mut new = Batch::default();
                    let mut at = offsets.clone();
                    for (pos, event) in batch {
                        if let Some(i) = slot(pos).filter(|i| pos.offset > at[*i]) {
                            at[i] = pos.offset;
                            new.events.push(NewEvent {
                                position: pos,
                                event: *event,
                            });
                        }
                    }
                    groups.push((offsets.clone(), new));
                    groups.len() - 1
                }
            };
            group_of.push(g);
        }
        let mut at = lowest.clone();
        for (pos, _) in batch {
            if let Some(i) = slot(pos).filter(|i| pos.offset > at[*i]) {
                at[i] = pos.offset;
                outcome.applied += 1;
            } else {
                outcome.skipped += 1;
            }
        }

        // every read model writes its new events, on this transaction
        let mut effects = Effects::default();
        for (model, g) in models.iter().zip(&group_of) {
            // the events of its types only; none: it is not called
            let new = Batch {
                events: groups[*g]
                    .1
                    .events
                    .iter()
                    .filter(|e| model.consumes(e.event))
                    .copied()
                    .collect(),
            };
            if new.events.is_empty() {
                continue;
            }
            if let Err(e) = model.apply(&mut tx, &new, &mut effects).await {
                tracing::warn!(read_model = model.name(), error = %e, "a read model refused the batch");
                return Err(e);
            }
        }

        // every read model's checkpoint moves to the end of the batch (never back)
        let ends: Vec<i64> = keys.iter().map(|k| last[*k]).collect();
        let (mut m, mut t, mut p, mut o) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for name in &names {
            for (i, (topic, partition)) in keys.iter().enumerate() {
                if ends[i] > stored[name][i] {
                    m.push(*name);
                    t.push(topic.as_str());
                    p.push(*partition);
                    o.push(ends[i]);
                }
            }
        }
        sqlx::query(
            r#"UPDATE projection.read_model_checkpoints c SET "offset" = u.o, updated_at = now()
                 FROM unnest($2::text[], $3::text[], $4::int[], $5::bigint[]) AS u(m, t, p, o)
                WHERE c.schema_name = $1 AND c.read_model = u.m AND c.topic = u.t
                  AND c."partition" = u.p"#,
        )
        .bind(&schema)
        .bind(&m)
        .bind(&t)
        .bind(&p)
        .bind(&o)
        .execute(&mut *tx)
        .await?;
        // after the batch every read model is at least at the end of the batch
        let positions: Vec<i64> = (0..keys.len()).map(|i| lowest[i].max(ends[i])).collect();

        if matches!(self.target, Target::Version) {
            // The version's position: dead-lettered records count once, when the first read
            // model moves past them.
            let mut dead = vec![0i64; keys.len()];
            for pos in skipped {
                if let Some(i) = slot(pos).filter(|i| pos.offset > highest[*i]) {
                    dead[i] += 1;
                }
            }
            sqlx::query(
                r#"INSERT INTO projection.checkpoints
                          (projection, version, topic, "partition", "offset", dead_letters)
                   SELECT $1, $2, t, p, o, d
                     FROM unnest($3::text[], $4::int[], $5::bigint[], $6::bigint[]) AS u(t, p, o, d)
                    ORDER BY t, p
                   ON CONFLICT (projection, version, topic, "partition") DO UPDATE
                      SET "offset" = EXCLUDED."offset",
                          dead_letters = projection.checkpoints.dead_letters + EXCLUDED.dead_letters,
                          updated_at = now()"#,
            )
            .bind(self.version.name())
            .bind(self.version.version())
            .bind(&topics)
            .bind(&partitions)
            .bind(&positions)
            .bind(&dead)
            .execute(&mut *tx)
            .await?;
            // read-your-writes waiters wake when this commits (LISTEN/NOTIFY: on commit)
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHECKPOINT_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;

        outcome.alerts_closed = effects.alerts_closed;
        outcome.positions = keys
            .iter()
            .zip(&positions)
            .filter(|(_, offset)| **offset >= 0)
            .map(|((topic, partition), offset)| Position {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            })
            .collect();
        Ok(outcome)
    }
}
