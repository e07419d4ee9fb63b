//! The customer as an [`Aggregate`]: one stream per customer, keyed by its id.

use crate::access::{authorize_command, authorize_ingest, Denial, Principal, Via};
use crate::command::Command;
use crate::error::DomainError;
use crate::event::CustomerEvent;
use crate::ids::CustomerId;
use crate::organisation::OrganisationState;
use crate::state::CustomerState;
use crate::stream::{Aggregate, StreamKey};

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
        crate::decide::decide(state, command)
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
