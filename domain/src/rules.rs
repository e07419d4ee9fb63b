//! The refusals and value rules every `decide` shares: the errors for what is missing, what
//! exists already and a step the current state does not allow, and the checks of strings,
//! ratings and money.

use crate::error::DomainError;
use crate::values::Money;

/// `entity` with `id` (named by `field` in the command) does not exist.
pub(crate) fn not_found(
    entity: &'static str,
    field: &'static str,
    id: impl ToString,
) -> DomainError {
    DomainError::NotFound {
        entity,
        field,
        id: id.to_string(),
    }
}

/// `entity` with `id` (named by `field` in the command) exists already.
pub(crate) fn exists(entity: &'static str, field: &'static str, id: impl ToString) -> DomainError {
    DomainError::AlreadyExists {
        entity,
        field,
        id: id.to_string(),
    }
}

/// `entity` in `state` does not allow `action`.
pub(crate) fn transition(entity: &'static str, state: &str, action: &'static str) -> DomainError {
    DomainError::InvalidTransition {
        entity,
        state: state.to_owned(),
        action,
    }
}

/// `value` is more than white space.
pub(crate) fn non_empty(value: &str, field: &str) -> Result<(), DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    Ok(())
}

/// A rating (credit, satisfaction): 1 to 5.
pub(crate) fn rating(value: u8, field: &str) -> Result<(), DomainError> {
    if !(1..=5).contains(&value) {
        return Err(DomainError::invalid(
            field,
            format!("must be 1 to 5, got {value}"),
        ));
    }
    Ok(())
}

/// An amount that is not negative, in an ISO 4217 currency.
pub(crate) fn validate_money(money: &Money, field: &str) -> Result<(), DomainError> {
    if money.amount < 0 {
        return Err(DomainError::invalid(
            format!("{field}.amount"),
            format!("must not be negative, got {}", money.amount),
        ));
    }
    currency(&money.currency, &format!("{field}.currency"))
}

/// An ISO 4217 currency code: three upper-case letters.
pub(crate) fn currency(code: &str, field: &str) -> Result<(), DomainError> {
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(DomainError::invalid(
            field,
            format!("must be an ISO 4217 code such as CNY, got {code:?}"),
        ));
    }
    Ok(())
}
