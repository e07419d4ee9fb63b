//! Churn cases (客户流失): warned, the delaying measures taken, confirmed lost or reactivated.
//! Written event by event. (The customer row's churn status is the customers unit's.)

use async_trait::async_trait;
use domain::CustomerEvent as E;
use sqlx::PgConnection;

use super::{to_i64, Batch, Effects, EventRef, ReadModel};
use crate::error::Result;

pub(crate) struct Churn;

#[async_trait]
impl ReadModel for Churn {
    fn name(&self) -> &'static str {
        "churn"
    }

    fn consumes(&self, event: EventRef<'_>) -> bool {
        matches!(
            event.customer_event(),
            Some(
                E::ChurnWarningRaised(_)
                    | E::ChurnDelayMeasureRecorded(_)
                    | E::ChurnConfirmed(_)
                    | E::CustomerReactivated(_)
            )
        )
    }

    fn tables(&self) -> &'static [&'static str] {
        &["churn_cases", "churn_measures"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        _: &mut Effects,
    ) -> Result<()> {
        for (_, r) in batch.customer_events() {
            let at = r.metadata.occurred_at;
            match &r.event {
                E::ChurnWarningRaised(e) => {
                    sqlx::query(
                        "INSERT INTO churn_cases (churn_case_id, customer_id, status, warned_at,
                             warning_reason, last_order_at)
                         VALUES ($1, $2, 'at_risk', $3, $4, $5)",
                    )
                    .bind(e.churn_case_id.as_uuid())
                    .bind(r.metadata.customer_id.as_uuid())
                    .bind(at)
                    .bind(&e.reason)
                    .bind(e.last_order_at)
                    .execute(&mut *conn)
                    .await?;
                }
                E::ChurnDelayMeasureRecorded(e) => {
                    sqlx::query(
                        "INSERT INTO churn_measures (churn_case_id, sequence, measure, recorded_at, actor)
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(e.churn_case_id.as_uuid())
                    .bind(to_i64(r.metadata.sequence, "sequence")?)
                    .bind(&e.measure)
                    .bind(at)
                    .bind(&r.metadata.actor)
                    .execute(&mut *conn)
                    .await?;
                }
                E::ChurnConfirmed(e) => {
                    sqlx::query(
                        "UPDATE churn_cases SET status = 'lost', confirmed_at = $2,
                             confirmed_reason = $3
                          WHERE churn_case_id = $1",
                    )
                    .bind(e.churn_case_id.as_uuid())
                    .bind(at)
                    .bind(&e.reason)
                    .execute(&mut *conn)
                    .await?;
                }
                E::CustomerReactivated(e) => {
                    sqlx::query(
                        "UPDATE churn_cases SET status = 'reactivated', reactivated_at = $2,
                             reactivation_reason = $3
                          WHERE churn_case_id = $1",
                    )
                    .bind(e.churn_case_id.as_uuid())
                    .bind(at)
                    .bind(&e.reason)
                    .execute(&mut *conn)
                    .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
