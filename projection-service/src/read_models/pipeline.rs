//! The sales pipeline: opportunities (stage, status, value, owner) and their stage history
//! (every stay in a stage, with how it ended), from which the funnel, time in stage, win rate,
//! sales cycle and forecast are read. Written event by event: a stay is entered and left in
//! the order of the events.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::CustomerEvent as E;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{to_i64, Batch, Effects, ReadModel};
use crate::error::Result;

pub(crate) struct Pipeline;

#[async_trait]
impl ReadModel for Pipeline {
    fn name(&self) -> &'static str {
        "pipeline"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["opportunities", "stage_history"]
    }

    fn other_tables(&self) -> &'static [&'static str] {
        &["funnel_stages"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        _: &mut Effects,
    ) -> Result<()> {
        for (_, r) in batch.customer_events() {
            let customer = r.metadata.customer_id.as_uuid();
            let seq = to_i64(r.metadata.sequence, "sequence")?;
            let at = r.metadata.occurred_at;
            match &r.event {
                E::OpportunityOpened(e) => {
                    let opportunity = e.opportunity_id.as_uuid();
                    sqlx::query(
                        "INSERT INTO opportunities (opportunity_id, customer_id, title, source,
                             amount, currency, probability, expected_close, stage, stage_since,
                             status, opened_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'qualification', $9, 'open', $9)",
                    )
                    .bind(opportunity)
                    .bind(customer)
                    .bind(&e.title)
                    .bind(&e.source)
                    .bind(e.value.amount)
                    .bind(&e.value.currency)
                    .bind(i16::from(e.probability))
                    .bind(e.expected_close)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                    enter_stage(conn, opportunity, seq, "qualification", at).await?;
                }
                E::OpportunityAssigned(e) => {
                    sqlx::query("UPDATE opportunities SET owner = $2 WHERE opportunity_id = $1")
                        .bind(e.opportunity_id.as_uuid())
                        .bind(e.owner.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
                E::OpportunityStageChanged(e) => {
                    let opportunity = e.opportunity_id.as_uuid();
                    let left_by = if e.to > e.from {
                        "advanced"
                    } else {
                        "moved_back"
                    };
                    leave_stage(conn, opportunity, at, left_by).await?;
                    enter_stage(conn, opportunity, seq, e.to.as_str(), at).await?;
                    sqlx::query(
                        "UPDATE opportunities SET stage = $2, stage_since = $3,
                             probability = coalesce($4, probability)
                          WHERE opportunity_id = $1",
                    )
                    .bind(opportunity)
                    .bind(e.to.as_str())
                    .bind(at)
                    .bind(e.probability.map(i16::from))
                    .execute(&mut *conn)
                    .await?;
                }
                E::OpportunityWon(e) => {
                    let opportunity = e.opportunity_id.as_uuid();
                    leave_stage(conn, opportunity, at, "won").await?;
                    sqlx::query(
                        "UPDATE opportunities SET status = 'won', amount = $2, currency = $3,
                             closed_at = $4, lost_reason = NULL
                          WHERE opportunity_id = $1",
                    )
                    .bind(opportunity)
                    .bind(e.value.amount)
                    .bind(&e.value.currency)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                }
                E::OpportunityLost(e) => {
                    let opportunity = e.opportunity_id.as_uuid();
                    leave_stage(conn, opportunity, at, "lost").await?;
                    sqlx::query(
                        "UPDATE opportunities SET status = 'lost', closed_at = $2, lost_reason = $3
                          WHERE opportunity_id = $1",
                    )
                    .bind(opportunity)
                    .bind(at)
                    .bind(&e.reason)
                    .execute(&mut *conn)
                    .await?;
                }
                E::OpportunityReopened(e) => {
                    let opportunity = e.opportunity_id.as_uuid();
                    enter_stage(conn, opportunity, seq, e.stage.as_str(), at).await?;
                    sqlx::query(
                        "UPDATE opportunities SET status = 'open', stage = $2, stage_since = $3,
                             closed_at = NULL, lost_reason = NULL
                          WHERE opportunity_id = $1",
                    )
                    .bind(opportunity)
                    .bind(e.stage.as_str())
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

async fn enter_stage(
    conn: &mut PgConnection,
    opportunity: Uuid,
    seq: i64,
    stage: &str,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO stage_history (opportunity_id, entered_sequence, stage, entered_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(opportunity)
    .bind(seq)
    .bind(stage)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn leave_stage(
    conn: &mut PgConnection,
    opportunity: Uuid,
    at: DateTime<Utc>,
    left_by: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE stage_history SET left_at = $2, left_by = $3
          WHERE opportunity_id = $1 AND left_at IS NULL",
    )
    .bind(opportunity)
    .bind(at)
    .bind(left_by)
    .execute(conn)
    .await?;
    Ok(())
}
