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

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use crate::customer::fixtures::*;
    use crate::scenario::Scenario;
    use crate::state::OpportunityStatus;
    use crate::*;

    #[test]
    fn an_opportunity_starts_in_qualification_and_moves_one_step_forward() {
        let mut s = Scenario::registered().with_opportunity();
        let o = OpportunityId(id(20));
        assert_eq!(s.state().opportunities[&o].stage, Stage::Qualification);
        let e = s.refuse(change_stage(Stage::Evaluation, None));
        assert!(matches!(e, DomainError::StageNotAdjacent { .. }), "{e}");
        assert_eq!(e.field(), Some("to"));
        let events = s.accept(change_stage(Stage::Proposal, None));
        let [CustomerEvent::OpportunityStageChanged(changed)] = events.as_slice() else {
            panic!()
        };
        assert_eq!(
            (changed.from, changed.to),
            (Stage::Qualification, Stage::Proposal)
        );
        assert_eq!(
            s.refuse(change_stage(Stage::Proposal, None)).kind(),
            ErrorKind::Invalid,
            "same stage"
        );
    }

    #[test]
    fn moving_back_one_step_needs_a_reason() {
        let mut s = Scenario::registered().with_opportunity();
        s.advance_to(Stage::Evaluation);
        assert_eq!(
            invalid_field(&s.refuse(change_stage(Stage::Proposal, None))),
            "reason"
        );
        assert_eq!(
            invalid_field(&s.refuse(change_stage(Stage::Proposal, Some(" ")))),
            "reason"
        );
        assert!(matches!(
            s.refuse(change_stage(Stage::Qualification, Some("x"))),
            DomainError::StageNotAdjacent { .. }
        ));
        s.accept(change_stage(Stage::Proposal, Some("客户要求修改方案")));
        assert_eq!(
            s.state().opportunities[&OpportunityId(id(20))].stage,
            Stage::Proposal
        );
    }

    #[test]
    fn probabilities_are_zero_to_hundred() {
        let mut s = Scenario::registered();
        let Command::OpenOpportunity(mut open) = open_opportunity(20) else {
            unreachable!()
        };
        open.probability = 101;
        assert_eq!(
            invalid_field(&s.refuse(Command::OpenOpportunity(open.clone()))),
            "probability"
        );
        open.probability = 100;
        s.accept(Command::OpenOpportunity(open));
        let e = s.refuse(Command::ChangeStage(ChangeStage {
            opportunity_id: OpportunityId(id(20)),
            to: Stage::Proposal,
            reason: None,
            probability: Some(150),
        }));
        assert_eq!(invalid_field(&e), "probability");
    }

    #[test]
    fn amounts_are_never_negative() {
        let mut s = Scenario::registered();
        let Command::OpenOpportunity(mut open) = open_opportunity(20) else {
            unreachable!()
        };
        open.value = cny(-5);
        assert_eq!(
            invalid_field(&s.refuse(Command::OpenOpportunity(open.clone()))),
            "value.amount"
        );
        open.value = Money {
            amount: 5,
            currency: "rmb".into(),
        };
        assert_eq!(
            invalid_field(&s.refuse(Command::OpenOpportunity(open))),
            "value.currency"
        );
    }

    #[test]
    fn an_opportunity_is_won_only_from_negotiation() {
        let mut s = Scenario::registered().with_opportunity();
        let win = || {
            Command::WinOpportunity(WinOpportunity {
                opportunity_id: OpportunityId(id(20)),
                value: None,
            })
        };
        assert_eq!(s.refuse(win()).kind(), ErrorKind::Conflict);
        s.advance_to(Stage::Negotiation);
        let events = s.accept(win());
        let [CustomerEvent::OpportunityWon(won)] = events.as_slice() else {
            panic!()
        };
        assert_eq!(
            won.value,
            cny(1_000_000),
            "the estimate when no signed value is given"
        );
    }

    #[test]
    fn nothing_happens_after_won_or_lost_except_reopen() {
        let mut s = Scenario::registered().with_opportunity();
        let o = OpportunityId(id(20));
        s.accept(Command::LoseOpportunity(LoseOpportunity {
            opportunity_id: o,
            reason: "价格过高".into(),
        }));
        assert_eq!(s.state().opportunities[&o].status, OpportunityStatus::Lost);
        let refused = [
            change_stage(Stage::Proposal, None),
            Command::AssignOpportunity(AssignOpportunity {
                opportunity_id: o,
                owner: UserId::new("am-zhao"),
            }),
            Command::AddPlanItem(AddPlanItem {
                opportunity_id: o,
                plan_item_id: PlanItemId(id(50)),
                item: PlanItem {
                    due_on: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
                    action: "拜访".into(),
                },
            }),
            Command::WinOpportunity(WinOpportunity {
                opportunity_id: o,
                value: None,
            }),
            Command::LoseOpportunity(LoseOpportunity {
                opportunity_id: o,
                reason: "again".into(),
            }),
        ];
        for c in refused {
            assert_eq!(s.refuse(c.clone()).kind(), ErrorKind::Conflict, "{c:?}");
        }
        let events = s.accept(Command::ReopenOpportunity(ReopenOpportunity {
            opportunity_id: o,
            reason: "客户回心转意".into(),
        }));
        let [CustomerEvent::OpportunityReopened(r)] = events.as_slice() else {
            panic!()
        };
        assert_eq!(r.stage, Stage::Qualification, "reopened where it ended");
        assert_eq!(s.state().opportunities[&o].status, OpportunityStatus::Open);
        assert_eq!(
            s.refuse(Command::ReopenOpportunity(ReopenOpportunity {
                opportunity_id: o,
                reason: "x".into()
            }))
            .kind(),
            ErrorKind::Conflict,
            "an open opportunity is not reopened"
        );
    }

    #[test]
    fn a_won_opportunity_keeps_its_stage_and_reopens_there() {
        let mut s = Scenario::registered().with_opportunity();
        s.advance_to(Stage::Negotiation);
        let o = OpportunityId(id(20));
        s.accept(Command::WinOpportunity(WinOpportunity {
            opportunity_id: o,
            value: Some(cny(900_000)),
        }));
        s.accept(Command::ReopenOpportunity(ReopenOpportunity {
            opportunity_id: o,
            reason: "合同作废".into(),
        }));
        assert_eq!(s.state().opportunities[&o].stage, Stage::Negotiation);
    }

    #[test]
    fn a_plan_item_gets_one_result() {
        let mut s = Scenario::registered().with_opportunity();
        let o = OpportunityId(id(20));
        let p = PlanItemId(id(50));
        let result = || {
            Command::RecordPlanResult(RecordPlanResult {
                opportunity_id: o,
                plan_item_id: p,
                result: "客户满意".into(),
            })
        };
        assert_eq!(s.refuse(result()).kind(), ErrorKind::NotFound);
        s.accept(Command::AddPlanItem(AddPlanItem {
            opportunity_id: o,
            plan_item_id: p,
            item: PlanItem {
                due_on: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
                action: "演示产品".into(),
            },
        }));
        s.accept(result());
        assert_eq!(s.refuse(result()).kind(), ErrorKind::Conflict);
    }

    #[test]
    fn an_opportunity_id_is_used_once() {
        let mut s = Scenario::registered().with_opportunity();
        assert_eq!(s.refuse(open_opportunity(20)).kind(), ErrorKind::Conflict);
    }
}
