//! Opportunities (商机) and the funnel: opened, assigned, moved one stage at a time, planned
//! (plan items and their results), won, lost and reopened.

use super::{contact, one, opportunity, Decision};
use crate::command::{
    AddPlanItem, AssignOpportunity, ChangeStage, LoseOpportunity, OpenOpportunity,
    RecordPlanResult, ReopenOpportunity, WinOpportunity,
};
use crate::error::DomainError;
use crate::event::{
    OpportunityAssigned, OpportunityLost, OpportunityOpened, OpportunityReopened,
    OpportunityStageChanged, OpportunityWon, PlanItemAdded, PlanResultRecorded,
};
use crate::ids::OpportunityId;
use crate::rules::{exists, non_empty, not_found, transition, validate_money};
use crate::state::{CustomerState, OpportunityState, OpportunityStatus};
use crate::values::Stage;

/// A new opportunity, under an id not used yet, with a title, a source, a value and a
/// probability.
pub(super) fn open(state: &CustomerState, c: &OpenOpportunity) -> Decision {
    if state.opportunities.contains_key(&c.opportunity_id) {
        return Err(exists("opportunity", "opportunity_id", c.opportunity_id));
    }
    non_empty(&c.title, "title")?;
    non_empty(&c.source, "source")?;
    validate_money(&c.value, "value")?;
    probability(c.probability, "probability")?;
    if let Some(id) = c.contact_id {
        contact(state, id, "contact_id")?;
    }
    one(OpportunityOpened {
        customer_id: state.customer_id,
        opportunity_id: c.opportunity_id,
        source: c.source.clone(),
        title: c.title.clone(),
        value: c.value.clone(),
        probability: c.probability,
        expected_close: c.expected_close,
        contact_id: c.contact_id,
        description: c.description.clone(),
    })
}

/// An open opportunity's owner; the current one again changes nothing.
pub(super) fn assign(state: &CustomerState, c: &AssignOpportunity) -> Decision {
    let o = open_opportunity(state, c.opportunity_id, "assign")?;
    non_empty(&c.owner.0, "owner")?;
    if o.owner.as_ref() == Some(&c.owner) {
        return Ok(vec![]);
    }
    one(OpportunityAssigned {
        customer_id: state.customer_id,
        opportunity_id: c.opportunity_id,
        owner: c.owner.clone(),
    })
}

/// One stage forward, or one back with a reason.
pub(super) fn change_stage(state: &CustomerState, c: &ChangeStage) -> Decision {
    let o = open_opportunity(state, c.opportunity_id, "change stage")?;
    if let Some(p) = c.probability {
        probability(p, "probability")?;
    }
    let reason = if o.stage.next() == Some(c.to) {
        c.reason.clone()
    } else if o.stage.previous() == Some(c.to) {
        match c.reason.as_deref().map(str::trim) {
            Some(r) if !r.is_empty() => c.reason.clone(),
            _ => {
                return Err(DomainError::invalid(
                    "reason",
                    "moving an opportunity back a stage needs a reason",
                ))
            }
        }
    } else {
        return Err(DomainError::StageNotAdjacent {
            from: o.stage.as_str().to_owned(),
            to: c.to.as_str().to_owned(),
        });
    };
    one(OpportunityStageChanged {
        customer_id: state.customer_id,
        opportunity_id: c.opportunity_id,
        from: o.stage,
        to: c.to,
        reason,
        probability: c.probability,
    })
}

/// A step of an open opportunity's plan, under an id not used yet.
pub(super) fn add_plan_item(state: &CustomerState, c: &AddPlanItem) -> Decision {
    let o = open_opportunity(state, c.opportunity_id, "add a plan item")?;
    if o.plan_items.contains_key(&c.plan_item_id) {
        return Err(exists("plan item", "plan_item_id", c.plan_item_id));
    }
    non_empty(&c.item.action, "item.action")?;
    one(PlanItemAdded {
        customer_id: state.customer_id,
        opportunity_id: c.opportunity_id,
        plan_item_id: c.plan_item_id,
        item: c.item.clone(),
    })
}

/// The one result of a plan item.
pub(super) fn record_plan_result(state: &CustomerState, c: &RecordPlanResult) -> Decision {
    let o = open_opportunity(state, c.opportunity_id, "record a plan result")?;
    match o.plan_items.get(&c.plan_item_id) {
        None => return Err(not_found("plan item", "plan_item_id", c.plan_item_id)),
        Some(true) => return Err(transition("plan item", "done", "record a result")),
        Some(false) => {}
    }
    non_empty(&c.result, "result")?;
    one(PlanResultRecorded {
        customer_id: state.customer_id,
        opportunity_id: c.opportunity_id,
        plan_item_id: c.plan_item_id,
        result: c.result.clone(),
    })
}

/// Won from negotiation, at the signed value or else the estimate.
pub(super) fn win(state: &CustomerState, c: &WinOpportunity) -> Decision {
    let o = open_opportunity(state, c.opportunity_id, "win")?;
    if o.stage != Stage::Negotiation {
        return Err(transition(
            "opportunity",
            o.stage.as_str(),
            "win before negotiation",
        ));
    }
    let value = c.value.clone().unwrap_or_else(|| o.value.clone());
    validate_money(&value, "value")?;
    one(OpportunityWon {
        customer_id: state.customer_id,
        opportunity_id: c.opportunity_id,
        value,
    })
}

/// Lost, at the stage it reached, with a reason.
pub(super) fn lose(state: &CustomerState, c: &LoseOpportunity) -> Decision {
    let o = open_opportunity(state, c.opportunity_id, "lose")?;
    non_empty(&c.reason, "reason")?;
    one(OpportunityLost {
        customer_id: state.customer_id,
        opportunity_id: c.opportunity_id,
        stage: o.stage,
        reason: c.reason.clone(),
    })
}

/// A won or lost opportunity opened again where it ended, with a reason.
pub(super) fn reopen(state: &CustomerState, c: &ReopenOpportunity) -> Decision {
    let o = opportunity(state, c.opportunity_id, "opportunity_id")?;
    if o.status == OpportunityStatus::Open {
        return Err(transition("opportunity", "open", "reopen"));
    }
    non_empty(&c.reason, "reason")?;
    one(OpportunityReopened {
        customer_id: state.customer_id,
        opportunity_id: c.opportunity_id,
        stage: o.stage,
        reason: c.reason.clone(),
    })
}

/// Nothing happens to a won or lost opportunity but reopening.
fn open_opportunity<'a>(
    state: &'a CustomerState,
    id: OpportunityId,
    action: &'static str,
) -> Result<&'a OpportunityState, DomainError> {
    let o = opportunity(state, id, "opportunity_id")?;
    if o.status != OpportunityStatus::Open {
        return Err(transition("opportunity", o.status.as_str(), action));
    }
    Ok(o)
}

fn probability(value: u8, field: &str) -> Result<(), DomainError> {
    if value > 100 {
        return Err(DomainError::invalid(
            field,
            format!("must be 0 to 100, got {value}"),
        ));
    }
    Ok(())
}
