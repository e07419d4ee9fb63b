//! Complaints (投诉): lodged, handled (as often as it takes), then closed.

use super::{contact, one, Decision};
use crate::command::{CloseComplaint, HandleComplaint, LodgeComplaint};
use crate::error::DomainError;
use crate::event::{ComplaintClosed, ComplaintHandled, ComplaintLodged};
use crate::ids::ComplaintId;
use crate::rules::{exists, non_empty, not_found, transition};
use crate::state::{ComplaintStatus, CustomerState};

/// A new complaint, under an id not used yet, with a sub-category and a description.
pub(super) fn lodge_complaint(state: &CustomerState, c: &LodgeComplaint) -> Decision {
    if state.complaints.contains_key(&c.complaint_id) {
        return Err(exists("complaint", "complaint_id", c.complaint_id));
    }
    non_empty(&c.sub_category, "sub_category")?;
    non_empty(&c.description, "description")?;
    if let Some(id) = c.contact_id {
        contact(state, id, "contact_id")?;
    }
    one(ComplaintLodged {
        customer_id: state.customer_id,
        complaint_id: c.complaint_id,
        category: c.category,
        sub_category: c.sub_category.clone(),
        urgency: c.urgency,
        importance: c.importance,
        description: c.description.clone(),
        contact_id: c.contact_id,
    })
}

/// Handling of a complaint that is not closed; it has a history.
pub(super) fn handle_complaint(state: &CustomerState, c: &HandleComplaint) -> Decision {
    let status = complaint(state, c.complaint_id)?;
    if status == ComplaintStatus::Closed {
        return Err(transition("complaint", status.as_str(), "handle"));
    }
    non_empty(&c.handling, "handling")?;
    one(ComplaintHandled {
        customer_id: state.customer_id,
        complaint_id: c.complaint_id,
        handling: c.handling.clone(),
        cause_analysis: c.cause_analysis.clone(),
    })
}

/// A handled complaint closed, with its resolution.
pub(super) fn close_complaint(state: &CustomerState, c: &CloseComplaint) -> Decision {
    let status = complaint(state, c.complaint_id)?;
    if status != ComplaintStatus::Handled {
        return Err(transition("complaint", status.as_str(), "close"));
    }
    non_empty(&c.resolution, "resolution")?;
    one(ComplaintClosed {
        customer_id: state.customer_id,
        complaint_id: c.complaint_id,
        resolution: c.resolution.clone(),
    })
}

fn complaint(state: &CustomerState, id: ComplaintId) -> Result<ComplaintStatus, DomainError> {
    state
        .complaints
        .get(&id)
        .copied()
        .ok_or_else(|| not_found("complaint", "complaint_id", id))
}

#[cfg(test)]
mod tests {
    use crate::customer::fixtures::*;
    use crate::scenario::Scenario;
    use crate::*;

    #[test]
    fn a_complaint_is_lodged_handled_then_closed() {
        let mut s = Scenario::registered();
        let c = ComplaintId(id(40));
        s.accept(Command::LodgeComplaint(LodgeComplaint {
            complaint_id: c,
            category: ComplaintCategory::Product,
            sub_category: "quality".into(),
            urgency: Priority::High,
            importance: Priority::Normal,
            description: "外壳开裂".into(),
            contact_id: None,
        }));
        let close = || {
            Command::CloseComplaint(CloseComplaint {
                complaint_id: c,
                resolution: "换货".into(),
            })
        };
        assert_eq!(
            s.refuse(close()).kind(),
            ErrorKind::Conflict,
            "not handled yet"
        );
        let handle = || {
            Command::HandleComplaint(HandleComplaint {
                complaint_id: c,
                handling: "上门检查".into(),
                cause_analysis: None,
            })
        };
        s.accept(handle());
        s.accept(handle()); // handling has a history
        s.accept(close());
        assert_eq!(s.refuse(handle()).kind(), ErrorKind::Conflict, "closed");
        assert_eq!(s.refuse(close()).kind(), ErrorKind::Conflict, "closed");
    }

    #[test]
    fn a_complaint_needs_a_sub_category_and_description() {
        let mut s = Scenario::registered();
        let e = s.refuse(Command::LodgeComplaint(LodgeComplaint {
            complaint_id: ComplaintId(id(40)),
            category: ComplaintCategory::Staff,
            sub_category: "".into(),
            urgency: Priority::Low,
            importance: Priority::Low,
            description: "x".into(),
            contact_id: None,
        }));
        assert_eq!(invalid_field(&e), "sub_category");
    }
}
