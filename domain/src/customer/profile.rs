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

#[cfg(test)]
mod tests {
    use crate::customer::fixtures::*;
    use crate::scenario::Scenario;
    use crate::*;

    #[test]
    fn a_customer_registers_once() {
        let s = Scenario::registered();
        assert_eq!(s.state().version, 1);
        s.when(Command::RegisterCustomer(RegisterCustomer {
            profile: profile(),
            owner: UserId::new("am-li"),
        }))
        .then_err(DomainError::CustomerAlreadyRegistered);
        assert_eq!(
            DomainError::CustomerAlreadyRegistered.kind(),
            ErrorKind::Conflict
        );
    }

    #[test]
    fn ratings_are_one_to_five() {
        for (credit, satisfaction, field) in [
            (0, 3, "profile.credit"),
            (6, 3, "profile.credit"),
            (3, 9, "profile.satisfaction"),
        ] {
            let mut s = Scenario::customer();
            let e = s.refuse(Command::RegisterCustomer(RegisterCustomer {
                profile: CustomerProfile {
                    credit,
                    satisfaction,
                    ..profile()
                },
                owner: UserId::new("am-li"),
            }));
            assert_eq!(invalid_field(&e), field);
        }
    }

    #[test]
    fn a_customer_needs_a_name_and_an_owner() {
        let mut s = Scenario::customer();
        let e = s.refuse(Command::RegisterCustomer(RegisterCustomer {
            profile: CustomerProfile {
                name: "  ".into(),
                ..profile()
            },
            owner: UserId::new("am-li"),
        }));
        assert_eq!(invalid_field(&e), "profile.name");
        let e = s.refuse(Command::RegisterCustomer(RegisterCustomer {
            profile: profile(),
            owner: UserId::new(""),
        }));
        assert_eq!(invalid_field(&e), "owner");
    }

    #[test]
    fn registration_amounts_are_not_negative() {
        let mut s = Scenario::customer();
        let e = s.refuse(Command::RegisterCustomer(RegisterCustomer {
            profile: CustomerProfile {
                registration: Registration {
                    annual_turnover: Some(-1),
                    ..Registration::default()
                },
                ..profile()
            },
            owner: UserId::new("am-li"),
        }));
        assert_eq!(invalid_field(&e), "profile.registration.annual_turnover");
    }

    #[test]
    fn a_profile_change_carries_only_the_changed_fields() {
        let mut s = Scenario::registered();
        let events = s.accept(Command::ChangeProfile(ChangeProfile {
            changes: ProfilePatch {
                name: Some(Some(profile().name)), // unchanged
                level: Some(Some(CustomerLevel::StrategicPartner)),
                credit: Some(Some(4)), // unchanged
                ..ProfilePatch::default()
            },
        }));
        let [CustomerEvent::ProfileChanged(e)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(
            e.changes,
            ProfileChanges {
                level: Some(CustomerLevel::StrategicPartner),
                ..ProfileChanges::default()
            }
        );
        assert_eq!(
            s.state().profile.as_ref().unwrap().level,
            CustomerLevel::StrategicPartner
        );
    }

    #[test]
    fn a_change_to_the_current_values_appends_nothing() {
        Scenario::registered()
            .when(Command::ChangeProfile(ChangeProfile {
                changes: ProfilePatch {
                    region: Some(Some(profile().region)),
                    ..ProfilePatch::default()
                },
            }))
            .then([])
            .when(Command::ReassignOwner(ReassignOwner {
                to: UserId::new("am-li"),
            }))
            .then([]);
    }

    #[test]
    fn profile_changes_are_validated() {
        let mut s = Scenario::registered();
        let e = s.refuse(Command::ChangeProfile(ChangeProfile {
            changes: ProfilePatch {
                satisfaction: Some(Some(0)),
                ..ProfilePatch::default()
            },
        }));
        assert_eq!(invalid_field(&e), "changes.satisfaction");
        // a required field cannot be cleared
        let e = s.refuse(Command::ChangeProfile(ChangeProfile {
            changes: ProfilePatch {
                name: Some(None),
                ..ProfilePatch::default()
            },
        }));
        assert_eq!(invalid_field(&e), "changes.name");
    }

    /// `PATCH /v1/customers/{id}` is JSON Merge Patch (RFC 7396). The defect: after registering
    /// with 14 registration fields, `{"registration": {"phone": "123"}}` left only the phone,
    /// and `{"fax": null}` then left nothing.
    #[test]
    fn a_profile_change_merges_the_registration_block() {
        let mut s = Scenario::customer();
        let full: Registration = serde_json::from_value(serde_json::json!({
            "address": "杭州市西湖区文三路 1 号", "postcode": "310012", "phone": "0571-1", "fax": "0571-2",
            "website": "https://example.cn", "licence_number": "L-1", "legal_representative": "王",
            "registered_capital": 100, "annual_turnover": 200, "currency": "CNY", "bank": "工行",
            "bank_account": "6222", "local_tax_number": "T-L", "national_tax_number": "T-N"
        }))
        .unwrap();
        s.accept(Command::RegisterCustomer(RegisterCustomer {
            profile: CustomerProfile {
                registration: full.clone(),
                number: Some("C-1".into()),
                ..profile()
            },
            owner: UserId::new("am-li"),
        }));
        // one field set: the event carries exactly it; the other 13 stay
        let patch = |v: serde_json::Value| -> Command {
            Command::ChangeProfile(serde_json::from_value(v).unwrap())
        };
        let events = s.accept(patch(
            serde_json::json!({"changes": {"registration": {"phone": "123"}}}),
        ));
        let [CustomerEvent::ProfileChanged(e)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(
            e.changes,
            ProfileChanges {
                registration_changes: Some(Box::new(Registration {
                    phone: Some("123".into()),
                    ..Registration::default()
                })),
                ..ProfileChanges::default()
            }
        );
        let expected = Registration {
            phone: Some("123".into()),
            ..full.clone()
        };
        assert_eq!(s.state().profile.as_ref().unwrap().registration, expected);
        // null clears one optional field, and only it
        let events = s.accept(patch(
            serde_json::json!({"changes": {"registration": {"fax": null}}}),
        ));
        let [CustomerEvent::ProfileChanged(e)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(e.changes.cleared, vec!["registration.fax".to_owned()]);
        assert_eq!(e.changes.registration_changes, None);
        let expected = Registration {
            fax: None,
            ..expected
        };
        assert_eq!(s.state().profile.as_ref().unwrap().registration, expected);
        // clearing what is already clear, or setting what is already so, appends nothing
        assert!(s
            .accept(patch(
                serde_json::json!({"changes": {"registration": {"fax": null, "phone": "123"}}})
            ))
            .is_empty());
        // number: null clears it
        let events = s.accept(patch(serde_json::json!({"changes": {"number": null}})));
        let [CustomerEvent::ProfileChanged(e)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(e.changes.cleared, vec!["number".to_owned()]);
        assert_eq!(s.state().profile.as_ref().unwrap().number, None);
        // registration: null clears the whole block, naming each field cleared
        let events = s.accept(patch(
            serde_json::json!({"changes": {"registration": null}}),
        ));
        let [CustomerEvent::ProfileChanged(e)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(e.changes.cleared.len(), 13);
        assert_eq!(
            s.state().profile.as_ref().unwrap().registration,
            Registration::default()
        );
        // an unknown registration field is refused, naming it
        assert!(serde_json::from_value::<ChangeProfile>(
            serde_json::json!({"changes": {"registration": {"telex": "1"}}})
        )
        .is_err());
    }

    #[test]
    fn reassigning_the_owner_records_from_and_to() {
        let s = Scenario::registered()
            .when(Command::ReassignOwner(ReassignOwner {
                to: UserId::new("am-zhao"),
            }))
            .then([CustomerEvent::OwnerReassigned(OwnerReassigned {
                customer_id: CustomerId(id(1)),
                from: UserId::new("am-li"),
                to: UserId::new("am-zhao"),
            })]);
        assert_eq!(s.state().owner, Some(UserId::new("am-zhao")));
    }
}
