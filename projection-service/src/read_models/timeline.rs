//! The timeline: every event of a customer as one line (touchpoint or state change), read in
//! business-time order, so that a late event lands in its place. Written with one `COPY` per
//! batch.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::copy_rows::CopyRows;
use super::{to_i64, Batch, Effects, EventRef, ReadModel};
use crate::describe::describe;
use crate::error::Result;

pub(crate) struct Timeline;

const COLUMNS: &[&str] = &[
    "customer_id",
    "sequence",
    "event_id",
    "occurred_at",
    "event_type",
    "category",
    "channel",
    "direction",
    "summary",
    "actor",
    "subject_id",
];

#[async_trait]
impl ReadModel for Timeline {
    fn name(&self) -> &'static str {
        "timeline"
    }

    /// Every customer's event.
    fn consumes(&self, event: EventRef<'_>) -> bool {
        event.customer_event().is_some()
    }

    fn tables(&self) -> &'static [&'static str] {
        &["timeline"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        _: &mut Effects,
    ) -> Result<()> {
        let mut rows = CopyRows::new("timeline", COLUMNS);
        for (_, r) in batch.customer_events() {
            let m = &r.metadata;
            let line = describe(&r.event);
            let sequence = to_i64(m.sequence, "sequence")?;
            rows.row(|row| {
                row.uuid(m.customer_id.as_uuid());
                row.int8(sequence);
                row.uuid(m.id);
                row.timestamptz(m.occurred_at);
                row.text(r.event.event_type());
                row.text(line.category);
                row.opt_text(line.channel);
                row.opt_text(line.direction);
                row.text(&line.summary);
                row.text(m.actor.as_str());
                row.opt_text(line.subject_id.as_deref());
            })?;
        }
        rows.send(conn).await?;
        Ok(())
    }
}
