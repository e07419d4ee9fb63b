//! Typed reads of one projection version's read models: what the query-service and the tests
//! use. Every query names the version's schema.

use chrono::{DateTime, NaiveDate, Utc};
use domain::policy::ChurnRule;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Result;
use crate::version::ProjectionVersion;

/// Reads of one projection version.
#[derive(Debug, Clone)]
pub struct ReadModels {
    pool: PgPool,
    schema: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub contact_id: Uuid,
    pub name: String,
    pub gender: Option<String>,
    pub position: Option<String>,
    pub office_phone: Option<String>,
    pub mobile: Option<String>,
    pub email: Option<String>,
    pub memo: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStat {
    pub channel: String,
    pub touchpoints: i64,
    pub last_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenOpportunity {
    pub opportunity_id: Uuid,
    pub title: String,
    pub stage: String,
    pub stage_since: DateTime<Utc>,
    pub amount: i64,
    pub currency: String,
    pub probability: i16,
    pub owner: Option<String>,
}

/// One customer's 360° view.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Customer360 {
    pub customer_id: Uuid,
    pub kind: String,
    pub number: Option<String>,
    pub name: String,
    pub region: String,
    pub industry: String,
    pub level: String,
    pub credit: i16,
    pub satisfaction: i16,
    pub registration: serde_json::Value,
    pub owner: String,
    pub registered_at: DateTime<Utc>,
    pub churn_status: String,
    pub churn_case_id: Option<Uuid>,
    pub order_count: i64,
    /// Lifetime order value, minor units.
    pub order_total: i64,
    pub last_order_at: Option<DateTime<Utc>>,
    pub last_sequence: i64,
    pub last_event_at: DateTime<Utc>,
    pub contacts: Json<Vec<Contact>>,
    pub touchpoints: Json<Vec<ChannelStat>>,
    pub open_opportunities: Json<Vec<OpenOpportunity>>,
    pub open_service_requests: i64,
    pub open_complaints: i64,
    pub recency_days: Option<i32>,
    pub frequency: Option<i32>,
    pub monetary: Option<i64>,
    pub r: Option<i16>,
    pub f: Option<i16>,
    pub m: Option<i16>,
    pub segment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TimelineEntry {
    pub customer_id: Uuid,
    pub sequence: i64,
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub event_type: String,
    /// `touchpoint` or `state_change`.
    pub category: String,
    pub channel: Option<String>,
    pub direction: Option<String>,
    pub summary: String,
    pub actor: String,
    pub subject_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Opportunity {
    pub opportunity_id: Uuid,
    pub customer_id: Uuid,
    pub title: String,
    pub source: String,
    pub amount: i64,
    pub currency: String,
    pub probability: i16,
    pub expected_close: NaiveDate,
    pub owner: Option<String>,
    pub stage: String,
    pub stage_since: DateTime<Utc>,
    pub status: String,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub lost_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct StageStay {
    pub opportunity_id: Uuid,
    pub entered_sequence: i64,
    pub stage: String,
    pub entered_at: DateTime<Utc>,
    pub left_at: Option<DateTime<Utc>>,
    pub left_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StageTime {
    pub opportunity_id: Uuid,
    pub stage: String,
    pub visits: i64,
    pub latest_entered_at: DateTime<Utc>,
    pub latest_seconds: f64,
    pub cumulative_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct FunnelStage {
    pub ord: i32,
    pub stage: String,
    pub open_count: i64,
    pub open_amount: i64,
    pub reached_count: i64,
    pub conversion_to_next: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct PipelineSummary {
    pub open_count: i64,
    pub won_count: i64,
    pub lost_count: i64,
    pub win_rate: Option<f64>,
    pub avg_sales_cycle_days: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ForecastRow {
    pub month: NaiveDate,
    pub owner: Option<String>,
    pub opportunities: i64,
    pub amount: i64,
    pub weighted_amount: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub event_id: Uuid,
    pub customer_id: Uuid,
    pub sequence: i64,
    pub event_type: String,
    pub source: String,
    pub actor: String,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub changes: serde_json::Value,
    pub command: Option<String>,
    pub command_id: Option<String>,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct RfmRow {
    pub customer_id: Uuid,
    pub recency_days: i32,
    pub frequency: i32,
    pub monetary: i64,
    pub r: i16,
    pub f: i16,
    pub m: i16,
    pub segment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SegmentSize {
    pub segment: String,
    pub customers: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ChurnCase {
    pub churn_case_id: Uuid,
    pub customer_id: Uuid,
    /// `at_risk`, `lost` or `reactivated`.
    pub status: String,
    pub warned_at: DateTime<Utc>,
    pub warning_reason: String,
    pub last_order_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub confirmed_reason: Option<String>,
    pub reactivated_at: Option<DateTime<Utc>>,
    pub reactivation_reason: Option<String>,
    /// The delaying measures, in order.
    pub measures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ChurnCandidate {
    pub customer_id: Uuid,
    pub name: String,
    pub owner: String,
    pub last_order_at: Option<DateTime<Utc>>,
    pub customer_since: DateTime<Utc>,
    pub churn_status: String,
}

/// A sales team of the organisation stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TeamRow {
    pub team_id: Uuid,
    pub name: String,
    pub director: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub last_sequence: i64,
    /// Sorted.
    pub members: Vec<String>,
}

impl ReadModels {
    pub fn new(pool: PgPool, version: &ProjectionVersion) -> Self {
        ReadModels {
            pool,
            schema: version.schema(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema, for queries built elsewhere (validated: safe to splice).
    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub async fn customer_360(&self, customer_id: Uuid) -> Result<Option<Customer360>> {
        Ok(sqlx::query_as(&format!(
            "SELECT * FROM {}.customer_360 WHERE customer_id = $1",
            self.schema
        ))
        .bind(customer_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every customer's 360° view, by customer id.
    pub async fn customers_360(&self) -> Result<Vec<Customer360>> {
        Ok(sqlx::query_as(&format!(
            "SELECT * FROM {}.customer_360 ORDER BY customer_id",
            self.schema
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// A page of a customer's timeline in business-time order, after the entry `after`
    /// (occurred_at, sequence) when given.
    pub async fn timeline(
        &self,
        customer_id: Uuid,
        after: Option<(DateTime<Utc>, i64)>,
        limit: i64,
    ) -> Result<Vec<TimelineEntry>> {
        let (at, seq) = match after {
            Some((at, seq)) => (Some(at), seq),
            None => (None, 0),
        };
        Ok(sqlx::query_as(&format!(
            "SELECT * FROM {}.timeline
              WHERE customer_id = $1 AND ($2::timestamptz IS NULL OR (occurred_at, sequence) > ($2, $3))
              ORDER BY occurred_at, sequence LIMIT $4",
            self.schema
        ))
        .bind(customer_id)
        .bind(at)
        .bind(seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn opportunities(&self) -> Result<Vec<Opportunity>> {
        Ok(sqlx::query_as(&format!(
            "SELECT * FROM {}.opportunities ORDER BY opportunity_id",
            self.schema
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Stays in stages, per opportunity in order.
    pub async fn stage_history(&self) -> Result<Vec<StageStay>> {
        Ok(sqlx::query_as(&format!(
            "SELECT * FROM {}.stage_history ORDER BY opportunity_id, entered_sequence",
            self.schema
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Latest and cumulative time per opportunity and stage, stays in progress measured to `as_of`.
    pub async fn stage_times(&self, as_of: DateTime<Utc>) -> Result<Vec<StageTime>> {
        Ok(sqlx::query_as(&format!(
            "SELECT * FROM {}.stage_times($1) ORDER BY opportunity_id, stage",
            self.schema
        ))
        .bind(as_of)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn funnel(&self) -> Result<Vec<FunnelStage>> {
        Ok(sqlx::query_as(&format!(
            "SELECT * FROM {}.funnel ORDER BY ord",
            self.schema
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn pipeline_summary(&self) -> Result<PipelineSummary> {
        Ok(
            sqlx::query_as(&format!("SELECT * FROM {}.pipeline_summary", self.schema))
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn weighted_forecast(&self) -> Result<Vec<ForecastRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT * FROM {}.weighted_forecast ORDER BY month, owner NULLS FIRST",
            self.schema
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// The audit trail of a customer (all customers when `None`), in stream order.
    pub async fn audit_trail(&self, customer_id: Option<Uuid>) -> Result<Vec<AuditEntry>> {
        Ok(sqlx::query_as(&format!(
            "SELECT * FROM {}.audit_trail WHERE $1::uuid IS NULL OR customer_id = $1
              ORDER BY customer_id, sequence",
            self.schema
        ))
        .bind(customer_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every team with its director and members, by team id.
    pub async fn teams(&self) -> Result<Vec<TeamRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT t.team_id, t.name, t.director, t.created_at, t.last_sequence,
                    coalesce((SELECT array_agg(m.member ORDER BY m.member)
                                FROM {s}.team_members m WHERE m.team_id = t.team_id), '{{}}') AS members
               FROM {s}.teams t ORDER BY t.team_id",
            s = self.schema
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn rfm(&self) -> Result<Vec<RfmRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT * FROM {}.rfm ORDER BY customer_id",
            self.schema
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn segment_sizes(&self) -> Result<Vec<SegmentSize>> {
        Ok(sqlx::query_as(&format!(
            "SELECT segment, customers FROM {}.rfm_segment_sizes ORDER BY segment",
            self.schema
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn churn_cases(&self) -> Result<Vec<ChurnCase>> {
        Ok(sqlx::query_as(&format!(
            "SELECT c.*, coalesce((SELECT array_agg(m.measure ORDER BY m.sequence)
                                     FROM {s}.churn_measures m
                                    WHERE m.churn_case_id = c.churn_case_id), '{{}}') AS measures
               FROM {s}.churn_cases c ORDER BY c.customer_id, c.warned_at, c.churn_case_id",
            s = self.schema
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Customers matching the churn rule at `now`: registered by then, and no order in the
    /// `rule.inactivity_days` days before it (measured from registration when they never
    /// ordered), whatever their churn status (it is returned too).
    pub async fn churn_candidates(
        &self,
        now: DateTime<Utc>,
        rule: ChurnRule,
    ) -> Result<Vec<ChurnCandidate>> {
        let days = i32::try_from(rule.inactivity_days).unwrap_or(i32::MAX);
        Ok(sqlx::query_as(&format!(
            "SELECT c.customer_id, c.name, c.owner, lo.last_order_at,
                    c.registered_at AS customer_since, c.churn_status
               FROM {s}.customers c
               LEFT JOIN LATERAL (SELECT max(o.ordered_at) AS last_order_at FROM {s}.orders o
                                   WHERE o.customer_id = c.customer_id AND o.ordered_at <= $1) lo ON true
              WHERE c.registered_at <= $1
                AND coalesce(lo.last_order_at, c.registered_at) < $1 - make_interval(days => $2)
              ORDER BY c.customer_id",
            s = self.schema
        ))
        .bind(now)
        .bind(days)
        .fetch_all(&self.pool)
        .await?)
    }
}
