//! How each event changes the read models. Runs inside the batch's transaction, whose
//! `search_path` is the projection version's schema. All times are business time
//! (occurred-at).

use chrono::{DateTime, Utc};
use domain::organisation::{organisation_stream, OrganisationEvent as O};
use domain::policy::SATISFIED_FROM;
use domain::{CustomerEvent as E, RecordedEvent, RecordedOrganisationEvent};
use infra::Position;
use sqlx::{PgConnection, Postgres, Transaction};

use crate::alerts::{close_open, Alert};
use crate::describe::{complaint_category, describe, gender, kind, priority};
use crate::error::{ProjectionError, Result};

/// What a batch did besides its rows.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub orders_changed: bool,
    pub alerts_closed: Vec<Alert>,
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| ProjectionError::OutOfRange(format!("{what} {v}")))
}

pub(crate) async fn apply_event(
    tx: &mut Transaction<'static, Postgres>,
    pos: &Position,
    rec: &RecordedEvent,
    effects: &mut Effects,
) -> Result<()> {
    let conn: &mut PgConnection = tx;
    let m = &rec.metadata;
    let seq = to_i64(m.sequence, "sequence")?;
    let at = m.occurred_at;
    let customer = m.customer_id.as_uuid();

    // audit trail: one row per event
    sqlx::query(
        r#"INSERT INTO audit_trail (event_id, customer_id, sequence, event_type, source, actor,
               occurred_at, recorded_at, changes, command, command_id, correlation_id,
               causation_id, topic, "partition", "offset")
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"#,
    )
    .bind(m.id)
    .bind(customer)
    .bind(seq)
    .bind(rec.event.event_type())
    .bind(&m.source)
    .bind(&m.actor)
    .bind(at)
    .bind(m.recorded_at)
    .bind(rec.event.to_value()?)
    .bind(&m.command)
    .bind(&m.command_id)
    .bind(m.correlation_id)
    .bind(m.causation_id)
    .bind(&pos.topic)
    .bind(pos.partition)
    .bind(pos.offset)
    .execute(&mut *conn)
    .await?;

    // timeline: one row per event, read in (occurred_at, sequence) order
    let line = describe(&rec.event);
    sqlx::query(
        "INSERT INTO timeline (customer_id, sequence, event_id, occurred_at, event_type, category,
             channel, direction, summary, actor, subject_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(customer)
    .bind(seq)
    .bind(m.id)
    .bind(at)
    .bind(rec.event.event_type())
    .bind(line.category)
    .bind(line.channel)
    .bind(line.direction)
    .bind(&line.summary)
    .bind(&m.actor)
    .bind(&line.subject_id)
    .execute(&mut *conn)
    .await?;

    apply_body(conn, rec, seq, at, effects).await?;

    sqlx::query(
        "UPDATE customers SET last_sequence = greatest(last_sequence, $2),
                              last_event_at = greatest(last_event_at, $3)
          WHERE customer_id = $1",
    )
    .bind(customer)
    .bind(seq)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An event of the organisation stream: the teams read model, and the audit trail (under the
/// organisation stream's id, the nil UUID, with its own sequence).
pub(crate) async fn apply_organisation_event(
    tx: &mut Transaction<'static, Postgres>,
    pos: &Position,
    rec: &RecordedOrganisationEvent,
) -> Result<()> {
    let conn: &mut PgConnection = tx;
    let m = &rec.metadata;
    let seq = to_i64(m.sequence, "sequence")?;
    let at = m.occurred_at;

    sqlx::query(
        r#"INSERT INTO audit_trail (event_id, customer_id, sequence, event_type, source, actor,
               occurred_at, recorded_at, changes, command, command_id, correlation_id,
               causation_id, topic, "partition", "offset")
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"#,
    )
    .bind(m.id)
    .bind(organisation_stream().as_uuid())
    .bind(seq)
    .bind(rec.event.event_type())
    .bind(&m.source)
    .bind(&m.actor)
    .bind(at)
    .bind(m.recorded_at)
    .bind(rec.event.to_value()?)
    .bind(&m.command)
    .bind(&m.command_id)
    .bind(m.correlation_id)
    .bind(m.causation_id)
    .bind(&pos.topic)
    .bind(pos.partition)
    .bind(pos.offset)
    .execute(&mut *conn)
    .await?;

    let team = rec.event.team_id().0;
    // Every event makes sure the team's row exists (as `evolve_organisation` does), so a
    // member or director event is never lost whatever came before it.
    sqlx::query(
        "INSERT INTO teams (team_id, last_sequence, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (team_id) DO UPDATE SET
             last_sequence = greatest(teams.last_sequence, EXCLUDED.last_sequence),
             updated_at = greatest(teams.updated_at, EXCLUDED.updated_at)",
    )
    .bind(team)
    .bind(seq)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    match &rec.event {
        O::TeamCreated(e) => {
            sqlx::query("UPDATE teams SET name = $2, created_at = $3 WHERE team_id = $1")
                .bind(team)
                .bind(&e.name)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
        O::TeamDirectorAssigned(e) => {
            sqlx::query("UPDATE teams SET director = $2 WHERE team_id = $1")
                .bind(team)
                .bind(e.director.as_str())
                .execute(&mut *conn)
                .await?;
        }
        O::TeamMemberAdded(e) => {
            sqlx::query(
                "INSERT INTO team_members (team_id, member, added_at) VALUES ($1, $2, $3)
                 ON CONFLICT (team_id, member) DO NOTHING",
            )
            .bind(team)
            .bind(e.member.as_str())
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        O::TeamMemberRemoved(e) => {
            sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND member = $2")
                .bind(team)
                .bind(e.member.as_str())
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

async fn apply_body(
    conn: &mut PgConnection,
    rec: &RecordedEvent,
    seq: i64,
    at: DateTime<Utc>,
    effects: &mut Effects,
) -> Result<()> {
    let customer = rec.metadata.customer_id.as_uuid();
    match &rec.event {
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
        E::ContactAdded(e) => {
            let c = &e.contact;
            sqlx::query(
                "INSERT INTO contacts (customer_id, contact_id, name, gender, position, office_phone,
                     mobile, email, memo, added_sequence)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (customer_id, contact_id) DO UPDATE SET
                     name = EXCLUDED.name, gender = EXCLUDED.gender, position = EXCLUDED.position,
                     office_phone = EXCLUDED.office_phone, mobile = EXCLUDED.mobile,
                     email = EXCLUDED.email, memo = EXCLUDED.memo,
                     added_sequence = EXCLUDED.added_sequence",
            )
            .bind(customer)
            .bind(e.contact_id.as_uuid())
            .bind(&c.name)
            .bind(c.gender.map(gender))
            .bind(&c.position)
            .bind(&c.office_phone)
            .bind(&c.mobile)
            .bind(&c.email)
            .bind(&c.memo)
            .bind(seq)
            .execute(conn)
            .await?;
        }
        E::ContactChanged(e) => {
            let c = &e.changes;
            sqlx::query(
                "UPDATE contacts SET name = coalesce($3, name), gender = coalesce($4, gender),
                     position = coalesce($5, position), office_phone = coalesce($6, office_phone),
                     mobile = coalesce($7, mobile), email = coalesce($8, email),
                     memo = coalesce($9, memo)
                  WHERE customer_id = $1 AND contact_id = $2",
            )
            .bind(customer)
            .bind(e.contact_id.as_uuid())
            .bind(&c.name)
            .bind(c.gender.map(gender))
            .bind(&c.position)
            .bind(&c.office_phone)
            .bind(&c.mobile)
            .bind(&c.email)
            .bind(&c.memo)
            .execute(conn)
            .await?;
        }
        E::ContactRemoved(e) => {
            sqlx::query("DELETE FROM contacts WHERE customer_id = $1 AND contact_id = $2")
                .bind(customer)
                .bind(e.contact_id.as_uuid())
                .execute(conn)
                .await?;
        }
        E::TouchpointRecorded(e) => {
            sqlx::query(
                "INSERT INTO touchpoint_stats (customer_id, channel, touchpoints, last_at)
                 VALUES ($1, $2, 1, $3)
                 ON CONFLICT (customer_id, channel) DO UPDATE SET
                     touchpoints = touchpoint_stats.touchpoints + 1,
                     last_at = greatest(touchpoint_stats.last_at, EXCLUDED.last_at)",
            )
            .bind(customer)
            .bind(e.touchpoint.channel.name())
            .bind(at)
            .execute(conn)
            .await?;
        }
        E::ComplaintLodged(e) => {
            sqlx::query(
                "INSERT INTO complaints (complaint_id, customer_id, category, sub_category, urgency,
                     importance, status, lodged_at)
                 VALUES ($1, $2, $3, $4, $5, $6, 'lodged', $7)",
            )
            .bind(e.complaint_id.as_uuid())
            .bind(customer)
            .bind(complaint_category(e.category))
            .bind(&e.sub_category)
            .bind(priority(e.urgency))
            .bind(priority(e.importance))
            .bind(at)
            .execute(conn)
            .await?;
        }
        E::ComplaintHandled(e) => {
            sqlx::query(
                "UPDATE complaints SET status = 'handled', handled_at = $2 WHERE complaint_id = $1",
            )
            .bind(e.complaint_id.as_uuid())
            .bind(at)
            .execute(conn)
            .await?;
        }
        E::ComplaintClosed(e) => {
            sqlx::query(
                "UPDATE complaints SET status = 'closed', closed_at = $2 WHERE complaint_id = $1",
            )
            .bind(e.complaint_id.as_uuid())
            .bind(at)
            .execute(conn)
            .await?;
        }
        E::OpportunityOpened(e) => {
            let opportunity = e.opportunity_id.as_uuid();
            sqlx::query(
                "INSERT INTO opportunities (opportunity_id, customer_id, title, source, amount,
                     currency, probability, expected_close, stage, stage_since, status, opened_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'qualification', $9, 'open', $9)",
            )
            .bind(opportunity)
            .bind(customer)
            .bind(&e.title)
            .bind(&e.source)
            .bind(e.value.amount)
            .bind(&e.value.currency)
            .bind(i16::from(e.probability))
            .bind(e.expected_close)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            enter_stage(conn, opportunity, seq, "qualification", at).await?;
        }
        E::OpportunityAssigned(e) => {
            sqlx::query("UPDATE opportunities SET owner = $2 WHERE opportunity_id = $1")
                .bind(e.opportunity_id.as_uuid())
                .bind(e.owner.as_str())
                .execute(conn)
                .await?;
        }
        E::OpportunityStageChanged(e) => {
            let opportunity = e.opportunity_id.as_uuid();
            let left_by = if e.to > e.from {
                "advanced"
            } else {
                "moved_back"
            };
            leave_stage(conn, opportunity, at, left_by).await?;
            enter_stage(conn, opportunity, seq, e.to.as_str(), at).await?;
            sqlx::query(
                "UPDATE opportunities SET stage = $2, stage_since = $3,
                     probability = coalesce($4, probability)
                  WHERE opportunity_id = $1",
            )
            .bind(opportunity)
            .bind(e.to.as_str())
            .bind(at)
            .bind(e.probability.map(i16::from))
            .execute(&mut *conn)
            .await?;
            close_open(
                conn,
                opportunity,
                at,
                "stage_changed",
                &mut effects.alerts_closed,
            )
            .await?;
        }
        E::PlanItemAdded(_) | E::PlanResultRecorded(_) => {}
        E::OpportunityWon(e) => {
            let opportunity = e.opportunity_id.as_uuid();
            leave_stage(conn, opportunity, at, "won").await?;
            sqlx::query(
                "UPDATE opportunities SET status = 'won', amount = $2, currency = $3, closed_at = $4,
                     lost_reason = NULL
                  WHERE opportunity_id = $1",
            )
            .bind(opportunity)
            .bind(e.value.amount)
            .bind(&e.value.currency)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            close_open(conn, opportunity, at, "won", &mut effects.alerts_closed).await?;
        }
        E::OpportunityLost(e) => {
            let opportunity = e.opportunity_id.as_uuid();
            leave_stage(conn, opportunity, at, "lost").await?;
            sqlx::query(
                "UPDATE opportunities SET status = 'lost', closed_at = $2, lost_reason = $3
                  WHERE opportunity_id = $1",
            )
            .bind(opportunity)
            .bind(at)
            .bind(&e.reason)
            .execute(&mut *conn)
            .await?;
            close_open(conn, opportunity, at, "lost", &mut effects.alerts_closed).await?;
        }
        E::OpportunityReopened(e) => {
            let opportunity = e.opportunity_id.as_uuid();
            enter_stage(conn, opportunity, seq, e.stage.as_str(), at).await?;
            sqlx::query(
                "UPDATE opportunities SET status = 'open', stage = $2, stage_since = $3,
                     closed_at = NULL, lost_reason = NULL
                  WHERE opportunity_id = $1",
            )
            .bind(opportunity)
            .bind(e.stage.as_str())
            .bind(at)
            .execute(conn)
            .await?;
        }
        E::OrderPlaced(e) => {
            sqlx::query(
                "INSERT INTO orders (customer_id, order_number, ordered_at, amount, currency, lines, sequence)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(customer)
            .bind(&e.order_number.0)
            .bind(at)
            .bind(e.total.amount)
            .bind(&e.total.currency)
            .bind(serde_json::to_value(&e.lines)?)
            .bind(seq)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE customers SET order_count = order_count + 1, order_total = order_total + $2,
                     last_order_at = greatest(last_order_at, $3)
                  WHERE customer_id = $1",
            )
            .bind(customer)
            .bind(e.total.amount)
            .bind(at)
            .execute(conn)
            .await?;
            effects.orders_changed = true;
        }
        E::ServiceRequestCreated(e) => {
            sqlx::query(
                "INSERT INTO service_requests (service_request_id, customer_id, kind, summary, status, created_at)
                 VALUES ($1, $2, $3, $4, 'created', $5)",
            )
            .bind(e.service_request_id.as_uuid())
            .bind(customer)
            .bind(e.kind.as_str())
            .bind(&e.summary)
            .bind(at)
            .execute(conn)
            .await?;
        }
        E::ServiceRequestAssigned(e) => {
            sqlx::query(
                "UPDATE service_requests SET status = 'assigned', assignee = $2 WHERE service_request_id = $1",
            )
            .bind(e.service_request_id.as_uuid())
            .bind(e.assignee.as_str())
            .execute(conn)
            .await?;
        }
        E::ServiceRequestHandled(e) => {
            sqlx::query(
                "UPDATE service_requests SET status = 'handled', handled_at = $2 WHERE service_request_id = $1",
            )
            .bind(e.service_request_id.as_uuid())
            .bind(at)
            .execute(conn)
            .await?;
        }
        E::ServiceFeedbackGiven(e) => {
            let status = if e.satisfaction >= SATISFIED_FROM {
                "satisfied"
            } else {
                "assigned"
            };
            sqlx::query(
                "UPDATE service_requests SET status = $2, satisfaction = $3,
                     feedback_count = feedback_count + 1
                  WHERE service_request_id = $1",
            )
            .bind(e.service_request_id.as_uuid())
            .bind(status)
            .bind(i16::from(e.satisfaction))
            .execute(conn)
            .await?;
        }
        E::ServiceRequestArchived(e) => {
            sqlx::query(
                "UPDATE service_requests SET status = 'archived', archived_at = $2 WHERE service_request_id = $1",
            )
            .bind(e.service_request_id.as_uuid())
            .bind(at)
            .execute(conn)
            .await?;
        }
        E::ChurnWarningRaised(e) => {
            sqlx::query(
                "INSERT INTO churn_cases (churn_case_id, customer_id, status, warned_at, warning_reason, last_order_at)
                 VALUES ($1, $2, 'at_risk', $3, $4, $5)",
            )
            .bind(e.churn_case_id.as_uuid())
            .bind(customer)
            .bind(at)
            .bind(&e.reason)
            .bind(e.last_order_at)
            .execute(&mut *conn)
            .await?;
            set_churn(conn, customer, "at_risk", Some(e.churn_case_id.as_uuid())).await?;
        }
        E::ChurnDelayMeasureRecorded(e) => {
            sqlx::query(
                "INSERT INTO churn_measures (churn_case_id, sequence, measure, recorded_at, actor)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(e.churn_case_id.as_uuid())
            .bind(seq)
            .bind(&e.measure)
            .bind(at)
            .bind(&rec.metadata.actor)
            .execute(conn)
            .await?;
        }
        E::ChurnConfirmed(e) => {
            sqlx::query(
                "UPDATE churn_cases SET status = 'lost', confirmed_at = $2, confirmed_reason = $3
                  WHERE churn_case_id = $1",
            )
            .bind(e.churn_case_id.as_uuid())
            .bind(at)
            .bind(&e.reason)
            .execute(&mut *conn)
            .await?;
            set_churn(conn, customer, "lost", Some(e.churn_case_id.as_uuid())).await?;
        }
        E::CustomerReactivated(e) => {
            sqlx::query(
                "UPDATE churn_cases SET status = 'reactivated', reactivated_at = $2,
                     reactivation_reason = $3
                  WHERE churn_case_id = $1",
            )
            .bind(e.churn_case_id.as_uuid())
            .bind(at)
            .bind(&e.reason)
            .execute(&mut *conn)
            .await?;
            set_churn(conn, customer, "active", None).await?;
        }
    }
    Ok(())
}

async fn enter_stage(
    conn: &mut PgConnection,
    opportunity: uuid::Uuid,
    seq: i64,
    stage: &str,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO stage_history (opportunity_id, entered_sequence, stage, entered_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(opportunity)
    .bind(seq)
    .bind(stage)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn leave_stage(
    conn: &mut PgConnection,
    opportunity: uuid::Uuid,
    at: DateTime<Utc>,
    left_by: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE stage_history SET left_at = $2, left_by = $3
          WHERE opportunity_id = $1 AND left_at IS NULL",
    )
    .bind(opportunity)
    .bind(at)
    .bind(left_by)
    .execute(conn)
    .await?;
    Ok(())
}

async fn set_churn(
    conn: &mut PgConnection,
    customer: uuid::Uuid,
    status: &str,
    case: Option<uuid::Uuid>,
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
