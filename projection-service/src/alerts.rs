//! Stage-duration alerts (阶段滞留时间过长的报警). An alert is open while an open opportunity
//! has been in its current stage longer than that stage's threshold. Time passes without
//! events, so [`crate::Projector::sweep_alerts`] opens alerts at a given `now`; a stage change,
//! a win or a loss closes the open alert as it is applied (at the event's occurred-at). Every
//! change also goes to the `alert_outbox` table, in the same transaction, for the publisher
//! that puts it on the alerts topic.

use chrono::{DateTime, TimeDelta, Utc};
use domain::policy::StageThresholds;
use domain::Stage;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::error::Result;
use crate::version::begin_in;
use crate::Projector;

/// One alert, as stored and as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Alert {
    pub alert_id: Uuid,
    pub opportunity_id: Uuid,
    pub customer_id: Uuid,
    pub stage: String,
    pub stage_since: DateTime<Utc>,
    pub threshold_days: i32,
    pub due_at: DateTime<Utc>,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// `stage_changed`, `won` or `lost`.
    pub closed_by: Option<String>,
}

/// What a sweep or a batch did to the alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertChanges {
    pub opened: Vec<Alert>,
    pub closed: Vec<Alert>,
}

impl AlertChanges {
    pub fn is_empty(&self) -> bool {
        self.opened.is_empty() && self.closed.is_empty()
    }
}

/// An alert change waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    /// `opened` or `closed`.
    pub change: String,
    pub at: DateTime<Utc>,
    pub alert: Alert,
}

const ALERT_COLUMNS: &str = "alert_id, opportunity_id, customer_id, stage, stage_since, \
     threshold_days, due_at, opened_at, closed_at, closed_by";

async fn outbox(
    conn: &mut PgConnection,
    change: &str,
    at: DateTime<Utc>,
    alert: &Alert,
) -> Result<()> {
    sqlx::query("INSERT INTO alert_outbox (alert_id, change, at, payload) VALUES ($1, $2, $3, $4)")
        .bind(alert.alert_id)
        .bind(change)
        .bind(at)
        .bind(serde_json::to_value(alert)?)
        .execute(conn)
        .await?;
    Ok(())
}

/// Closes the open alert of each opportunity, if it has one, at the given time and for the
/// given reason (inside the batch's transaction), and puts each change in the outbox: two
/// statements whatever the count. The alerts closed are appended to `closed`, by closing time.
pub(crate) async fn close_open(
    conn: &mut PgConnection,
    opportunity_id: &[Uuid],
    at: &[DateTime<Utc>],
    closed_by: &[&str],
    closed: &mut Vec<Alert>,
) -> Result<()> {
    if opportunity_id.is_empty() {
        return Ok(());
    }
    let mut alerts: Vec<Alert> = sqlx::query_as(&format!(
        "UPDATE stage_alerts SET closed_at = f.at, closed_by = f.by
           FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS f(id, at, by)
          WHERE opportunity_id = f.id AND closed_at IS NULL
         RETURNING {ALERT_COLUMNS}"
    ))
    .bind(opportunity_id)
    .bind(at)
    .bind(closed_by)
    .fetch_all(&mut *conn)
    .await?;
    if alerts.is_empty() {
        return Ok(());
    }
    alerts.sort_by_key(|a| (a.closed_at, a.alert_id));
    let ids: Vec<Uuid> = alerts.iter().map(|a| a.alert_id).collect();
    let changes: Vec<&str> = alerts.iter().map(|_| "closed").collect();
    let times: Vec<Option<DateTime<Utc>>> = alerts.iter().map(|a| a.closed_at).collect();
    let payloads = alerts
        .iter()
        .map(serde_json::to_value)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    sqlx::query(
        "INSERT INTO alert_outbox (alert_id, change, at, payload)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::jsonb[])
          ORDER BY 3, 1",
    )
    .bind(&ids)
    .bind(&changes)
    .bind(&times)
    .bind(&payloads)
    .execute(conn)
    .await?;
    closed.extend(alerts);
    Ok(())
}

fn parse_stage(s: &str) -> Option<Stage> {
    Stage::ALL.into_iter().find(|st| st.as_str() == s)
}

impl Projector {
    /// Opens an alert for each open opportunity that has been in its current stage longer
    /// than its threshold at `now` and has no open alert yet. Returns the alerts opened (a
    /// sweep closes nothing: stage changes and endings close alerts as they are applied).
    /// Safe to run from several instances and beside batches: opportunities are locked
    /// (`SKIP LOCKED`: one that a batch is changing is left to the next sweep, so a sweep
    /// never waits for or deadlocks with a batch) and one alert at most is open per opportunity.
    pub async fn sweep_alerts(
        &self,
        now: DateTime<Utc>,
        thresholds: &StageThresholds,
    ) -> Result<AlertChanges> {
        let mut tx: Transaction<'static, Postgres> = begin_in(self.pool(), self.version()).await?;
        let shortest = Stage::ALL
            .into_iter()
            .map(|s| thresholds.threshold(s))
            .min()
            .unwrap_or(TimeDelta::zero());
        let candidates: Vec<(Uuid, Uuid, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT o.opportunity_id, o.customer_id, o.stage, o.stage_since
               FROM opportunities o
              WHERE o.status = 'open' AND o.stage_since < $1
                AND NOT EXISTS (SELECT 1 FROM stage_alerts a
                                 WHERE a.opportunity_id = o.opportunity_id AND a.closed_at IS NULL)
              ORDER BY o.stage_since, o.opportunity_id
                FOR UPDATE OF o SKIP LOCKED",
        )
        .bind(now - shortest)
        .fetch_all(&mut *tx)
        .await?;
        let mut changes = AlertChanges::default();
        for (opportunity_id, customer_id, stage_name, since) in candidates {
            let Some(stage) = parse_stage(&stage_name) else {
                continue;
            };
            if !thresholds.is_stuck(stage, since, now) {
                continue;
            }
            let days = i32::try_from(thresholds.days(stage)).unwrap_or(i32::MAX);
            let alert: Option<Alert> = sqlx::query_as(&format!(
                "INSERT INTO stage_alerts ({ALERT_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL)
                 ON CONFLICT (opportunity_id) WHERE closed_at IS NULL DO NOTHING
                 RETURNING {ALERT_COLUMNS}"
            ))
            .bind(Uuid::now_v7())
            .bind(opportunity_id)
            .bind(customer_id)
            .bind(&stage_name)
            .bind(since)
            .bind(days)
            .bind(thresholds.due_at(stage, since))
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(alert) = alert {
                outbox(&mut tx, "opened", now, &alert).await?;
                changes.opened.push(alert);
            }
        }
        tx.commit().await?;
        Ok(changes)
    }

    /// The alerts open now.
    pub async fn open_alerts(&self) -> Result<Vec<Alert>> {
        let mut tx = begin_in(self.pool(), self.version()).await?;
        let alerts = sqlx::query_as(&format!(
            "SELECT {ALERT_COLUMNS} FROM stage_alerts WHERE closed_at IS NULL ORDER BY opened_at, alert_id"
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(alerts)
    }

    /// Every alert, open or closed, oldest first.
    pub async fn all_alerts(&self) -> Result<Vec<Alert>> {
        let mut tx = begin_in(self.pool(), self.version()).await?;
        let alerts = sqlx::query_as(&format!(
            "SELECT {ALERT_COLUMNS} FROM stage_alerts ORDER BY opened_at, alert_id"
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(alerts)
    }

    /// Alert changes not yet published, oldest first.
    pub async fn unpublished_alert_changes(&self, limit: i64) -> Result<Vec<OutboxEntry>> {
        let mut tx = begin_in(self.pool(), self.version()).await?;
        let rows: Vec<(i64, String, DateTime<Utc>, serde_json::Value)> = sqlx::query_as(
            "SELECT id, change, at, payload FROM alert_outbox WHERE published_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|(id, change, at, payload)| {
                Ok(OutboxEntry {
                    id,
                    change,
                    at,
                    alert: serde_json::from_value(payload)?,
                })
            })
            .collect()
    }

    /// Marks outbox entries as published (after the alerts topic acknowledged them).
    pub async fn mark_alert_changes_published(&self, ids: &[i64]) -> Result<()> {
        let mut tx = begin_in(self.pool(), self.version()).await?;
        sqlx::query("UPDATE alert_outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL")
            .bind(ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
