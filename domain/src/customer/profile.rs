//! Registering a customer, changing their profile and reassigning their owner.

use super::{one, Decision};
use crate::command::{ChangeProfile, ReassignOwner, RegisterCustomer};
use crate::error::DomainError;
use crate::event::{CustomerRegistered, OwnerReassigned, ProfileChanged};
use crate::ids::UserId;
use crate::rules::{currency, non_empty, rating};
use crate::state::CustomerState;
use crate::values::*;

/// A customer registers once, with a valid profile and an owner.
pub(super) fn register(state: &CustomerState, c: &RegisterCustomer) -> Decision {
    if state.is_registered() {
        return Err(DomainError::CustomerAlreadyRegistered);
    }
    validate_profile(&c.profile, "profile")?;
    non_empty(&c.owner.0, "owner")?;
    one(CustomerRegistered {
        customer_id: state.customer_id,
        profile: c.profile.clone(),
        owner: c.owner.clone(),
    })
}

/// A merge patch of the `current` profile; the event carries only what changes.
pub(super) fn change_profile(
    state: &CustomerState,
    current: &CustomerProfile,
    c: &ChangeProfile,
) -> Decision {
    let changes = profile_diff(current, &c.changes)?;
    validate_profile_changes(&changes)?;
    if changes.is_empty() {
        return Ok(vec![]);
    }
    one(ProfileChanged {
        customer_id: state.customer_id,
        changes,
    })
}

/// A new owner; the current one again changes nothing.
pub(super) fn reassign_owner(state: &CustomerState, c: &ReassignOwner) -> Decision {
    non_empty(&c.to.0, "to")?;
    match &state.owner {
        Some(owner) if owner == &c.to => Ok(vec![]),
        owner => one(OwnerReassigned {
            customer_id: state.customer_id,
            from: owner.clone().unwrap_or_else(|| UserId::new("")),
            to: c.to.clone(),
        }),
    }
}

fn validate_profile(profile: &CustomerProfile, prefix: &str) -> Result<(), DomainError> {
    non_empty(&profile.name, &format!("{prefix}.name"))?;
    non_empty(&profile.region, &format!("{prefix}.region"))?;
    rating(profile.credit, &format!("{prefix}.credit"))?;
    rating(profile.satisfaction, &format!("{prefix}.satisfaction"))?;
    validate_registration(&profile.registration, &format!("{prefix}.registration"))
}

fn validate_registration(r: &Registration, prefix: &str) -> Result<(), DomainError> {
    for (value, name) in [
        (r.registered_capital, "registered_capital"),
        (r.annual_turnover, "annual_turnover"),
    ] {
        if value.is_some_and(|v| v < 0) {
            return Err(DomainError::invalid(
                format!("{prefix}.{name}"),
                "must not be negative",
            ));
        }
    }
    if let Some(code) = &r.currency {
        currency(code, &format!("{prefix}.currency"))?;
    }
    Ok(())
}

fn validate_profile_changes(c: &ProfileChanges) -> Result<(), DomainError> {
    if let Some(name) = &c.name {
        non_empty(name, "changes.name")?;
    }
    if let Some(region) = &c.region {
        non_empty(region, "changes.region")?;
    }
    if let Some(v) = c.credit {
        rating(v, "changes.credit")?;
    }
    if let Some(v) = c.satisfaction {
        rating(v, "changes.satisfaction")?;
    }
    if let Some(r) = &c.registration {
        validate_registration(r, "changes.registration")?;
    }
    if let Some(r) = &c.registration_changes {
        validate_registration(r, "changes.registration")?;
    }
    Ok(())
}

/// Applies a merge patch to the current profile and keeps only what differs: the fields set,
/// the registration fields set, and the optional fields cleared.
fn profile_diff(
    current: &CustomerProfile,
    patch: &ProfilePatch,
) -> Result<ProfileChanges, DomainError> {
    fn required<T: Clone + PartialEq>(
        current: &T,
        patch: &Option<Option<T>>,
        field: &str,
    ) -> Result<Option<T>, DomainError> {
        match patch {
            None => Ok(None),
            Some(None) => Err(DomainError::invalid(
                format!("changes.{field}"),
                "is required and cannot be cleared (null)",
            )),
            Some(Some(v)) => Ok(Some(v.clone()).filter(|v| v != current)),
        }
    }
    let mut cleared = Vec::new();
    let number = match &patch.number {
        None => None,
        Some(None) => {
            if current.number.is_some() {
                cleared.push("number".to_owned());
            }
            None
        }
        Some(Some(n)) => Some(n.clone()).filter(|n| current.number.as_ref() != Some(n)),
    };
    let mut registration_changes = None;
    let registration_patch = match &patch.registration {
        None => None,
        // null: every registration field cleared
        Some(None) => Some(serde_json::Map::new()),
        Some(Some(p)) => match serde_json::to_value(p) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            _ => None,
        },
    };
    if let Some(members) = registration_patch {
        let current_map = match serde_json::to_value(&current.registration) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let clear_all = patch.registration == Some(None);
        let mut set = serde_json::Map::new();
        for (k, v) in &members {
            if v.is_null() {
                if current_map.contains_key(k) {
                    cleared.push(format!("registration.{k}"));
                }
            } else if current_map.get(k) != Some(v) {
                set.insert(k.clone(), v.clone());
            }
        }
        if clear_all {
            cleared.extend(current_map.keys().map(|k| format!("registration.{k}")));
        }
        if !set.is_empty() {
            registration_changes = Some(Box::new(
                serde_json::from_value::<Registration>(serde_json::Value::Object(set))
                    .map_err(|e| DomainError::invalid("changes.registration", e.to_string()))?,
            ));
        }
    }
    Ok(ProfileChanges {
        number,
        name: required(&current.name, &patch.name, "name")?,
        region: required(&current.region, &patch.region, "region")?,
        industry: required(&current.industry, &patch.industry, "industry")?,
        level: required(&current.level, &patch.level, "level")?,
        credit: required(&current.credit, &patch.credit, "credit")?,
        satisfaction: required(&current.satisfaction, &patch.satisfaction, "satisfaction")?,
        registration: None,
        registration_changes,
        cleared,
    })
}
