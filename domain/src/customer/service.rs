//! Service requests (服务请求): created, assigned, handled, given feedback, archived.

use super::{contact, one, Decision};
use crate::command::{
    ArchiveServiceRequest, AssignServiceRequest, CreateServiceRequest, GiveServiceFeedback,
    HandleServiceRequest,
};
use crate::error::DomainError;
use crate::event::{
    ServiceFeedbackGiven, ServiceRequestArchived, ServiceRequestAssigned, ServiceRequestCreated,
    ServiceRequestHandled,
};
use crate::ids::ServiceRequestId;
use crate::rules::{exists, non_empty, not_found, rating, transition};
use crate::state::{CustomerState, ServiceStatus};

/// A new request, under an id not used yet, with a summary and the request itself.
pub(super) fn create(state: &CustomerState, c: &CreateServiceRequest) -> Decision {
    if state.service_requests.contains_key(&c.service_request_id) {
        return Err(exists(
            "service request",
            "service_request_id",
            c.service_request_id,
        ));
    }
    non_empty(&c.summary, "summary")?;
    non_empty(&c.request, "request")?;
    if let Some(id) = c.contact_id {
        contact(state, id, "contact_id")?;
    }
    one(ServiceRequestCreated {
        customer_id: state.customer_id,
        service_request_id: c.service_request_id,
        kind: c.kind,
        summary: c.summary.clone(),
        request: c.request.clone(),
        contact_id: c.contact_id,
    })
}

/// A created or assigned request (re)assigned.
pub(super) fn assign(state: &CustomerState, c: &AssignServiceRequest) -> Decision {
    let status = service_request(state, c.service_request_id)?;
    if !matches!(status, ServiceStatus::Created | ServiceStatus::Assigned) {
        return Err(transition("service request", status.as_str(), "assign"));
    }
    non_empty(&c.assignee.0, "assignee")?;
    one(ServiceRequestAssigned {
        customer_id: state.customer_id,
        service_request_id: c.service_request_id,
        assignee: c.assignee.clone(),
    })
}

/// An assigned request handled.
pub(super) fn handle(state: &CustomerState, c: &HandleServiceRequest) -> Decision {
    let status = service_request(state, c.service_request_id)?;
    if status != ServiceStatus::Assigned {
        return Err(transition("service request", status.as_str(), "handle"));
    }
    non_empty(&c.handling, "handling")?;
    one(ServiceRequestHandled {
        customer_id: state.customer_id,
        service_request_id: c.service_request_id,
        handling: c.handling.clone(),
    })
}

/// The customer's feedback on a handled request, with a satisfaction of 1 to 5.
pub(super) fn give_feedback(state: &CustomerState, c: &GiveServiceFeedback) -> Decision {
    let status = service_request(state, c.service_request_id)?;
    if status != ServiceStatus::Handled {
        return Err(transition(
            "service request",
            status.as_str(),
            "give feedback",
        ));
    }
    rating(c.satisfaction, "satisfaction")?;
    one(ServiceFeedbackGiven {
        customer_id: state.customer_id,
        service_request_id: c.service_request_id,
        result: c.result.clone(),
        satisfaction: c.satisfaction,
    })
}

/// A request the customer is satisfied with archived.
pub(super) fn archive(state: &CustomerState, c: &ArchiveServiceRequest) -> Decision {
    let status = service_request(state, c.service_request_id)?;
    if status != ServiceStatus::Satisfied {
        return Err(transition("service request", status.as_str(), "archive"));
    }
    one(ServiceRequestArchived {
        customer_id: state.customer_id,
        service_request_id: c.service_request_id,
    })
}

fn service_request(
    state: &CustomerState,
    id: ServiceRequestId,
) -> Result<ServiceStatus, DomainError> {
    state
        .service_requests
        .get(&id)
        .copied()
        .ok_or_else(|| not_found("service request", "service_request_id", id))
}

#[cfg(test)]
mod tests {
    use crate::customer::fixtures::*;
    use crate::scenario::Scenario;
    use crate::state::ServiceStatus;
    use crate::*;

    fn service_status(s: &Scenario<Customer>) -> ServiceStatus {
        s.state().service_requests[&ServiceRequestId(id(30))]
    }

    fn sr(n: u128) -> ServiceRequestId {
        ServiceRequestId(id(n))
    }

    fn assign(n: u128) -> Command {
        Command::AssignServiceRequest(AssignServiceRequest {
            service_request_id: sr(n),
            assignee: UserId::new("agent-chen"),
        })
    }

    fn handle(n: u128) -> Command {
        Command::HandleServiceRequest(HandleServiceRequest {
            service_request_id: sr(n),
            handling: "电话指导".into(),
        })
    }

    fn feedback(n: u128, satisfaction: u8) -> Command {
        Command::GiveServiceFeedback(GiveServiceFeedback {
            service_request_id: sr(n),
            result: "ok".into(),
            satisfaction,
        })
    }

    fn archive(n: u128) -> Command {
        Command::ArchiveServiceRequest(ArchiveServiceRequest {
            service_request_id: sr(n),
        })
    }

    #[test]
    fn a_service_request_goes_create_assign_handle_feedback_archive() {
        let mut s = Scenario::registered().with_service_request();
        assert_eq!(service_status(&s), ServiceStatus::Created);
        for c in [handle(30), feedback(30, 4), archive(30)] {
            assert_eq!(s.refuse(c).kind(), ErrorKind::Conflict);
        }
        s.accept(assign(30));
        for c in [feedback(30, 4), archive(30)] {
            assert_eq!(s.refuse(c).kind(), ErrorKind::Conflict);
        }
        s.accept(handle(30));
        assert_eq!(
            s.refuse(archive(30)).kind(),
            ErrorKind::Conflict,
            "no feedback yet"
        );
        s.accept(feedback(30, 3));
        assert_eq!(service_status(&s), ServiceStatus::Satisfied);
        s.accept(archive(30));
        assert_eq!(service_status(&s), ServiceStatus::Archived);
        for c in [assign(30), handle(30), feedback(30, 5), archive(30)] {
            assert_eq!(s.refuse(c).kind(), ErrorKind::Conflict);
        }
    }

    #[test]
    fn feedback_below_three_sends_the_request_back_to_handling() {
        let mut s = Scenario::registered().with_service_request();
        s.accept(assign(30));
        s.accept(handle(30));
        s.accept(feedback(30, 2));
        assert_eq!(service_status(&s), ServiceStatus::Assigned);
        assert_eq!(s.refuse(archive(30)).kind(), ErrorKind::Conflict);
        s.accept(handle(30));
        s.accept(feedback(30, 5));
        s.accept(archive(30));
    }

    #[test]
    fn satisfaction_is_one_to_five() {
        let mut s = Scenario::registered().with_service_request();
        s.accept(assign(30));
        s.accept(handle(30));
        assert_eq!(invalid_field(&s.refuse(feedback(30, 0))), "satisfaction");
        assert_eq!(invalid_field(&s.refuse(feedback(30, 6))), "satisfaction");
    }

    #[test]
    fn an_unknown_service_request_is_not_found() {
        let mut s = Scenario::registered();
        let e = s.refuse(assign(99));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.field(), Some("service_request_id"));
    }
}
