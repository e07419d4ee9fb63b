//! Churn (客户流失): a warning opens a case; delaying measures, then churn confirmed or the
//! customer reactivated.

use super::{one, Decision};
use crate::command::{ConfirmChurn, RaiseChurnWarning, ReactivateCustomer, RecordDelayMeasure};
use crate::event::{
    ChurnConfirmed, ChurnDelayMeasureRecorded, ChurnWarningRaised, CustomerReactivated,
};
use crate::rules::{non_empty, transition};
use crate::state::{ChurnStatus, CustomerState};

/// A warning opens a churn case for an active customer: one open case at a time.
pub(super) fn raise_warning(state: &CustomerState, c: &RaiseChurnWarning) -> Decision {
    if state.churn != ChurnStatus::Active {
        return Err(transition(
            "customer",
            state.churn.as_str(),
            "raise a churn warning",
        ));
    }
    non_empty(&c.reason, "reason")?;
    one(ChurnWarningRaised {
        customer_id: state.customer_id,
        churn_case_id: c.churn_case_id,
        reason: c.reason.clone(),
        last_order_at: c.last_order_at,
    })
}

/// A measure against the open case; as many as it takes.
pub(super) fn record_delay_measure(state: &CustomerState, c: &RecordDelayMeasure) -> Decision {
    let ChurnStatus::AtRisk(churn_case_id) = state.churn else {
        return Err(transition(
            "customer",
            state.churn.as_str(),
            "record a delaying measure",
        ));
    };
    non_empty(&c.measure, "measure")?;
    one(ChurnDelayMeasureRecorded {
        customer_id: state.customer_id,
        churn_case_id,
        measure: c.measure.clone(),
    })
}

/// Churn confirmed, only after a warning, in the warning's case.
pub(super) fn confirm(state: &CustomerState, c: &ConfirmChurn) -> Decision {
    let ChurnStatus::AtRisk(churn_case_id) = state.churn else {
        return Err(transition(
            "customer",
            state.churn.as_str(),
            "confirm churn without a warning",
        ));
    };
    non_empty(&c.reason, "reason")?;
    one(ChurnConfirmed {
        customer_id: state.customer_id,
        churn_case_id,
        reason: c.reason.clone(),
    })
}

/// A customer at risk or lost is active again.
pub(super) fn reactivate(state: &CustomerState, c: &ReactivateCustomer) -> Decision {
    let (ChurnStatus::AtRisk(churn_case_id) | ChurnStatus::Lost(churn_case_id)) = state.churn
    else {
        return Err(transition("customer", state.churn.as_str(), "reactivate"));
    };
    non_empty(&c.reason, "reason")?;
    one(CustomerReactivated {
        customer_id: state.customer_id,
        churn_case_id,
        reason: c.reason.clone(),
    })
}

#[cfg(test)]
mod tests {
    use crate::customer::fixtures::*;
    use crate::scenario::Scenario;
    use crate::state::ChurnStatus;
    use crate::*;

    fn confirm() -> Command {
        Command::ConfirmChurn(ConfirmChurn {
            reason: "转向竞争对手".into(),
        })
    }

    fn reactivate() -> Command {
        Command::ReactivateCustomer(ReactivateCustomer {
            reason: "新订单".into(),
        })
    }

    fn delay() -> Command {
        Command::RecordDelayMeasure(RecordDelayMeasure {
            measure: "赠送保养服务".into(),
        })
    }

    #[test]
    fn churn_is_confirmed_only_after_a_warning() {
        let mut s = Scenario::registered();
        assert_eq!(s.refuse(confirm()).kind(), ErrorKind::Conflict);
        assert_eq!(s.refuse(delay()).kind(), ErrorKind::Conflict);
        s.accept(warn(60));
        assert_eq!(s.state().churn, ChurnStatus::AtRisk(ChurnCaseId(id(60))));
        assert_eq!(
            s.refuse(warn(61)).kind(),
            ErrorKind::Conflict,
            "one open case at a time"
        );
        s.accept(delay());
        s.accept(delay()); // several measures
        let events = s.accept(confirm());
        let [CustomerEvent::ChurnConfirmed(c)] = events.as_slice() else {
            panic!()
        };
        assert_eq!(
            c.churn_case_id,
            ChurnCaseId(id(60)),
            "the case of the warning"
        );
        assert_eq!(s.state().churn, ChurnStatus::Lost(ChurnCaseId(id(60))));
        assert_eq!(s.refuse(confirm()).kind(), ErrorKind::Conflict);
    }

    #[test]
    fn a_customer_is_reactivated_from_at_risk_or_lost() {
        let mut s = Scenario::registered();
        assert_eq!(
            s.refuse(reactivate()).kind(),
            ErrorKind::Conflict,
            "an active customer"
        );
        s.accept(warn(60));
        s.accept(reactivate());
        assert_eq!(s.state().churn, ChurnStatus::Active);
        s.accept(warn(61));
        s.accept(confirm());
        s.accept(reactivate());
        assert_eq!(s.state().churn, ChurnStatus::Active);
    }
}
