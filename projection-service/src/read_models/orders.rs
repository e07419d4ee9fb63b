//! Orders (the source of RFM and the customer's order totals): one row per order, written with
//! one statement per batch.

use async_trait::async_trait;
use domain::CustomerEvent as E;
use sqlx::PgConnection;

use super::{to_i64, Batch, Effects, EventRef, ReadModel};
use crate::error::Result;

pub(crate) struct Orders;

#[async_trait]
impl ReadModel for Orders {
    fn name(&self) -> &'static str {
        "orders"
    }

    fn consumes(&self, event: EventRef<'_>) -> bool {
        matches!(event.customer_event(), Some(E::OrderPlaced(_)))
    }

    fn tables(&self) -> &'static [&'static str] {
        &["orders"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        _: &mut Effects,
    ) -> Result<()> {
        let mut customer = Vec::new();
        let mut number = Vec::new();
        let mut ordered_at = Vec::new();
        let mut amount = Vec::new();
        let mut currency = Vec::new();
        let mut lines = Vec::new();
        let mut sequence = Vec::new();
        for (_, r) in batch.customer_events() {
            if let E::OrderPlaced(e) = &r.event {
                customer.push(r.metadata.customer_id.as_uuid());
                number.push(e.order_number.0.as_str());
                ordered_at.push(r.metadata.occurred_at);
                amount.push(e.total.amount);
                currency.push(e.total.currency.as_str());
                lines.push(serde_json::to_value(&e.lines)?);
                sequence.push(to_i64(r.metadata.sequence, "sequence")?);
            }
        }
        if customer.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO orders (customer_id, order_number, ordered_at, amount, currency, lines, sequence)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::bigint[],
                 $5::text[], $6::jsonb[], $7::bigint[])",
        )
        .bind(&customer)
        .bind(&number)
        .bind(&ordered_at)
        .bind(&amount)
        .bind(&currency)
        .bind(&lines)
        .bind(&sequence)
        .execute(conn)
        .await?;
        Ok(())
    }
}
