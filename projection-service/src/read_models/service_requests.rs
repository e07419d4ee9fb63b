//! Service requests (服务): created, assigned, handled, the customer's feedback, archived.
//! Folded per request in memory (in event order: the last status, assignee and times win,
//! feedbacks are counted), then written with two statements per batch: the new requests, and
//! the changes to every request the batch touched.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::policy::SATISFIED_FROM;
use domain::CustomerEvent as E;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Batch, Effects, EventRef, ReadModel};
use crate::error::Result;

pub(crate) struct ServiceRequests;

/// A new request's row.
struct Created<'a> {
    customer: Uuid,
    kind: &'static str,
    summary: &'a str,
    at: DateTime<Utc>,
}

/// What a batch does to one request.
#[derive(Default)]
struct Fold<'a> {
    created: Option<Created<'a>>,
    status: Option<&'static str>,
    assignee: Option<&'a str>,
    handled_at: Option<DateTime<Utc>>,
    satisfaction: Option<i16>,
    feedbacks: i32,
    archived_at: Option<DateTime<Utc>>,
}

#[async_trait]
impl ReadModel for ServiceRequests {
    fn name(&self) -> &'static str {
        "service_requests"
    }

    fn consumes(&self, event: EventRef<'_>) -> bool {
        matches!(
            event.customer_event(),
            Some(
                E::ServiceRequestCreated(_)
                    | E::ServiceRequestAssigned(_)
                    | E::ServiceRequestHandled(_)
                    | E::ServiceFeedbackGiven(_)
                    | E::ServiceRequestArchived(_)
            )
        )
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
        let mut folds: HashMap<Uuid, Fold<'_>> = HashMap::new();
        for (_, r) in batch.customer_events() {
            let at = r.metadata.occurred_at;
            match &r.event {
                E::ServiceRequestCreated(e) => {
                    let f = folds.entry(e.service_request_id.as_uuid()).or_default();
                    f.created = Some(Created {
                        customer: r.metadata.customer_id.as_uuid(),
                        kind: e.kind.as_str(),
                        summary: &e.summary,
                        at,
                    });
                    f.status = Some("created");
                }
                E::ServiceRequestAssigned(e) => {
                    let f = folds.entry(e.service_request_id.as_uuid()).or_default();
                    f.status = Some("assigned");
                    f.assignee = Some(e.assignee.as_str());
                }
                E::ServiceRequestHandled(e) => {
                    let f = folds.entry(e.service_request_id.as_uuid()).or_default();
                    f.status = Some("handled");
                    f.handled_at = Some(at);
                }
                E::ServiceFeedbackGiven(e) => {
                    let f = folds.entry(e.service_request_id.as_uuid()).or_default();
                    f.status = Some(if e.satisfaction >= SATISFIED_FROM {
                        "satisfied"
                    } else {
                        "assigned"
                    });
                    f.satisfaction = Some(i16::from(e.satisfaction));
                    f.feedbacks += 1;
                }
                E::ServiceRequestArchived(e) => {
                    let f = folds.entry(e.service_request_id.as_uuid()).or_default();
                    f.status = Some("archived");
                    f.archived_at = Some(at);
                }
                _ => {}
            }
        }
        if folds.is_empty() {
            return Ok(());
        }
        let (mut new_id, mut customer, mut kind, mut summary, mut created_at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut id, mut status, mut assignee, mut handled_at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut satisfaction, mut feedbacks, mut archived_at) =
            (Vec::new(), Vec::new(), Vec::new());
        for (request, f) in folds {
            if let Some(c) = f.created {
                new_id.push(request);
                customer.push(c.customer);
                kind.push(c.kind);
                summary.push(c.summary);
                created_at.push(c.at);
            }
            id.push(request);
            status.push(f.status);
            assignee.push(f.assignee);
            handled_at.push(f.handled_at);
            satisfaction.push(f.satisfaction);
            feedbacks.push(f.feedbacks);
            archived_at.push(f.archived_at);
        }
        if !new_id.is_empty() {
            sqlx::query(
                "INSERT INTO service_requests (service_request_id, customer_id, kind, summary,
                     status, created_at)
                 SELECT id, c, k, s, 'created', at
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[])
                        AS n(id, c, k, s, at)",
            )
            .bind(&new_id)
            .bind(&customer)
            .bind(&kind)
            .bind(&summary)
            .bind(&created_at)
            .execute(&mut *conn)
            .await?;
        }
        sqlx::query(
            "UPDATE service_requests r SET
                 status = coalesce(f.status, r.status),
                 assignee = coalesce(f.assignee, r.assignee),
                 handled_at = coalesce(f.handled_at, r.handled_at),
                 satisfaction = coalesce(f.satisfaction, r.satisfaction),
                 feedback_count = r.feedback_count + f.feedbacks,
                 archived_at = coalesce(f.archived_at, r.archived_at)
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::smallint[],
                           $6::int[], $7::timestamptz[])
                    AS f(id, status, assignee, handled_at, satisfaction, feedbacks, archived_at)
              WHERE r.service_request_id = f.id",
        )
        .bind(&id)
        .bind(&status)
        .bind(&assignee)
        .bind(&handled_at)
        .bind(&satisfaction)
        .bind(&feedbacks)
        .bind(&archived_at)
        .execute(conn)
        .await?;
        Ok(())
    }
}
