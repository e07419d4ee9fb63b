//! Complaints (投诉): lodged, handled, closed. Written event by event.

use async_trait::async_trait;
use domain::CustomerEvent as E;
use sqlx::PgConnection;

use super::{Batch, Effects, ReadModel};
use crate::describe::{complaint_category, priority};
use crate::error::Result;

pub(crate) struct Complaints;

#[async_trait]
impl ReadModel for Complaints {
    fn name(&self) -> &'static str {
        "complaints"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["complaints"]
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
                E::ComplaintLodged(e) => {
                    sqlx::query(
                        "INSERT INTO complaints (complaint_id, customer_id, category, sub_category,
                             urgency, importance, status, lodged_at)
                         VALUES ($1, $2, $3, $4, $5, $6, 'lodged', $7)",
                    )
                    .bind(e.complaint_id.as_uuid())
                    .bind(r.metadata.customer_id.as_uuid())
                    .bind(complaint_category(e.category))
                    .bind(&e.sub_category)
                    .bind(priority(e.urgency))
                    .bind(priority(e.importance))
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                }
                E::ComplaintHandled(e) => {
                    sqlx::query(
                        "UPDATE complaints SET status = 'handled', handled_at = $2
                          WHERE complaint_id = $1",
                    )
                    .bind(e.complaint_id.as_uuid())
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                }
                E::ComplaintClosed(e) => {
                    sqlx::query(
                        "UPDATE complaints SET status = 'closed', closed_at = $2
                          WHERE complaint_id = $1",
                    )
                    .bind(e.complaint_id.as_uuid())
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
