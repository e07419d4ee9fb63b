//! RFM scores and segments. Recomputed from the orders as of a given time by the jobs
//! ([`crate::rfm`]); a batch with orders only bumps the orders' version (a counter per
//! partition, summed), so the next check knows to recompute.

use async_trait::async_trait;
use domain::CustomerEvent as E;
use sqlx::PgConnection;

use super::{Batch, Effects, EventRef, ReadModel};
use crate::error::Result;

pub(crate) struct Rfm;

#[async_trait]
impl ReadModel for Rfm {
    fn name(&self) -> &'static str {
        "rfm"
    }

    fn consumes(&self, event: EventRef<'_>) -> bool {
        matches!(event.customer_event(), Some(E::OrderPlaced(_)))
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rfm", "rfm_runs"]
    }

    fn other_tables(&self) -> &'static [&'static str] {
        &["rfm_order_versions"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        effects: &mut Effects,
    ) -> Result<()> {
        // a counter per partition with orders: lanes of other partitions do not wait on it
        let mut partitions: Vec<i32> = batch
            .customer_events()
            .filter(|(_, r)| matches!(r.event, E::OrderPlaced(_)))
            .map(|(pos, _)| pos.partition)
            .collect();
        if !partitions.is_empty() {
            partitions.sort_unstable();
            partitions.dedup();
            sqlx::query(
                r#"INSERT INTO rfm_order_versions ("partition", orders_version)
                   SELECT p, 1 FROM unnest($1::int[]) AS u(p)
                   ON CONFLICT ("partition")
                   DO UPDATE SET orders_version = rfm_order_versions.orders_version + 1"#,
            )
            .bind(&partitions)
            .execute(conn)
            .await?;
            effects.orders_changed = true;
        }
        Ok(())
    }
}
