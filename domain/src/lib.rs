//! # The CRM domain
//!
//! One stream per customer. Everything that happens to a customer — a call, an email, a stage
//! change in the funnel, an order, a service request, a churn warning — is a
//! [`CustomerEvent`] in that customer's stream. A [`Command`] asks for a change;
//! [`decide`] accepts or refuses it against the customer's [`CustomerState`] and names the
//! events it causes; [`evolve`] folds an event into the state. Policies (stage thresholds,
//! RFM, the churn rule) are pure functions in [`policy`]. The [`envelope`] puts events on the
//! wire as CloudEvents. The [`organisation`] stream holds the sales teams, and [`access`] the
//! roles, the permission table and record visibility. Nothing here does I/O.
//!
//! [`scenario`] tests any stream given / when / then; the rules of each area of [`decide`]
//! are tested that way beside it.
//!
//! ```
//! use domain::*;
//! let state = CustomerState::new(CustomerId(uuid::Uuid::nil()));
//! let refused = decide(&state, &Command::ConfirmChurn(ConfirmChurn { reason: "moved".into() }));
//! assert_eq!(refused, Err(DomainError::CustomerNotRegistered));
//! ```

pub mod access;
pub mod command;
pub mod customer;
pub mod envelope;
pub mod error;
pub mod event;
pub mod ids;
pub mod limits;
pub mod ndjson;
pub mod organisation;
pub mod policy;
mod rules;
pub mod scenario;
pub mod schema;
pub mod state;
pub mod stream;
pub mod upcast;
pub mod values;

pub use command::*;
pub use customer::{decide, Customer};
pub use envelope::{
    EventMetadata, KafkaRecord, Recorded, RecordedEvent, RecordedOrganisationEvent, StreamEvent,
};
pub use error::{DomainError, ErrorKind};
pub use event::*;
pub use ids::*;
pub use organisation::*;
pub use state::{evolve, CustomerState};
pub use stream::{Aggregate, CommandName, Commands, Events, StreamKey};
pub use values::*;
