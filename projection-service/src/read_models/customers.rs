//! The customer row of the 360° view: profile, owner, churn status, order totals, last
//! activity. Registrations and profile changes are written event by event (a change must
//! follow its registration); the order totals and the last sequence and event time are
//! folded per customer in memory and written with one statement each per batch.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::CustomerEvent as E;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{to_i64, Batch, Effects, ReadModel};
use crate::describe::kind;
use crate::error::Result;

pub(crate) struct Customers;

/// What a batch adds to one customer's row.
#[derive(Default)]
struct Fold {
    last_sequence: i64,
    last_event_at: Option<DateTime<Utc>>,
    orders: i64,
    order_total: i64,
    last_order_at: Option<DateTime<Utc>>,
}

#[async_trait]
impl ReadModel for Customers {
    fn name(&self) -> &'static str {
        "customers"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["customers"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        _: &mut Effects,
    ) -> Result<()> {
        let mut folds: HashMap<Uuid, Fold> = HashMap::new();
        for (_, r) in batch.customer_events() {
            let customer = r.metadata.customer_id.as_uuid();
            let seq = to_i64(r.metadata.sequence, "sequence")?;
            let at = r.metadata.occurred_at;
            profile(conn, customer, seq, at, &r.event).await?;
            let f = folds.entry(customer).or_default();
            f.last_sequence = f.last_sequence.max(seq);
            f.last_event_at = f.last_event_at.max(Some(at));
            if let E::OrderPlaced(o) = &r.event {
                f.orders += 1;
                f.order_total += o.total.amount;
                f.last_order_at = f.last_order_at.max(Some(at));
            }
        }
        if folds.is_empty() {
            return Ok(());
        }
        let mut customer = Vec::with_capacity(folds.len());
        let mut last_sequence = Vec::with_capacity(folds.len());
        let mut last_event_at = Vec::with_capacity(folds.len());
        let mut orders = Vec::with_capacity(folds.len());
        let mut order_total = Vec::with_capacity(folds.len());
        let mut last_order_at = Vec::with_capacity(folds.len());
        for (c, f) in folds {
            customer.push(c);
            last_sequence.push(f.last_sequence);
            last_event_at.push(f.last_event_at);
            orders.push(f.orders);
            order_total.push(f.order_total);
            last_order_at.push(f.last_order_at);
        }
        sqlx::query(
            "UPDATE customers c SET
                 last_sequence = greatest(c.last_sequence, f.last_sequence),
                 last_event_at = greatest(c.last_event_at, f.last_event_at),
                 order_count = c.order_count + f.orders,
                 order_total = c.order_total + f.order_total,
                 last_order_at = greatest(c.last_order_at, f.last_order_at)
               FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::bigint[],
                           $5::bigint[], $6::timestamptz[])
                    AS f(customer_id, last_sequence, last_event_at, orders, order_total, last_order_at)
              WHERE c.customer_id = f.customer_id",
        )
        .bind(&customer)
        .bind(&last_sequence)
        .bind(&last_event_at)
        .bind(&orders)
        .bind(&order_total)
        .bind(&last_order_at)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// The statements of one event that change the profile, owner or churn status.
async fn profile(
    conn: &mut PgConnection,
    customer: Uuid,
    seq: i64,
    at: DateTime<Utc>,
    event: &E,
) -> Result<()> {
    match event {
        E::CustomerRegistered(e) => {
            let p = &e.profile;
            sqlx::query(
                "INSERT INTO customers (customer_id, kind, number, name, region, industry, level,
                     credit, satisfaction, registration, owner, registered_at, last_sequence,
                     last_event_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $12)
                 ON CONFLICT (customer_id) DO UPDATE SET
                     kind = EXCLUDED.kind, number = EXCLUDED.number, name = EXCLUDED.name,
                     region = EXCLUDED.region, industry = EXCLUDED.industry,
                     level = EXCLUDED.level, credit = EXCLUDED.credit,
                     satisfaction = EXCLUDED.satisfaction, registration = EXCLUDED.registration,
                     owner = EXCLUDED.owner, registered_at = EXCLUDED.registered_at",
            )
            .bind(customer)
            .bind(kind(p.kind))
            .bind(&p.number)
            .bind(&p.name)
            .bind(&p.region)
            .bind(&p.industry)
            .bind(p.level.as_str())
            .bind(i16::from(p.credit))
            .bind(i16::from(p.satisfaction))
            .bind(serde_json::to_value(&p.registration)?)
            .bind(e.owner.as_str())
            .bind(at)
            .bind(seq)
            .execute(conn)
            .await?;
        }
        E::ProfileChanged(e) => {
            let c = &e.changes;
            let registration = c
                .registration
                .as_ref()
                .map(serde_json::to_value)
                .transpose()?;
            // merge patch: registration fields set are merged in, cleared ones removed
            let registration_changes = c
                .registration_changes
                .as_ref()
                .map(serde_json::to_value)
                .transpose()?;
            let cleared_registration: Vec<&str> = c
                .cleared
                .iter()
                .filter_map(|p| p.strip_prefix("registration."))
                .collect();
            let number_cleared = c.cleared.iter().any(|p| p == "number");
            sqlx::query(
                "UPDATE customers SET
                     number = CASE WHEN $10 THEN NULL ELSE coalesce($2, number) END,
                     name = coalesce($3, name),
                     region = coalesce($4, region), industry = coalesce($5, industry),
                     level = coalesce($6, level), credit = coalesce($7, credit),
                     satisfaction = coalesce($8, satisfaction),
                     registration = (coalesce($9, registration, '{}'::jsonb)
                                     || coalesce($11::jsonb, '{}'::jsonb)) - $12::text[]
                  WHERE customer_id = $1",
            )
            .bind(customer)
            .bind(&c.number)
            .bind(&c.name)
            .bind(&c.region)
            .bind(&c.industry)
            .bind(c.level.map(|l| l.as_str()))
            .bind(c.credit.map(i16::from))
            .bind(c.satisfaction.map(i16::from))
            .bind(registration)
            .bind(number_cleared)
            .bind(registration_changes)
            .bind(&cleared_registration)
            .execute(conn)
            .await?;
        }
        E::OwnerReassigned(e) => {
            sqlx::query("UPDATE customers SET owner = $2 WHERE customer_id = $1")
                .bind(customer)
                .bind(e.to.as_str())
                .execute(conn)
                .await?;
        }
        E::ChurnWarningRaised(e) => {
            churn_status(conn, customer, "at_risk", Some(e.churn_case_id.as_uuid())).await?;
        }
        E::ChurnConfirmed(e) => {
            churn_status(conn, customer, "lost", Some(e.churn_case_id.as_uuid())).await?;
        }
        E::CustomerReactivated(_) => churn_status(conn, customer, "active", None).await?,
        _ => {}
    }
    Ok(())
}

async fn churn_status(
    conn: &mut PgConnection,
    customer: Uuid,
    status: &str,
    case: Option<Uuid>,
) -> Result<()> {
    sqlx::query(
        "UPDATE customers SET churn_status = $2, churn_case_id = $3 WHERE customer_id = $1",
    )
    .bind(customer)
    .bind(status)
    .bind(case)
    .execute(conn)
    .await?;
    Ok(())
}
