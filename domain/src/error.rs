//! Why a command was refused.

/// How a refusal should be answered: the services map these to HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command is malformed or breaks a value rule (a rating of 7, a negative amount).
    Invalid,
    /// The customer, or an entity the command names, does not exist.
    NotFound,
    /// The command is well formed but the current state does not allow it.
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },

    /// Well formed, but the current state does not allow it, for a reason about one field.
    #[error("{field}: {reason}")]
    Conflicting { field: String, reason: String },

    #[error("the customer is not registered")]
    CustomerNotRegistered,

    #[error("the customer is already registered")]
    CustomerAlreadyRegistered,

    #[error("{entity} {id} does not exist")]
    NotFound {
        entity: &'static str,
        field: &'static str,
        id: String,
    },

    #[error("{entity} {id} already exists")]
    AlreadyExists {
        entity: &'static str,
        field: &'static str,
        id: String,
    },

    #[error("{entity} is {state}: cannot {action}")]
    InvalidTransition {
        entity: &'static str,
        state: String,
        action: &'static str,
    },

    #[error("an opportunity moves one stage at a time: {from} -> {to} is not allowed")]
    StageNotAdjacent { from: String, to: String },

    #[error("event {got} is out of sequence: expected {expected}")]
    OutOfSequence { expected: u64, got: u64 },

    #[error("event for customer {got} applied to the stream of {expected}")]
    WrongStream { expected: String, got: String },
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            DomainError::Invalid { .. } | DomainError::StageNotAdjacent { .. } => {
                ErrorKind::Invalid
            }
            DomainError::CustomerNotRegistered | DomainError::NotFound { .. } => {
                ErrorKind::NotFound
            }
            DomainError::CustomerAlreadyRegistered
            | DomainError::Conflicting { .. }
            | DomainError::AlreadyExists { .. }
            | DomainError::InvalidTransition { .. }
            | DomainError::OutOfSequence { .. }
            | DomainError::WrongStream { .. } => ErrorKind::Conflict,
        }
    }

    /// The request field the refusal is about, as a JSON path, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            DomainError::Invalid { field, .. } | DomainError::Conflicting { field, .. } => {
                Some(field)
            }
            DomainError::NotFound { field, .. } | DomainError::AlreadyExists { field, .. } => {
                Some(field)
            }
            DomainError::StageNotAdjacent { .. } => Some("to"),
            _ => None,
        }
    }
}
