//! The four reports of the reference system (统计报表): contribution, composition, service and
//! churn. Periods are half-open, `[from, to)`, in business time.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::error::Result;
use crate::read::ReadModels;

/// Customer contribution (客户贡献分析): order amount per customer over a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Contribution {
    pub customer_id: Uuid,
    pub name: String,
    pub orders: i64,
    /// Minor units.
    pub amount: i64,
}

/// Customer composition (客户构成分析): how many customers have each value of a dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct CompositionRow {
    /// `level`, `credit` or `satisfaction`.
    pub dimension: String,
    pub value: String,
    pub customers: i64,
}

/// Customer service (客户服务分析): service requests created per type over a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ServiceRow {
    pub kind: String,
    pub requests: i64,
}

/// Customer churn (客户流失分析): lost customers and the reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LostCustomer {
    pub customer_id: Uuid,
    pub name: String,
    pub owner: String,
    pub churn_case_id: Uuid,
    pub warned_at: DateTime<Utc>,
    pub confirmed_at: DateTime<Utc>,
    pub reason: String,
    pub measures: Vec<String>,
}

impl ReadModels {
    /// Order amount and count per customer with orders in `[from, to)`, largest first.
    pub async fn contribution_report(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Contribution>> {
        Ok(sqlx::query_as(&format!(
            "SELECT o.customer_id, coalesce(c.name, '') AS name, count(*) AS orders,
                    sum(o.amount)::bigint AS amount
               FROM {s}.orders o LEFT JOIN {s}.customers c USING (customer_id)
              WHERE o.ordered_at >= $1 AND o.ordered_at < $2
              GROUP BY o.customer_id, c.name
              ORDER BY amount DESC, o.customer_id",
            s = self.schema()
        ))
        .bind(from)
        .bind(to)
        .fetch_all(self.pool())
        .await?)
    }

    /// Customer counts by level, by credit and by satisfaction (values with no customer are
    /// left out), ordered by dimension and value.
    pub async fn composition_report(&self) -> Result<Vec<CompositionRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT dimension, value, customers FROM (
                 SELECT 'level' AS dimension, level AS value, count(*) AS customers, 0 AS k
                   FROM {s}.customers GROUP BY level
                 UNION ALL
                 SELECT 'credit', credit::text, count(*), 1 FROM {s}.customers GROUP BY credit
                 UNION ALL
                 SELECT 'satisfaction', satisfaction::text, count(*), 2 FROM {s}.customers GROUP BY satisfaction
             ) t ORDER BY k, value",
            s = self.schema()
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// Service requests created in `[from, to)` per type; every type is listed.
    pub async fn service_report(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<ServiceRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT k.kind, count(s.service_request_id) AS requests
               FROM (VALUES ('consultation'), ('complaint'), ('suggestion')) AS k(kind)
               LEFT JOIN {s}.service_requests s
                      ON s.kind = k.kind AND s.created_at >= $1 AND s.created_at < $2
              GROUP BY k.kind ORDER BY k.kind",
            s = self.schema()
        ))
        .bind(from)
        .bind(to)
        .fetch_all(self.pool())
        .await?)
    }

    /// Customers whose loss was confirmed in `[from, to)` (and not reactivated since), with
    /// the reason and the delaying measures tried.
    pub async fn churn_report(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<LostCustomer>> {
        Ok(sqlx::query_as(&format!(
            "SELECT k.customer_id, c.name, c.owner, k.churn_case_id, k.warned_at, k.confirmed_at,
                    k.confirmed_reason AS reason,
                    coalesce((SELECT array_agg(m.measure ORDER BY m.sequence) FROM {s}.churn_measures m
                               WHERE m.churn_case_id = k.churn_case_id), '{{}}') AS measures
               FROM {s}.churn_cases k JOIN {s}.customers c USING (customer_id)
              WHERE k.status = 'lost' AND k.confirmed_at >= $1 AND k.confirmed_at < $2
              ORDER BY k.confirmed_at, k.customer_id",
            s = self.schema()
        ))
        .bind(from)
        .bind(to)
        .fetch_all(self.pool())
        .await?)
    }
}
