//! RFM (recency, frequency, monetary), computed with the domain's one definition
//! ([`domain::policy::rfm`]) from the `orders` table. Scores are relative to every other
//! customer and recency moves with time, so the table is rebuilt as a whole: after orders
//! arrive ([`Projector::rfm_stale`] tells) and on a schedule.

use chrono::{DateTime, TimeDelta, Utc};
use domain::policy::rfm::{rfm_inputs, score_rfm, RfmWindow};
use domain::CustomerId;
use uuid::Uuid;

use crate::error::{ProjectionError, Result};
use crate::Projector;

/// What a recompute did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RfmRun {
    pub as_of: DateTime<Utc>,
    pub window_days: u32,
    /// Customers with at least one order in the window.
    pub scored: usize,
}

impl Projector {
    /// Rebuilds the `rfm` table from the orders as of `as_of` (orders in the window ending at
    /// `as_of` count). One consistent snapshot of the orders; concurrent batches are not
    /// blocked.
    pub async fn recompute_rfm(&self, as_of: DateTime<Utc>, window: RfmWindow) -> Result<RfmRun> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
        // one recompute at a time (readers are not blocked); taken before the snapshot
        sqlx::query(&format!(
            "LOCK TABLE {}.rfm IN EXCLUSIVE MODE",
            self.version().schema()
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT set_config('search_path', $1, true)")
            .bind(self.version().schema())
            .execute(&mut *tx)
            .await?;
        let (orders_version,): (i64,) = sqlx::query_as(
            "SELECT coalesce(sum(orders_version), 0)::bigint FROM rfm_order_versions",
        )
        .fetch_one(&mut *tx)
        .await?;
        let orders: Vec<(Uuid, DateTime<Utc>, i64)> = sqlx::query_as(
            "SELECT customer_id, ordered_at, amount FROM orders WHERE ordered_at <= $1 AND ordered_at > $2",
        )
        .bind(as_of)
        .bind(as_of - TimeDelta::days(i64::from(window.days)) - TimeDelta::days(1))
        .fetch_all(&mut *tx)
        .await?;
        let inputs = rfm_inputs(
            orders
                .into_iter()
                .map(|(c, at, amount)| (CustomerId(c), at, amount)),
            as_of,
            window,
        );
        let scores = score_rfm(&inputs);

        let mut ids = Vec::with_capacity(scores.len());
        let mut recency = Vec::with_capacity(scores.len());
        let mut frequency = Vec::with_capacity(scores.len());
        let mut monetary = Vec::with_capacity(scores.len());
        let (mut r, mut f, mut m) = (Vec::new(), Vec::new(), Vec::new());
        let mut segment = Vec::with_capacity(scores.len());
        for s in &scores {
            ids.push(s.input.customer_id.as_uuid());
            recency.push(to_i32(s.input.recency_days)?);
            frequency.push(to_i32(s.input.frequency)?);
            monetary.push(s.input.monetary);
            r.push(i16::from(s.r));
            f.push(i16::from(s.f));
            m.push(i16::from(s.m));
            segment.push(s.segment.as_str());
        }
        sqlx::query("DELETE FROM rfm").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO rfm (customer_id, recency_days, frequency, monetary, r, f, m, segment)
             SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::bigint[],
                                  $5::smallint[], $6::smallint[], $7::smallint[], $8::text[])",
        )
        .bind(&ids)
        .bind(&recency)
        .bind(&frequency)
        .bind(&monetary)
        .bind(&r)
        .bind(&f)
        .bind(&m)
        .bind(&segment)
        .execute(&mut *tx)
        .await?;
        let window_days = i32::try_from(window.days)
            .map_err(|_| ProjectionError::OutOfRange(format!("window {}", window.days)))?;
        let scored = i32::try_from(scores.len())
            .map_err(|_| ProjectionError::OutOfRange("scored".into()))?;
        sqlx::query(
            "INSERT INTO rfm_runs (id, as_of, window_days, orders_version, scored)
             VALUES (true, $1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET as_of = EXCLUDED.as_of, window_days = EXCLUDED.window_days,
                 orders_version = EXCLUDED.orders_version, scored = EXCLUDED.scored",
        )
        .bind(as_of)
        .bind(window_days)
        .bind(orders_version)
        .bind(scored)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // every row was rewritten: the planner's statistics of the segments (which the segment
        // pages' plans depend on) are renewed now rather than when autovacuum comes by
        sqlx::query(&format!("ANALYZE {}.rfm", self.version().schema()))
            .execute(self.pool())
            .await?;
        Ok(RfmRun {
            as_of,
            window_days: window.days,
            scored: scores.len(),
        })
    }

    /// Whether orders arrived since the last recompute (or there was none).
    pub async fn rfm_stale(&self) -> Result<bool> {
        let schema = self.version().schema();
        let (stale,): (bool,) = sqlx::query_as(&format!(
            "SELECT coalesce((SELECT r.orders_version FROM {schema}.rfm_runs r)
                           < (SELECT coalesce(sum(orders_version), 0) FROM {schema}.rfm_order_versions), true)"
        ))
        .fetch_one(self.pool())
        .await?;
        Ok(stale)
    }
}

fn to_i32(v: i64) -> Result<i32> {
    i32::try_from(v).map_err(|_| ProjectionError::OutOfRange(format!("rfm value {v}")))
}
