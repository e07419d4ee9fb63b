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
