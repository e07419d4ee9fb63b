//! Complaints (投诉): lodged, handled, closed. Folded per complaint in memory (the last status
//! and times win), then written with two statements per batch: the new complaints, and the
//! changes to every complaint the batch touched.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::CustomerEvent as E;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Batch, Effects, EventRef, ReadModel};
use crate::describe::{complaint_category, priority};
use crate::error::Result;

pub(crate) struct Complaints;

/// A new complaint's row.
struct Lodged<'a> {
    customer: Uuid,
    category: &'static str,
    sub_category: &'a str,
    urgency: &'static str,
    importance: &'static str,
    at: DateTime<Utc>,
}

/// What a batch does to one complaint.
#[derive(Default)]
struct Fold<'a> {
    lodged: Option<Lodged<'a>>,
    status: Option<&'static str>,
    handled_at: Option<DateTime<Utc>>,
    closed_at: Option<DateTime<Utc>>,
}

#[async_trait]
impl ReadModel for Complaints {
    fn name(&self) -> &'static str {
        "complaints"
    }

    fn consumes(&self, event: EventRef<'_>) -> bool {
        matches!(
            event.customer_event(),
            Some(E::ComplaintLodged(_) | E::ComplaintHandled(_) | E::ComplaintClosed(_))
        )
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
        let mut folds: HashMap<Uuid, Fold<'_>> = HashMap::new();
        for (_, r) in batch.customer_events() {
            let at = r.metadata.occurred_at;
            match &r.event {
                E::ComplaintLodged(e) => {
                    let f = folds.entry(e.complaint_id.as_uuid()).or_default();
                    f.lodged = Some(Lodged {
                        customer: r.metadata.customer_id.as_uuid(),
                        category: complaint_category(e.category),
                        sub_category: &e.sub_category,
                        urgency: priority(e.urgency),
                        importance: priority(e.importance),
                        at,
                    });
                    f.status = Some("lodged");
                }
                E::ComplaintHandled(e) => {
                    let f = folds.entry(e.complaint_id.as_uuid()).or_default();
                    f.status = Some("handled");
                    f.handled_at = Some(at);
                }
                E::ComplaintClosed(e) => {
                    let f = folds.entry(e.complaint_id.as_uuid()).or_default();
                    f.status = Some("closed");
                    f.closed_at = Some(at);
                }
                _ => {}
            }
        }
        if folds.is_empty() {
            return Ok(());
        }
        let (mut new_id, mut customer, mut category, mut sub_category) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut urgency, mut importance, mut lodged_at) = (Vec::new(), Vec::new(), Vec::new());
        let (mut id, mut status, mut handled_at, mut closed_at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (complaint, f) in folds {
            if let Some(l) = f.lodged {
                new_id.push(complaint);
                customer.push(l.customer);
                category.push(l.category);
                sub_category.push(l.sub_category);
                urgency.push(l.urgency);
                importance.push(l.importance);
                lodged_at.push(l.at);
            }
            id.push(complaint);
            status.push(f.status);
            handled_at.push(f.handled_at);
            closed_at.push(f.closed_at);
        }
        if !new_id.is_empty() {
            sqlx::query(
                "INSERT INTO complaints (complaint_id, customer_id, category, sub_category, urgency,
                     importance, status, lodged_at)
                 SELECT id, c, cat, sub, u, i, 'lodged', at
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $7::timestamptz[]) AS n(id, c, cat, sub, u, i, at)",
            )
            .bind(&new_id)
            .bind(&customer)
            .bind(&category)
            .bind(&sub_category)
            .bind(&urgency)
            .bind(&importance)
            .bind(&lodged_at)
            .execute(&mut *conn)
            .await?;
        }
        sqlx::query(
            "UPDATE complaints c SET
                 status = coalesce(f.status, c.status),
                 handled_at = coalesce(f.handled_at, c.handled_at),
                 closed_at = coalesce(f.closed_at, c.closed_at)
               FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[])
                    AS f(id, status, handled_at, closed_at)
              WHERE c.complaint_id = f.id",
        )
        .bind(&id)
        .bind(&status)
        .bind(&handled_at)
        .bind(&closed_at)
        .execute(conn)
        .await?;
        Ok(())
    }
}
