//! The customer row of the 360° view: profile, owner, churn status, order totals, last
//! activity. Registrations (each the first event of its customer) go in with one statement
//! per batch, before anything else of the batch touches the row; profile changes (merge
//! patches) follow event by event; the owner, the churn status, the order totals and the last
//! sequence and event time are folded per customer in memory and written with one statement.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::CustomerEvent as E;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{to_i64, Batch, Effects, EventRef, ReadModel};
use crate::describe::kind;
use crate::error::Result;

pub(crate) struct Customers;

/// What a batch adds to one customer's row.
#[derive(Default)]
struct Fold<'a> {
    owner: Option<&'a str>,
    /// The churn status and case, when the batch changed them (`None` case: cleared).
    churn: Option<(&'static str, Option<Uuid>)>,
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

    /// Every customer's event (its last sequence and activity).
    fn consumes(&self, event: EventRef<'_>) -> bool {
        event.customer_event().is_some()
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
        register(conn, batch).await?;
        let mut folds: HashMap<Uuid, Fold<'_>> = HashMap::new();
        for (_, r) in batch.customer_events() {
            let customer = r.metadata.customer_id.as_uuid();
            let seq = to_i64(r.metadata.sequence, "sequence")?;
            let at = r.metadata.occurred_at;
            let f = folds.entry(customer).or_default();
            f.last_sequence = f.last_sequence.max(seq);
            f.last_event_at = f.last_event_at.max(Some(at));
            match &r.event {
                E::ProfileChanged(e) => profile_changed(conn, customer, &e.changes).await?,
                E::OwnerReassigned(e) => f.owner = Some(e.to.as_str()),
                E::ChurnWarningRaised(e) => {
                    f.churn = Some(("at_risk", Some(e.churn_case_id.as_uuid())));
                }
                E::ChurnConfirmed(e) => f.churn = Some(("lost", Some(e.churn_case_id.as_uuid()))),
                E::CustomerReactivated(_) => f.churn = Some(("active", None)),
                E::OrderPlaced(o) => {
                    f.orders += 1;
                    f.order_total += o.total.amount;
                    f.last_order_at = f.last_order_at.max(Some(at));
                }
                _ => {}
            }
        }
        if folds.is_empty() {
            return Ok(());
        }
        let mut customer = Vec::with_capacity(folds.len());
        let mut owner = Vec::with_capacity(folds.len());
        let mut churn_set = Vec::with_capacity(folds.len());
        let mut churn_status = Vec::with_capacity(folds.len());
        let mut churn_case = Vec::with_capacity(folds.len());
        let mut last_sequence = Vec::with_capacity(folds.len());
        let mut last_event_at = Vec::with_capacity(folds.len());
        let mut orders = Vec::with_capacity(folds.len());
        let mut order_total = Vec::with_capacity(folds.len());
        let mut last_order_at = Vec::with_capacity(folds.len());
        for (c, f) in folds {
            customer.push(c);
            owner.push(f.owner);
            churn_set.push(f.churn.is_some());
            churn_status.push(f.churn.map(|(status, _)| status));
            churn_case.push(f.churn.and_then(|(_, case)| case));
            last_sequence.push(f.last_sequence);
            last_event_at.push(f.last_event_at);
            orders.push(f.orders);
            order_total.push(f.order_total);
            last_order_at.push(f.last_order_at);
        }
        sqlx::query(
            "UPDATE customers c SET
                 owner = coalesce(f.owner, c.owner),
                 churn_status = CASE WHEN f.churn_set THEN f.churn_status ELSE c.churn_status END,
                 churn_case_id = CASE WHEN f.churn_set THEN f.churn_case ELSE c.churn_case_id END,
                 last_sequence = greatest(c.last_sequence, f.last_sequence),
                 last_event_at = greatest(c.last_event_at, f.last_event_at),
                 order_count = c.order_count + f.orders,
                 order_total = c.order_total + f.order_total,
                 last_order_at = greatest(c.last_order_at, f.last_order_at)
               FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::text[], $5::uuid[],
                           $6::bigint[], $7::timestamptz[], $8::bigint[], $9::bigint[],
                           $10::timestamptz[])
                    AS f(customer_id, owner, churn_set, churn_status, churn_case, last_sequence,
                         last_event_at, orders, order_total, last_order_at)
              WHERE c.customer_id = f.customer_id",
        )
        .bind(&customer)
        .bind(&owner)
        .bind(&churn_set)
        .bind(&churn_status)
        .bind(&churn_case)
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

/// Every registration of the batch, with one statement. A registration is its customer's first
/// event, so nothing earlier in the batch touched the row.
async fn register(conn: &mut PgConnection, batch: &Batch<'_>) -> Result<()> {
    let mut r = Registrations::default();
    for (_, rec) in batch.customer_events() {
        if let E::CustomerRegistered(e) = &rec.event {
            let p = &e.profile;
            r.customer.push(rec.metadata.customer_id.as_uuid());
            r.kind.push(kind(p.kind));
            r.number.push(p.number.as_deref());
            r.name.push(p.name.as_str());
            r.region.push(p.region.as_str());
            r.industry.push(p.industry.as_str());
            r.level.push(p.level.as_str());
            r.credit.push(i16::from(p.credit));
            r.satisfaction.push(i16::from(p.satisfaction));
            r.registration.push(serde_json::to_value(&p.registration)?);
            r.owner.push(e.owner.as_str());
            r.at.push(rec.metadata.occurred_at);
            r.sequence.push(to_i64(rec.metadata.sequence, "sequence")?);
        }
    }
    if r.customer.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO customers (customer_id, kind, number, name, region, industry, level,
             credit, satisfaction, registration, owner, registered_at, last_sequence,
             last_event_at)
         SELECT c, k, n, nm, rg, ind, lv, cr, sat, reg, o, at, seq, at
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::text[], $8::smallint[], $9::smallint[], $10::jsonb[], $11::text[],
                       $12::timestamptz[], $13::bigint[])
                AS r(c, k, n, nm, rg, ind, lv, cr, sat, reg, o, at, seq)
         ON CONFLICT (customer_id) DO UPDATE SET
             kind = EXCLUDED.kind, number = EXCLUDED.number, name = EXCLUDED.name,
             region = EXCLUDED.region, industry = EXCLUDED.industry,
             level = EXCLUDED.level, credit = EXCLUDED.credit,
             satisfaction = EXCLUDED.satisfaction, registration = EXCLUDED.registration,
             owner = EXCLUDED.owner, registered_at = EXCLUDED.registered_at",
    )
    .bind(&r.customer)
    .bind(&r.kind)
    .bind(&r.number)
    .bind(&r.name)
    .bind(&r.region)
    .bind(&r.industry)
    .bind(&r.level)
    .bind(&r.credit)
    .bind(&r.satisfaction)
    .bind(&r.registration)
    .bind(&r.owner)
    .bind(&r.at)
    .bind(&r.sequence)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Default)]
struct Registrations<'a> {
    customer: Vec<Uuid>,
    kind: Vec<&'static str>,
    number: Vec<Option<&'a str>>,
    name: Vec<&'a str>,
    region: Vec<&'a str>,
    industry: Vec<&'a str>,
    level: Vec<&'static str>,
    credit: Vec<i16>,
    satisfaction: Vec<i16>,
    registration: Vec<serde_json::Value>,
    owner: Vec<&'a str>,
    at: Vec<DateTime<Utc>>,
    sequence: Vec<i64>,
}

/// One profile change (a merge patch: fields set, registration fields merged, fields
/// cleared), in event order.
async fn profile_changed(
    conn: &mut PgConnection,
    customer: Uuid,
    c: &domain::ProfileChanges,
) -> Result<()> {
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
    Ok(())
}
