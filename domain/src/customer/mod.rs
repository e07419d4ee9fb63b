//! The customer as an [`Aggregate`]: one stream per customer, keyed by its id, and
//! [`decide`]: accept or refuse a command against the customer's current state, and say which
//! events it causes. Pure: the same state and command always give the same answer.
//!
//! `decide` checks the command's values and the registration, then hands the command to its
//! area, a file each: `profile` (registering, the profile, the owner), `contacts`,
//! `touchpoints`, `complaints`, `opportunities` (with their plan items), `orders`, `service`
//! requests and `churn`. Each area's rules are tested beside it, with
//! [`crate::scenario::Scenario`].

mod churn;
mod complaints;
mod contacts;
#[cfg(test)]
mod fixtures;
mod opportunities;
mod orders;
mod profile;
mod service;
mod touchpoints;

use crate::access::{authorize_command, authorize_ingest, Denial, Principal, Via};
use crate::command::Command;
use crate::error::DomainError;
use crate::event::CustomerEvent;
use crate::ids::{ContactId, CustomerId, OpportunityId};
use crate::organisation::OrganisationState;
use crate::rules::not_found;
use crate::state::{CustomerState, OpportunityState};
use crate::stream::{Aggregate, StreamKey};
use crate::values::ContactDetails;

/// A customer's stream: everything that happens to one customer.
pub struct Customer;

impl Aggregate for Customer {
    const NAME: &'static str = "customer";
    const KEY: StreamKey = StreamKey::PerId {
        path_parameter: "customer_id",
    };
    type Event = CustomerEvent;
    type Command = Command;
    type State = CustomerState;

    fn initial(stream: CustomerId) -> CustomerState {
        CustomerState::new(stream)
    }

    fn stream(state: &CustomerState) -> CustomerId {
        state.customer_id
    }

    fn version(state: &CustomerState) -> u64 {
        state.version
    }

    fn decide(state: &CustomerState, command: &Command) -> Result<Vec<CustomerEvent>, DomainError> {
        decide(state, command)
    }

    fn evolve(state: CustomerState, event: &CustomerEvent) -> CustomerState {
        crate::state::evolve(state, event)
    }

    fn authorize(
        principal: &Principal,
        via: Via,
        organisation: &OrganisationState,
        state: &CustomerState,
        command: &Command,
    ) -> Result<(), Denial> {
        let owner = state.owner.as_ref();
        match via {
            Via::Command => authorize_command(principal, organisation, owner, command),
            Via::Ingest => authorize_ingest(principal, organisation, owner),
        }
    }

    fn hidden(_command: &Command) -> DomainError {
        DomainError::CustomerNotRegistered
    }
}

type Decision = Result<Vec<CustomerEvent>, DomainError>;

/// Decides one command. An empty `Ok` means the command asked for what is already so (a
/// profile change to the current values): nothing to append.
pub fn decide(state: &CustomerState, command: &Command) -> Decision {
    crate::limits::check_values(command)?;
    if let Command::RegisterCustomer(c) = command {
        return profile::register(state, c);
    }
    let Some(current) = state.profile.as_ref() else {
        return Err(DomainError::CustomerNotRegistered);
    };

    match command {
        Command::RegisterCustomer(_) => Err(DomainError::CustomerAlreadyRegistered),
        Command::ChangeProfile(c) => profile::change_profile(state, current, c),
        Command::ReassignOwner(c) => profile::reassign_owner(state, c),

        Command::AddContact(c) => contacts::add_contact(state, c),
        Command::ChangeContact(c) => contacts::change_contact(state, c),
        Command::RemoveContact(c) => contacts::remove_contact(state, c),

        Command::RecordTouchpoint(c) => touchpoints::record_touchpoint(state, c),

        Command::LodgeComplaint(c) => complaints::lodge_complaint(state, c),
        Command::HandleComplaint(c) => complaints::handle_complaint(state, c),
        Command::CloseComplaint(c) => complaints::close_complaint(state, c),

        Command::OpenOpportunity(c) => opportunities::open(state, c),
        Command::AssignOpportunity(c) => opportunities::assign(state, c),
        Command::ChangeStage(c) => opportunities::change_stage(state, c),
        Command::AddPlanItem(c) => opportunities::add_plan_item(state, c),
        Command::RecordPlanResult(c) => opportunities::record_plan_result(state, c),
        Command::WinOpportunity(c) => opportunities::win(state, c),
        Command::LoseOpportunity(c) => opportunities::lose(state, c),
        Command::ReopenOpportunity(c) => opportunities::reopen(state, c),

        Command::PlaceOrder(c) => orders::place_order(state, c),

        Command::CreateServiceRequest(c) => service::create(state, c),
        Command::AssignServiceRequest(c) => service::assign(state, c),
        Command::HandleServiceRequest(c) => service::handle(state, c),
        Command::GiveServiceFeedback(c) => service::give_feedback(state, c),
        Command::ArchiveServiceRequest(c) => service::archive(state, c),

        Command::RaiseChurnWarning(c) => churn::raise_warning(state, c),
        Command::RecordDelayMeasure(c) => churn::record_delay_measure(state, c),
        Command::ConfirmChurn(c) => churn::confirm(state, c),
        Command::ReactivateCustomer(c) => churn::reactivate(state, c),
    }
}

/// A decision of one event.
fn one(event: impl Into<CustomerEvent>) -> Decision {
    Ok(vec![event.into()])
}

// ---------------------------------------------------------------- lookups

/// The contact `id` (named by `field` in the command).
fn contact<'a>(
    state: &'a CustomerState,
    id: ContactId,
    field: &'static str,
) -> Result<&'a ContactDetails, DomainError> {
    state
        .contacts
        .get(&id)
        .ok_or_else(|| not_found("contact", field, id))
}

/// The opportunity `id` (named by `field` in the command), open or not.
fn opportunity<'a>(
    state: &'a CustomerState,
    id: OpportunityId,
    field: &'static str,
) -> Result<&'a OpportunityState, DomainError> {
    state
        .opportunities
        .get(&id)
        .ok_or_else(|| not_found("opportunity", field, id))
}

#[cfg(test)]
mod tests {
    use crate::customer::fixtures::*;
    use crate::scenario::Scenario;
    use crate::*;

    #[test]
    fn nothing_but_registration_happens_to_an_unregistered_customer() {
        Scenario::customer()
            .when(Command::RecordDelayMeasure(RecordDelayMeasure {
                measure: "call".into(),
            }))
            .then_err(DomainError::CustomerNotRegistered);
        assert_eq!(
            DomainError::CustomerNotRegistered.kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn sequence_numbers_are_contiguous() {
        let s = Scenario::registered().with_contact().with_opportunity();
        assert_eq!(s.state().version, 3);
        let event = CustomerEvent::ContactRemoved(ContactRemoved {
            customer_id: CustomerId(id(1)),
            contact_id: ContactId(id(10)),
        });
        let e = Customer::apply_recorded(s.state().clone(), 5, &event).unwrap_err();
        assert_eq!(
            e,
            DomainError::OutOfSequence {
                expected: 4,
                got: 5
            }
        );
        let e = Customer::apply_recorded(s.state().clone(), 3, &event).unwrap_err();
        assert_eq!(
            e,
            DomainError::OutOfSequence {
                expected: 4,
                got: 3
            }
        );
        assert_eq!(
            Customer::apply_recorded(s.state().clone(), 4, &event)
                .unwrap()
                .version,
            4
        );
    }

    #[test]
    fn an_event_of_another_customer_is_refused() {
        let s = Scenario::registered();
        let event = CustomerEvent::ContactRemoved(ContactRemoved {
            customer_id: CustomerId(id(2)),
            contact_id: ContactId(id(10)),
        });
        assert!(matches!(
            Customer::apply_recorded(s.state().clone(), 2, &event),
            Err(DomainError::WrongStream { .. })
        ));
    }

    #[test]
    fn events_are_stamped_with_the_stream_s_customer() {
        let mut s = Scenario::registered()
            .with_contact()
            .with_opportunity()
            .with_service_request();
        for e in s.accept(warn(60)) {
            assert_eq!(e.customer_id(), CustomerId(id(1)));
        }
    }
}
