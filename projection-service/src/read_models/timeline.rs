//! The timeline: every event of a customer as one line (touchpoint or state change), read in
//! business-time order, so that a late event lands in its place. Written with one statement
//! per batch.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{to_i64, Batch, Effects, EventRef, ReadModel};
use crate::describe::describe;
use crate::error::Result;

pub(crate) struct Timeline;

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
        let mut customer_id = Vec::new();
        let mut sequence = Vec::new();
        let mut event_id = Vec::new();
        let mut occurred_at = Vec::new();
        let mut event_type = Vec::new();
        let mut category = Vec::new();
        let mut channel = Vec::new();
        let mut direction = Vec::new();
        let mut summary = Vec::new();
        let mut actor = Vec::new();
        let mut subject_id = Vec::new();
        for (_, r) in batch.customer_events() {
            let m = &r.metadata;
            let line = describe(&r.event);
            customer_id.push(m.customer_id.as_uuid());
            sequence.push(to_i64(m.sequence, "sequence")?);
            event_id.push(m.id);
            occurred_at.push(m.occurred_at);
            event_type.push(r.event.event_type());
            category.push(line.category);
            channel.push(line.channel);
            direction.push(line.direction);
            summary.push(line.summary);
            actor.push(m.actor.as_str());
            subject_id.push(line.subject_id);
        }
        if customer_id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO timeline (customer_id, sequence, event_id, occurred_at, event_type,
                 category, channel, direction, summary, actor, subject_id)
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::timestamptz[],
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                 $11::text[])",
        )
        .bind(&customer_id)
        .bind(&sequence)
        .bind(&event_id)
        .bind(&occurred_at)
        .bind(&event_type)
        .bind(&category)
        .bind(&channel)
        .bind(&direction)
        .bind(&summary)
        .bind(&actor)
        .bind(&subject_id)
        .execute(conn)
        .await?;
        Ok(())
    }
}
