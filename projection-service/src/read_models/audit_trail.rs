//! The audit trail: one row per event of every stream (customers' and the organisation's,
//! the latter under the nil UUID), with who did it, when, by which command, what it changed
//! and where it is in the log. Written with one `COPY` per batch.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::copy_rows::CopyRows;
use super::{to_i64, Batch, Effects, EventRef, ReadModel};
use crate::error::Result;

pub(crate) struct AuditTrail;

const COLUMNS: &[&str] = &[
    "event_id",
    "customer_id",
    "sequence",
    "event_type",
    "source",
    "actor",
    "occurred_at",
    "recorded_at",
    "changes",
    "command",
    "command_id",
    "correlation_id",
    "causation_id",
    "topic",
    "partition",
    "offset",
];

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
        let mut rows = CopyRows::new("audit_trail", COLUMNS);
        for e in &batch.events {
            // the stream is the envelope's subject: a customer's id, or the organisation's
            let (m, kind, body) = (e.event.metadata(), e.event.event_type(), e.event.to_json()?);
            let stream = m.customer_id.as_uuid();
            let sequence = to_i64(m.sequence, "sequence")?;
            rows.row(|row| {
                row.uuid(m.id);
                row.uuid(stream);
                row.int8(sequence);
                row.text(kind);
                row.text(m.source.as_str());
                row.text(m.actor.as_str());
                row.timestamptz(m.occurred_at);
                row.timestamptz(m.recorded_at);
                row.jsonb(&body);
                row.opt_text(m.command.as_deref());
                row.opt_text(m.command_id.as_deref());
                row.uuid(m.correlation_id);
                row.opt_uuid(m.causation_id);
                row.text(&e.position.topic);
                row.int4(e.position.partition);
                row.int8(e.position.offset);
            })?;
        }
        rows.send(conn).await?;
        Ok(())
    }
}
