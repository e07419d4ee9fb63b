//! Given / when / then for any [`Aggregate`]: the rule tests of the customer's areas and of
//! the teams, and of whatever crate wants to drive a stream the way the services do.
//!
//! A scenario is a stream and its state. `given` records events (through
//! [`Aggregate::apply_recorded`], so they must be of the stream and come in sequence);
//! `given_commands` runs commands that must be accepted. Then either one step, `when` a
//! command `then` these events (or `then_err` this refusal), or many: [`Scenario::accept`]
//! and [`Scenario::refuse`] return what `decide` said and keep going. A refused command
//! must change nothing.
//!
//! ```
//! use domain::scenario::Scenario;
//! use domain::*;
//!
//! let customer = CustomerId(uuid::Uuid::nil());
//! Scenario::<Customer>::new(customer)
//!     .when(ConfirmChurn { reason: "moved".into() }.into())
//!     .then_err(DomainError::CustomerNotRegistered);
//! ```
//!
//! A failed expectation panics, as `assert!` does: this is for tests.

use std::fmt;

use crate::error::DomainError;
use crate::ids::CustomerId;
use crate::stream::Aggregate;

/// A stream of aggregate `A` under test: its state, built from events or accepted commands.
pub struct Scenario<A: Aggregate> {
    state: A::State,
}

impl<A: Aggregate> Clone for Scenario<A> {
    fn clone(&self) -> Self {
        Scenario {
            state: self.state.clone(),
        }
    }
}

impl<A: Aggregate> fmt::Debug for Scenario<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("aggregate", &A::NAME)
            .field("state", &self.state)
            .finish()
    }
}

impl<A: Aggregate> Scenario<A> {
    /// The stream `stream` before its first event.
    pub fn new(stream: CustomerId) -> Self {
        Scenario {
            state: A::initial(stream),
        }
    }

    /// The state so far.
    pub fn state(&self) -> &A::State {
        &self.state
    }

    /// Given these events, recorded in order after the ones so far.
    ///
    /// # Panics
    /// If an event is of another stream.
    pub fn given(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        for event in events {
            self.record(&event);
        }
        self
    }

    /// Given these commands, each accepted and its events recorded.
    ///
    /// # Panics
    /// If a command is refused.
    pub fn given_commands(mut self, commands: impl IntoIterator<Item = A::Command>) -> Self {
        for command in commands {
            self.accept(command);
        }
        self
    }

    /// When `command` is decided against the state so far; say what is expected with
    /// [`When::then`] or [`When::then_err`].
    pub fn when(self, command: A::Command) -> When<A> {
        let decision = A::decide(&self.state, &command);
        When {
            scenario: self,
            command,
            decision,
        }
    }

    /// Decides `command`, records the events if it is accepted, and returns the decision.
    pub fn decide(&mut self, command: A::Command) -> Result<Vec<A::Event>, DomainError> {
        let events = A::decide(&self.state, &command)?;
        for event in &events {
            self.record(event);
        }
        Ok(events)
    }

    /// `command` must be accepted: its events are recorded and returned (none when it asked
    /// for what is already so).
    ///
    /// # Panics
    /// If it is refused.
    pub fn accept(&mut self, command: A::Command) -> Vec<A::Event> {
        let shown = format!("{command:?}");
        match self.decide(command) {
            Ok(events) => events,
            Err(e) => panic!("{} refused {shown}: {e:?}", A::NAME),
        }
    }

    /// `command` must be refused, changing nothing; returns the refusal.
    ///
    /// # Panics
    /// If it is accepted.
    pub fn refuse(&mut self, command: A::Command) -> DomainError {
        let version = A::version(&self.state);
        let shown = format!("{command:?}");
        let refusal = match self.decide(command) {
            Ok(events) => panic!("{} accepted {shown}: {events:?}", A::NAME),
            Err(e) => e,
        };
        assert_eq!(
            A::version(&self.state),
            version,
            "a refused command appends nothing"
        );
        refusal
    }

    fn record(&mut self, event: &A::Event) {
        let sequence = A::version(&self.state) + 1;
        self.state = match A::apply_recorded(self.state.clone(), sequence, event) {
            Ok(state) => state,
            Err(e) => panic!("{} cannot record {event:?}: {e}", A::NAME),
        };
    }
}

/// A command decided in a [`Scenario`], waiting to be told what was expected.
#[must_use = "a decision is checked by `then` or `then_err`"]
pub struct When<A: Aggregate> {
    scenario: Scenario<A>,
    command: A::Command,
    decision: Result<Vec<A::Event>, DomainError>,
}

impl<A: Aggregate> When<A> {
    /// The command is accepted with exactly these events; they are recorded, and the
    /// scenario goes on.
    ///
    /// # Panics
    /// If it is refused, or causes other events.
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> Scenario<A> {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let When {
            scenario,
            command,
            decision,
        } = self;
        match decision {
            Ok(events) => {
                assert_eq!(events, expected, "the events of {command:?}");
                scenario.given(events)
            }
            Err(e) => panic!("{} refused {command:?}: {e:?}", A::NAME),
        }
    }

    /// The command is refused with exactly `expected`; the scenario goes on, unchanged.
    ///
    /// # Panics
    /// If it is accepted, or refused otherwise.
    pub fn then_err(self, expected: DomainError) -> Scenario<A> {
        match self.decision {
            Ok(events) => panic!("{} accepted {:?}: {events:?}", A::NAME, self.command),
            Err(e) => {
                assert_eq!(e, expected, "the refusal of {:?}", self.command);
                self.scenario
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::Scenario;
    use crate::*;

    fn east() -> TeamCreated {
        TeamCreated {
            team_id: TeamId(Uuid::from_u128(1)),
            name: "east".into(),
        }
    }

    fn join(member: &str) -> AddTeamMember {
        AddTeamMember {
            team_id: TeamId(Uuid::from_u128(1)),
            member: UserId::new(member),
        }
    }

    fn organisation() -> Scenario<Organisation> {
        Scenario::new(organisation_stream())
    }

    #[test]
    fn given_events_then_the_events_of_the_command() {
        let s = organisation()
            .given([east().into()])
            .when(join("am-li").into())
            .then([TeamMemberAdded {
                team_id: TeamId(Uuid::from_u128(1)),
                member: UserId::new("am-li"),
            }
            .into()]);
        assert_eq!(s.state().version, 2);
        assert_eq!(
            s.state()
                .team_of_member(&UserId::new("am-li"))
                .map(|(_, t)| t.name.as_str()),
            Some("east")
        );
    }

    #[test]
    #[should_panic(expected = "organisation refused")]
    fn then_fails_on_a_refusal() {
        let _ = organisation().when(join("am-li").into()).then([]);
    }

    #[test]
    #[should_panic(expected = "organisation accepted")]
    fn then_err_fails_on_an_acceptance() {
        let _ = organisation()
            .given([east().into()])
            .when(join("am-li").into())
            .then_err(DomainError::CustomerNotRegistered);
    }

    #[test]
    #[should_panic(expected = "customer cannot record")]
    fn given_events_must_be_of_the_stream() {
        let _ = Scenario::<Customer>::new(CustomerId(Uuid::from_u128(1))).given([ContactRemoved {
            customer_id: CustomerId(Uuid::from_u128(2)),
            contact_id: ContactId(Uuid::from_u128(10)),
        }
        .into()]);
    }
}
