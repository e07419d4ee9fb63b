//! RFM scores and segments. Recomputed from the orders as of a given time by the jobs
//! ([`crate::rfm`]); a batch with orders only bumps the version of the orders the last
//! recompute saw, so the next check knows to recompute.

use async_trait::async_trait;
use domain::CustomerEvent as E;
use sqlx::PgConnection;

use super::{Batch, Effects, ReadModel};
use crate::error::Result;

pub(crate) struct Rfm;

#[async_trait]
impl ReadModel for Rfm {
    fn name(&self) -> &'static str {
        "rfm"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rfm", "rfm_runs"]
    }

    fn other_tables(&self) -> &'static [&'static str] {
        &["rfm_state"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        effects: &mut Effects,
    ) -> Result<()> {
        if batch
            .customer_events()
            .any(|(_, r)| matches!(r.event, E::OrderPlaced(_)))
        {
            sqlx::query("UPDATE rfm_state SET orders_version = orders_version + 1")
                .execute(conn)
                .await?;
            effects.orders_changed = true;
        }
        Ok(())
    }
}
