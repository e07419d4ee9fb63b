//! The sales pipeline: opportunities (stage, status, value, owner) and their stage history
//! (every stay in a stage, with how it ended), and the totals the funnel, time in stage, win
//! rate, sales cycle and forecast are read from ([`totals`]). Folded per opportunity in memory,
//! in event order (a stay entered and left within the batch is closed before it is written),
//! then written with at most four statements per batch: new opportunities, their changes, the
//! stays left that were open before the batch, and the new stays. The totals are moved by the
//! opportunities the batch touched (and those of customers it gave another owner): their
//! per-stage durations recomputed from their stays, one upsert per table of totals.

mod totals;

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use domain::CustomerEvent as E;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{to_i64, Batch, Effects, EventRef, ReadModel};
use crate::error::Result;

pub(crate) struct Pipeline;

/// A new opportunity's row as opened.
struct Opened<'a> {
    customer: Uuid,
    title: &'a str,
    source: &'a str,
    amount: i64,
    currency: &'a str,
    probability: i16,
    expected_close: NaiveDate,
    at: DateTime<Utc>,
}

/// A stay entered in the batch.
struct Stay {
    sequence: i64,
    stage: &'static str,
    entered_at: DateTime<Utc>,
    left: Option<(DateTime<Utc>, &'static str)>,
}

/// What a batch does to one opportunity.
#[derive(Default)]
struct Fold<'a> {
    opened: Option<Opened<'a>>,
    owner: Option<&'a str>,
    stage: Option<&'static str>,
    stage_since: Option<DateTime<Utc>>,
    probability: Option<i16>,
    status: Option<&'static str>,
    value: Option<(i64, &'a str)>,
    /// `Some(None)` clears it.
    closed_at: Option<Option<DateTime<Utc>>>,
    lost_reason: Option<Option<&'a str>>,
    /// The stay open before the batch, left by its first leave.
    left_open: Option<(DateTime<Utc>, &'static str)>,
    stays: Vec<Stay>,
}

impl Fold<'_> {
    fn leave(&mut self, at: DateTime<Utc>, by: &'static str) {
        match self.stays.last_mut() {
            Some(stay) => {
                // the stay entered last in the batch, if still open (else nothing is open)
                if stay.left.is_none() {
                    stay.left = Some((at, by));
                }
            }
            None => {
                if self.left_open.is_none() {
                    self.left_open = Some((at, by));
                }
            }
        }
    }

    fn enter(&mut self, sequence: i64, stage: &'static str, at: DateTime<Utc>) {
        self.stays.push(Stay {
            sequence,
            stage,
            entered_at: at,
            left: None,
        });
    }
}

#[async_trait]
impl ReadModel for Pipeline {
    fn name(&self) -> &'static str {
        "pipeline"
    }

    fn consumes(&self, event: EventRef<'_>) -> bool {
        matches!(
            event.customer_event(),
            Some(
                E::CustomerRegistered(_)
                    | E::OwnerReassigned(_)
                    | E::OpportunityOpened(_)
                    | E::OpportunityAssigned(_)
                    | E::OpportunityStageChanged(_)
                    | E::OpportunityWon(_)
                    | E::OpportunityLost(_)
                    | E::OpportunityReopened(_)
            )
        )
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "opportunities",
            "stage_history",
            "pipeline_customers",
            "stage_durations",
            "pipeline_stage_totals",
            "pipeline_owner_totals",
            "pipeline_forecast",
        ]
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
        let mut folds: HashMap<Uuid, Fold<'_>> = HashMap::new();
        // the customers' owners, as the batch leaves them
        let mut owners: HashMap<Uuid, &str> = HashMap::new();
        for (_, r) in batch.customer_events() {
            let seq = to_i64(r.metadata.sequence, "sequence")?;
            let at = r.metadata.occurred_at;
            match &r.event {
                E::CustomerRegistered(e) => {
                    owners.insert(r.metadata.customer_id.as_uuid(), e.owner.as_str());
                }
                E::OwnerReassigned(e) => {
                    owners.insert(r.metadata.customer_id.as_uuid(), e.to.as_str());
                }
                E::OpportunityOpened(e) => {
                    let f = folds.entry(e.opportunity_id.as_uuid()).or_default();
                    f.opened = Some(Opened {
                        customer: r.metadata.customer_id.as_uuid(),
                        title: &e.title,
                        source: &e.source,
                        amount: e.value.amount,
                        currency: &e.value.currency,
                        probability: i16::from(e.probability),
                        expected_close: e.expected_close,
                        at,
                    });
                    f.enter(seq, "qualification", at);
                }
                E::OpportunityAssigned(e) => {
                    folds.entry(e.opportunity_id.as_uuid()).or_default().owner =
                        Some(e.owner.as_str());
                }
                E::OpportunityStageChanged(e) => {
                    let f = folds.entry(e.opportunity_id.as_uuid()).or_default();
                    f.leave(
                        at,
                        if e.to > e.from {
                            "advanced"
                        } else {
                            "moved_back"
                        },
                    );
                    f.enter(seq, e.to.as_str(), at);
                    f.stage = Some(e.to.as_str());
                    f.stage_since = Some(at);
                    if let Some(p) = e.probability {
                        f.probability = Some(i16::from(p));
                    }
                }
                E::OpportunityWon(e) => {
                    let f = folds.entry(e.opportunity_id.as_uuid()).or_default();
                    f.leave(at, "won");
                    f.status = Some("won");
                    f.value = Some((e.value.amount, e.value.currency.as_str()));
                    f.closed_at = Some(Some(at));
                    f.lost_reason = Some(None);
                }
                E::OpportunityLost(e) => {
                    let f = folds.entry(e.opportunity_id.as_uuid()).or_default();
                    f.leave(at, "lost");
                    f.status = Some("lost");
                    f.closed_at = Some(Some(at));
                    f.lost_reason = Some(Some(e.reason.as_str()));
                }
                E::OpportunityReopened(e) => {
                    let f = folds.entry(e.opportunity_id.as_uuid()).or_default();
                    f.enter(seq, e.stage.as_str(), at);
                    f.status = Some("open");
                    f.stage = Some(e.stage.as_str());
                    f.stage_since = Some(at);
                    f.closed_at = Some(None);
                    f.lost_reason = Some(None);
                }
                _ => {}
            }
        }
        if folds.is_empty() && owners.is_empty() {
            return Ok(());
        }
        // the opportunities whose totals move: those of the batch, and every one of a customer
        // with another owner
        let mut touched: Vec<Uuid> = folds.keys().copied().collect();
        let (owned, owner): (Vec<Uuid>, Vec<&str>) = owners.into_iter().unzip();
        if !owned.is_empty() {
            let theirs: Vec<(Uuid,)> = sqlx::query_as(
                "SELECT opportunity_id FROM opportunities WHERE customer_id = ANY($1)",
            )
            .bind(&owned)
            .fetch_all(&mut *conn)
            .await?;
            touched.extend(theirs.into_iter().map(|(id,)| id));
            touched.sort_unstable();
            touched.dedup();
        }
        if touched.is_empty() {
            return remember_owners(conn, &owned, &owner).await;
        }
        let mut before = Vec::with_capacity(totals::ALL.len());
        for t in totals::ALL {
            before.push(t.before(conn, &touched).await?);
        }
        remember_owners(conn, &owned, &owner).await?;
        write_opportunities(conn, folds).await?;
        sqlx::query("DELETE FROM stage_durations WHERE opportunity_id = ANY($1)")
            .bind(&touched)
            .execute(&mut *conn)
            .await?;
        sqlx::query("INSERT INTO stage_durations SELECT * FROM stage_durations_of($1)")
            .bind(&touched)
            .execute(&mut *conn)
            .await?;
        for (t, before) in totals::ALL.into_iter().zip(before) {
            t.after(conn, &touched, before).await?;
        }
        Ok(())
    }
}

/// Keeps the owners the batch gave its customers.
async fn remember_owners(
    conn: &mut PgConnection,
    customers: &[Uuid],
    owners: &[&str],
) -> Result<()> {
    if !customers.is_empty() {
        sqlx::query(
            "INSERT INTO pipeline_customers (customer_id, owner)
             SELECT * FROM unnest($1::uuid[], $2::text[])
             ON CONFLICT (customer_id) DO UPDATE SET owner = excluded.owner",
        )
        .bind(customers)
        .bind(owners)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Writes what the batch did to its opportunities and their stays.
async fn write_opportunities(
    conn: &mut PgConnection,
    folds: HashMap<Uuid, Fold<'_>>,
) -> Result<()> {
    if folds.is_empty() {
        return Ok(());
    }
    let mut new = NewRows::default();
    let mut changes = Changes::default();
    let (mut left_id, mut left_at, mut left_by) = (Vec::new(), Vec::new(), Vec::new());
    let mut stays = Stays::default();
    for (opportunity, mut f) in folds {
        if let Some(o) = f.opened.take() {
            new.push(opportunity, o);
        }
        changes.push(opportunity, &f);
        if let Some((at, by)) = f.left_open {
            left_id.push(opportunity);
            left_at.push(at);
            left_by.push(by);
        }
        for s in f.stays {
            stays.push(opportunity, s);
        }
    }
    if !new.id.is_empty() {
        sqlx::query(
            "INSERT INTO opportunities (opportunity_id, customer_id, title, source, amount,
                     currency, probability, expected_close, stage, stage_since, status, opened_at)
                 SELECT id, c, t, s, a, cur, p, ec, 'qualification', at, 'open', at
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[],
                               $6::text[], $7::smallint[], $8::date[], $9::timestamptz[])
                        AS n(id, c, t, s, a, cur, p, ec, at)",
        )
        .bind(&new.id)
        .bind(&new.customer)
        .bind(&new.title)
        .bind(&new.source)
        .bind(&new.amount)
        .bind(&new.currency)
        .bind(&new.probability)
        .bind(&new.expected_close)
        .bind(&new.at)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "UPDATE opportunities o SET
                 owner = coalesce(f.owner, o.owner),
                 stage = coalesce(f.stage, o.stage),
                 stage_since = coalesce(f.stage_since, o.stage_since),
                 probability = coalesce(f.probability, o.probability),
                 status = coalesce(f.status, o.status),
                 amount = coalesce(f.amount, o.amount),
                 currency = coalesce(f.currency, o.currency),
                 closed_at = CASE WHEN f.set_closed_at THEN f.closed_at ELSE o.closed_at END,
                 lost_reason = CASE WHEN f.set_lost_reason THEN f.lost_reason ELSE o.lost_reason END
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::smallint[],
                           $6::text[], $7::bigint[], $8::text[], $9::bool[], $10::timestamptz[],
                           $11::bool[], $12::text[])
                    AS f(id, owner, stage, stage_since, probability, status, amount, currency,
                         set_closed_at, closed_at, set_lost_reason, lost_reason)
              WHERE o.opportunity_id = f.id",
    )
    .bind(&changes.id)
    .bind(&changes.owner)
    .bind(&changes.stage)
    .bind(&changes.stage_since)
    .bind(&changes.probability)
    .bind(&changes.status)
    .bind(&changes.amount)
    .bind(&changes.currency)
    .bind(&changes.set_closed_at)
    .bind(&changes.closed_at)
    .bind(&changes.set_lost_reason)
    .bind(&changes.lost_reason)
    .execute(&mut *conn)
    .await?;
    // the stays open before the batch are left first: the new open stay may not coexist
    // with them (one open stay per opportunity)
    if !left_id.is_empty() {
        sqlx::query(
            "UPDATE stage_history h SET left_at = f.at, left_by = f.by
                   FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS f(id, at, by)
                  WHERE h.opportunity_id = f.id AND h.left_at IS NULL",
        )
        .bind(&left_id)
        .bind(&left_at)
        .bind(&left_by)
        .execute(&mut *conn)
        .await?;
    }
    if !stays.id.is_empty() {
        sqlx::query(
            "INSERT INTO stage_history (opportunity_id, entered_sequence, stage, entered_at,
                     left_at, left_by)
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[],
                                      $5::timestamptz[], $6::text[])",
        )
        .bind(&stays.id)
        .bind(&stays.sequence)
        .bind(&stays.stage)
        .bind(&stays.entered_at)
        .bind(&stays.left_at)
        .bind(&stays.left_by)
        .execute(conn)
        .await?;
    }
    Ok(())
}

#[derive(Default)]
struct NewRows<'a> {
    id: Vec<Uuid>,
    customer: Vec<Uuid>,
    title: Vec<&'a str>,
    source: Vec<&'a str>,
    amount: Vec<i64>,
    currency: Vec<&'a str>,
    probability: Vec<i16>,
    expected_close: Vec<NaiveDate>,
    at: Vec<DateTime<Utc>>,
}

impl<'a> NewRows<'a> {
    fn push(&mut self, id: Uuid, o: Opened<'a>) {
        self.id.push(id);
        self.customer.push(o.customer);
        self.title.push(o.title);
        self.source.push(o.source);
        self.amount.push(o.amount);
        self.currency.push(o.currency);
        self.probability.push(o.probability);
        self.expected_close.push(o.expected_close);
        self.at.push(o.at);
    }
}

#[derive(Default)]
struct Changes<'a> {
    id: Vec<Uuid>,
    owner: Vec<Option<&'a str>>,
    stage: Vec<Option<&'static str>>,
    stage_since: Vec<Option<DateTime<Utc>>>,
    probability: Vec<Option<i16>>,
    status: Vec<Option<&'static str>>,
    amount: Vec<Option<i64>>,
    currency: Vec<Option<&'a str>>,
    set_closed_at: Vec<bool>,
    closed_at: Vec<Option<DateTime<Utc>>>,
    set_lost_reason: Vec<bool>,
    lost_reason: Vec<Option<&'a str>>,
}

impl<'a> Changes<'a> {
    fn push(&mut self, id: Uuid, f: &Fold<'a>) {
        self.id.push(id);
        self.owner.push(f.owner);
        self.stage.push(f.stage);
        self.stage_since.push(f.stage_since);
        self.probability.push(f.probability);
        self.status.push(f.status);
        self.amount.push(f.value.map(|v| v.0));
        self.currency.push(f.value.map(|v| v.1));
        self.set_closed_at.push(f.closed_at.is_some());
        self.closed_at.push(f.closed_at.flatten());
        self.set_lost_reason.push(f.lost_reason.is_some());
        self.lost_reason.push(f.lost_reason.flatten());
    }
}

#[derive(Default)]
struct Stays {
    id: Vec<Uuid>,
    sequence: Vec<i64>,
    stage: Vec<&'static str>,
    entered_at: Vec<DateTime<Utc>>,
    left_at: Vec<Option<DateTime<Utc>>>,
    left_by: Vec<Option<&'static str>>,
}

impl Stays {
    fn push(&mut self, id: Uuid, s: Stay) {
        self.id.push(id);
        self.sequence.push(s.sequence);
        self.stage.push(s.stage);
        self.entered_at.push(s.entered_at);
        self.left_at.push(s.left.map(|l| l.0));
        self.left_by.push(s.left.map(|l| l.1));
    }
}
