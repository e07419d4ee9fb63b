//! Stage-duration alerts (阶段滞留时间过长的报警) and their outbox. The sweep opens them as time
//! passes ([`crate::Projector::sweep_alerts`]); a batch closes the open alert of every
//! opportunity that changed stage, was won or was lost, at the first such event's time, with
//! two statements per batch.

use async_trait::async_trait;
use domain::CustomerEvent as E;
use sqlx::PgConnection;

use super::{Batch, Effects, EventRef, ReadModel};
use crate::alerts::close_open;
use crate::error::Result;

pub(crate) struct StageAlerts;

#[async_trait]
impl ReadModel for StageAlerts {
    fn name(&self) -> &'static str {
        "stage_alerts"
    }

    fn consumes(&self, event: EventRef<'_>) -> bool {
        matches!(
            event.customer_event(),
            Some(E::OpportunityStageChanged(_) | E::OpportunityWon(_) | E::OpportunityLost(_))
        )
    }

    fn tables(&self) -> &'static [&'static str] {
        &["stage_alerts"]
    }

    fn other_tables(&self) -> &'static [&'static str] {
        &["alert_outbox"]
    }

    fn rebuild_alone(&self) -> std::result::Result<(), &'static str> {
        Err("its alerts are opened by the sweep over the pipeline's stage history as time passes, not by events alone; rebuild the whole projection instead (crm replay --version N)")
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        effects: &mut Effects,
    ) -> Result<()> {
        // the first stage change, win or loss of each opportunity closes its open alert
        // (after it none is open: the sweep does not run inside a batch)
        let mut seen = std::collections::HashSet::new();
        let (mut id, mut at, mut by) = (Vec::new(), Vec::new(), Vec::new());
        for (_, r) in batch.customer_events() {
            let (opportunity, closed_by) = match &r.event {
                E::OpportunityStageChanged(e) => (e.opportunity_id, "stage_changed"),
                E::OpportunityWon(e) => (e.opportunity_id, "won"),
                E::OpportunityLost(e) => (e.opportunity_id, "lost"),
                _ => continue,
            };
            if seen.insert(opportunity) {
                id.push(opportunity.as_uuid());
                at.push(r.metadata.occurred_at);
                by.push(closed_by);
            }
        }
        close_open(conn, &id, &at, &by, &mut effects.alerts_closed).await?;
        Ok(())
    }
}
