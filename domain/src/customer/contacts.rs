//! A customer's contacts (联系人): added, changed and removed.

use super::{contact, one, Decision};
use crate::command::{AddContact, ChangeContact, RemoveContact};
use crate::event::{ContactAdded, ContactChanged, ContactRemoved};
use crate::rules::{exists, non_empty};
use crate::state::CustomerState;
use crate::values::{ContactChanges, ContactDetails};

/// A new contact, under an id not used yet, with a name.
pub(super) fn add_contact(state: &CustomerState, c: &AddContact) -> Decision {
    if state.contacts.contains_key(&c.contact_id) {
        return Err(exists("contact", "contact_id", c.contact_id));
    }
    non_empty(&c.contact.name, "contact.name")?;
    one(ContactAdded {
        customer_id: state.customer_id,
        contact_id: c.contact_id,
        contact: c.contact.clone(),
    })
}

/// A change of a contact; the event carries only what differs.
pub(super) fn change_contact(state: &CustomerState, c: &ChangeContact) -> Decision {
    let current = contact(state, c.contact_id, "contact_id")?;
    let changes = contact_diff(current, &c.changes);
    if let Some(name) = &changes.name {
        non_empty(name, "changes.name")?;
    }
    if changes.is_empty() {
        return Ok(vec![]);
    }
    one(ContactChanged {
        customer_id: state.customer_id,
        contact_id: c.contact_id,
        changes,
    })
}

/// An existing contact removed.
pub(super) fn remove_contact(state: &CustomerState, c: &RemoveContact) -> Decision {
    contact(state, c.contact_id, "contact_id")?;
    one(ContactRemoved {
        customer_id: state.customer_id,
        contact_id: c.contact_id,
    })
}

/// Keeps only the fields that differ from the current contact.
fn contact_diff(current: &ContactDetails, wanted: &ContactChanges) -> ContactChanges {
    let opt =
        |cur: &Option<String>, w: &Option<String>| changed(cur, &w.clone().map(Some)).flatten();
    ContactChanges {
        name: changed(&current.name, &wanted.name),
        gender: changed(&current.gender, &wanted.gender.map(Some)).flatten(),
        position: opt(&current.position, &wanted.position),
        office_phone: opt(&current.office_phone, &wanted.office_phone),
        mobile: opt(&current.mobile, &wanted.mobile),
        email: opt(&current.email, &wanted.email),
        memo: opt(&current.memo, &wanted.memo),
    }
}

fn changed<T: Clone + PartialEq>(current: &T, wanted: &Option<T>) -> Option<T> {
    wanted.as_ref().filter(|w| *w != current).cloned()
}

#[cfg(test)]
mod tests {
    use crate::customer::fixtures::*;
    use crate::scenario::Scenario;
    use crate::*;

    #[test]
    fn contacts_are_added_changed_and_removed() {
        let mut s = Scenario::registered().with_contact();
        let c = ContactId(id(10));
        let e = s.refuse(Command::AddContact(AddContact {
            contact_id: c,
            contact: s.state().contacts[&c].clone(),
        }));
        assert_eq!(e.kind(), ErrorKind::Conflict);
        s.accept(Command::ChangeContact(ChangeContact {
            contact_id: c,
            changes: ContactChanges {
                position: Some("总经理".into()),
                ..ContactChanges::default()
            },
        }));
        assert_eq!(s.state().contacts[&c].position.as_deref(), Some("总经理"));
        s.accept(Command::RemoveContact(RemoveContact { contact_id: c }));
        let e = s.refuse(Command::RemoveContact(RemoveContact { contact_id: c }));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.field(), Some("contact_id"));
    }
}
