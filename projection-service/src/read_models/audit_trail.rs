//! The audit trail: one row per event of every stream (customers' and the organisation's,
//! the latter under the nil UUID), with who did it, when, by which command, what it changed
//! and where it is in the log. Written with one statement per batch.

use async_trait::async_trait;
use domain::organisation::organisation_stream;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{to_i64, Batch, Effects, EventRef, ReadModel};
use crate::error::Result;

pub(crate) struct AuditTrail;

#[async_trait]
impl ReadModel for AuditTrail {
    fn name(&self) -> &'static str {
        "audit_trail"
    }

    /// Every event, of either stream.
    fn consumes(&self, event: EventRef<'_>) -> bool {
        let _ = event;
        true
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_trail"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        _: &mut Effects,
    ) -> Result<()> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let n = batch.events.len();
        let mut event_id = Vec::with_capacity(n);
        let mut customer_id = Vec::with_capacity(n);
        let mut sequence = Vec::with_capacity(n);
        let mut event_type = Vec::with_capacity(n);
        let mut source = Vec::with_capacity(n);
        let mut actor = Vec::with_capacity(n);
        let mut occurred_at = Vec::with_capacity(n);
        let mut recorded_at = Vec::with_capacity(n);
        let mut changes = Vec::with_capacity(n);
        let mut command = Vec::with_capacity(n);
        let mut command_id = Vec::with_capacity(n);
        let mut correlation_id = Vec::with_capacity(n);
        let mut causation_id: Vec<Option<Uuid>> = Vec::with_capacity(n);
        let mut topic = Vec::with_capacity(n);
        let mut partition = Vec::with_capacity(n);
        let mut offset = Vec::with_capacity(n);
        for e in &batch.events {
            let (m, stream, kind, body) = match e.event {
                EventRef::Customer(r) => (
                    &r.metadata,
                    r.metadata.customer_id.as_uuid(),
                    r.event.event_type(),
                    r.event.to_value()?,
                ),
                EventRef::Organisation(r) => (
                    &r.metadata,
                    organisation_stream().as_uuid(),
                    r.event.event_type(),
                    r.event.to_value()?,
                ),
            };
            event_id.push(m.id);
            customer_id.push(stream);
            sequence.push(to_i64(m.sequence, "sequence")?);
            event_type.push(kind);
            source.push(m.source.as_str());
            actor.push(m.actor.as_str());
            occurred_at.push(m.occurred_at);
            recorded_at.push(m.recorded_at);
            changes.push(body);
            command.push(m.command.as_deref());
            command_id.push(m.command_id.as_deref());
            correlation_id.push(m.correlation_id);
            causation_id.push(m.causation_id);
            topic.push(e.position.topic.as_str());
            partition.push(e.position.partition);
            offset.push(e.position.offset);
        }
        sqlx::query(
            r#"INSERT INTO audit_trail (event_id, customer_id, sequence, event_type, source, actor,
                   occurred_at, recorded_at, changes, command, command_id, correlation_id,
                   causation_id, topic, "partition", "offset")
               SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[],
                   $6::text[], $7::timestamptz[], $8::timestamptz[], $9::jsonb[], $10::text[],
                   $11::text[], $12::uuid[], $13::uuid[], $14::text[], $15::int[], $16::bigint[])"#,
        )
        .bind(&event_id)
        .bind(&customer_id)
        .bind(&sequence)
        .bind(&event_type)
        .bind(&source)
        .bind(&actor)
        .bind(&occurred_at)
        .bind(&recorded_at)
        .bind(&changes)
        .bind(&command)
        .bind(&command_id)
        .bind(&correlation_id)
        .bind(&causation_id)
        .bind(&topic)
        .bind(&partition)
        .bind(&offset)
        .execute(conn)
        .await?;
        Ok(())
    }
}
