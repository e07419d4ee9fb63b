//! Service requests (服务): created, assigned, handled, the customer's feedback, archived.
//! Written event by event.

use async_trait::async_trait;
use domain::policy::SATISFIED_FROM;
use domain::CustomerEvent as E;
use sqlx::PgConnection;

use super::{Batch, Effects, ReadModel};
use crate::error::Result;

pub(crate) struct ServiceRequests;

#[async_trait]
impl ReadModel for ServiceRequests {
    fn name(&self) -> &'static str {
        "service_requests"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["service_requests"]
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
                E::ServiceRequestCreated(e) => {
                    sqlx::query(
                        "INSERT INTO service_requests (service_request_id, customer_id, kind,
                             summary, status, created_at)
                         VALUES ($1, $2, $3, $4, 'created', $5)",
                    )
                    .bind(e.service_request_id.as_uuid())
                    .bind(r.metadata.customer_id.as_uuid())
                    .bind(e.kind.as_str())
                    .bind(&e.summary)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                }
                E::ServiceRequestAssigned(e) => {
                    sqlx::query(
                        "UPDATE service_requests SET status = 'assigned', assignee = $2
                          WHERE service_request_id = $1",
                    )
                    .bind(e.service_request_id.as_uuid())
                    .bind(e.assignee.as_str())
                    .execute(&mut *conn)
                    .await?;
                }
                E::ServiceRequestHandled(e) => {
                    sqlx::query(
                        "UPDATE service_requests SET status = 'handled', handled_at = $2
                          WHERE service_request_id = $1",
                    )
                    .bind(e.service_request_id.as_uuid())
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                }
                E::ServiceFeedbackGiven(e) => {
                    let status = if e.satisfaction >= SATISFIED_FROM {
                        "satisfied"
                    } else {
                        "assigned"
                    };
                    sqlx::query(
                        "UPDATE service_requests SET status = $2, satisfaction = $3,
                             feedback_count = feedback_count + 1
                          WHERE service_request_id = $1",
                    )
                    .bind(e.service_request_id.as_uuid())
                    .bind(status)
                    .bind(i16::from(e.satisfaction))
                    .execute(&mut *conn)
                    .await?;
                }
                E::ServiceRequestArchived(e) => {
                    sqlx::query(
                        "UPDATE service_requests SET status = 'archived', archived_at = $2
                          WHERE service_request_id = $1",
                    )
                    .bind(e.service_request_id.as_uuid())
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
