//! Touchpoints per customer and channel, with the last one's time. Folded per (customer,
//! channel) in memory, written with one statement per batch.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::CustomerEvent as E;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Batch, Effects, EventRef, ReadModel};
use crate::error::Result;

pub(crate) struct TouchpointStats;

#[async_trait]
impl ReadModel for TouchpointStats {
    fn name(&self) -> &'static str {
        "touchpoint_stats"
    }

    fn consumes(&self, event: EventRef<'_>) -> bool {
        matches!(event.customer_event(), Some(E::TouchpointRecorded(_)))
    }

    fn tables(&self) -> &'static [&'static str] {
        &["touchpoint_stats"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        _: &mut Effects,
    ) -> Result<()> {
        let mut folds: HashMap<(Uuid, &'static str), (i64, DateTime<Utc>)> = HashMap::new();
        for (_, r) in batch.customer_events() {
            if let E::TouchpointRecorded(e) = &r.event {
                let at = r.metadata.occurred_at;
                let key = (
                    r.metadata.customer_id.as_uuid(),
                    e.touchpoint.channel.name(),
                );
                let f = folds.entry(key).or_insert((0, at));
                f.0 += 1;
                f.1 = f.1.max(at);
            }
        }
        if folds.is_empty() {
            return Ok(());
        }
        let mut customer = Vec::with_capacity(folds.len());
        let mut channel = Vec::with_capacity(folds.len());
        let mut count = Vec::with_capacity(folds.len());
        let mut last_at = Vec::with_capacity(folds.len());
        for ((c, ch), (n, at)) in folds {
            customer.push(c);
            channel.push(ch);
            count.push(n);
            last_at.push(at);
        }
        sqlx::query(
            "INSERT INTO touchpoint_stats (customer_id, channel, touchpoints, last_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::timestamptz[])
             ON CONFLICT (customer_id, channel) DO UPDATE SET
                 touchpoints = touchpoint_stats.touchpoints + EXCLUDED.touchpoints,
                 last_at = greatest(touchpoint_stats.last_at, EXCLUDED.last_at)",
        )
        .bind(&customer)
        .bind(&channel)
        .bind(&count)
        .bind(&last_at)
        .execute(conn)
        .await?;
        Ok(())
    }
}
