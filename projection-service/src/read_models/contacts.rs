//! A customer's contact people (`cst_linkman`). Folded per contact in memory, in event order
//! (added then changed: the whole row; changed only: the fields changed, the last value of each;
//! removed: gone), then written with at most three statements per batch.

use std::collections::HashMap;

use async_trait::async_trait;
use domain::{ContactChanges, ContactDetails, CustomerEvent as E};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{to_i64, Batch, Effects, EventRef, ReadModel};
use crate::describe::gender;
use crate::error::Result;

pub(crate) struct Contacts;

/// What a batch leaves of one contact.
enum Fold {
    /// Added in the batch (and maybe changed after): the whole row, with the sequence it was
    /// added at.
    Row(ContactDetails, i64),
    /// Only changed: the fields to set.
    Changes(ContactChanges),
    Removed,
}

fn merge(into: &mut ContactChanges, c: &ContactChanges) {
    macro_rules! later {
        ($($f:ident),*) => { $( if c.$f.is_some() { into.$f = c.$f.clone(); } )* };
    }
    later!(name, gender, position, office_phone, mobile, email, memo);
}

fn change(row: &mut ContactDetails, c: &ContactChanges) {
    if let Some(name) = &c.name {
        row.name = name.clone();
    }
    macro_rules! later {
        ($($f:ident),*) => { $( if c.$f.is_some() { row.$f = c.$f.clone(); } )* };
    }
    later!(gender, position, office_phone, mobile, email, memo);
}

#[async_trait]
impl ReadModel for Contacts {
    fn name(&self) -> &'static str {
        "contacts"
    }

    fn consumes(&self, event: EventRef<'_>) -> bool {
        matches!(
            event.customer_event(),
            Some(E::ContactAdded(_) | E::ContactChanged(_) | E::ContactRemoved(_))
        )
    }

    fn tables(&self) -> &'static [&'static str] {
        &["contacts"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        _: &mut Effects,
    ) -> Result<()> {
        let mut folds: HashMap<(Uuid, Uuid), Fold> = HashMap::new();
        for (_, r) in batch.customer_events() {
            let customer = r.metadata.customer_id.as_uuid();
            match &r.event {
                E::ContactAdded(e) => {
                    let seq = to_i64(r.metadata.sequence, "sequence")?;
                    folds.insert(
                        (customer, e.contact_id.as_uuid()),
                        Fold::Row(e.contact.clone(), seq),
                    );
                }
                E::ContactChanged(e) => {
                    let key = (customer, e.contact_id.as_uuid());
                    match folds.get_mut(&key) {
                        Some(Fold::Row(row, _)) => change(row, &e.changes),
                        Some(Fold::Changes(into)) => merge(into, &e.changes),
                        // a change after a removal finds no row, as it would in the table
                        Some(Fold::Removed) => {}
                        None => {
                            folds.insert(key, Fold::Changes(e.changes.clone()));
                        }
                    }
                }
                E::ContactRemoved(e) => {
                    folds.insert((customer, e.contact_id.as_uuid()), Fold::Removed);
                }
                _ => {}
            }
        }
        if folds.is_empty() {
            return Ok(());
        }
        let mut rows = Rows::default();
        let mut changes = Rows::default();
        let (mut removed_customer, mut removed_contact) = (Vec::new(), Vec::new());
        for ((customer, contact), fold) in folds {
            match fold {
                Fold::Row(row, seq) => rows.push(customer, contact, &row, seq),
                Fold::Changes(c) => changes.push_changes(customer, contact, &c),
                Fold::Removed => {
                    removed_customer.push(customer);
                    removed_contact.push(contact);
                }
            }
        }
        if !removed_customer.is_empty() {
            sqlx::query(
                "DELETE FROM contacts c USING unnest($1::uuid[], $2::uuid[]) AS r(customer, contact)
                  WHERE c.customer_id = r.customer AND c.contact_id = r.contact",
            )
            .bind(&removed_customer)
            .bind(&removed_contact)
            .execute(&mut *conn)
            .await?;
        }
        if !rows.customer.is_empty() {
            sqlx::query(
                "INSERT INTO contacts (customer_id, contact_id, name, gender, position,
                     office_phone, mobile, email, memo, added_sequence)
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[])
                 ON CONFLICT (customer_id, contact_id) DO UPDATE SET
                     name = EXCLUDED.name, gender = EXCLUDED.gender,
                     position = EXCLUDED.position, office_phone = EXCLUDED.office_phone,
                     mobile = EXCLUDED.mobile, email = EXCLUDED.email,
                     memo = EXCLUDED.memo, added_sequence = EXCLUDED.added_sequence",
            )
            .bind(&rows.customer)
            .bind(&rows.contact)
            .bind(&rows.name)
            .bind(&rows.gender)
            .bind(&rows.position)
            .bind(&rows.office_phone)
            .bind(&rows.mobile)
            .bind(&rows.email)
            .bind(&rows.memo)
            .bind(&rows.added_sequence)
            .execute(&mut *conn)
            .await?;
        }
        if !changes.customer.is_empty() {
            sqlx::query(
                "UPDATE contacts c SET name = coalesce(f.name, c.name),
                     gender = coalesce(f.gender, c.gender),
                     position = coalesce(f.position, c.position),
                     office_phone = coalesce(f.office_phone, c.office_phone),
                     mobile = coalesce(f.mobile, c.mobile), email = coalesce(f.email, c.email),
                     memo = coalesce(f.memo, c.memo)
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                        $6::text[], $7::text[], $8::text[], $9::text[])
                        AS f(customer, contact, name, gender, position, office_phone, mobile,
                             email, memo)
                  WHERE c.customer_id = f.customer AND c.contact_id = f.contact",
            )
            .bind(&changes.customer)
            .bind(&changes.contact)
            .bind(&changes.name)
            .bind(&changes.gender)
            .bind(&changes.position)
            .bind(&changes.office_phone)
            .bind(&changes.mobile)
            .bind(&changes.email)
            .bind(&changes.memo)
            .execute(conn)
            .await?;
        }
        Ok(())
    }
}

/// Contact rows (or changes: absent fields are NULL) as columns, for `unnest`.
#[derive(Default)]
struct Rows {
    customer: Vec<Uuid>,
    contact: Vec<Uuid>,
    name: Vec<Option<String>>,
    gender: Vec<Option<&'static str>>,
    position: Vec<Option<String>>,
    office_phone: Vec<Option<String>>,
    mobile: Vec<Option<String>>,
    email: Vec<Option<String>>,
    memo: Vec<Option<String>>,
    added_sequence: Vec<i64>,
}

impl Rows {
    fn push(&mut self, customer: Uuid, contact: Uuid, row: &ContactDetails, seq: i64) {
        self.customer.push(customer);
        self.contact.push(contact);
        self.name.push(Some(row.name.clone()));
        self.gender.push(row.gender.map(gender));
        self.position.push(row.position.clone());
        self.office_phone.push(row.office_phone.clone());
        self.mobile.push(row.mobile.clone());
        self.email.push(row.email.clone());
        self.memo.push(row.memo.clone());
        self.added_sequence.push(seq);
    }

    fn push_changes(&mut self, customer: Uuid, contact: Uuid, c: &ContactChanges) {
        self.customer.push(customer);
        self.contact.push(contact);
        self.name.push(c.name.clone());
        self.gender.push(c.gender.map(gender));
        self.position.push(c.position.clone());
        self.office_phone.push(c.office_phone.clone());
        self.mobile.push(c.mobile.clone());
        self.email.push(c.email.clone());
        self.memo.push(c.memo.clone());
    }
}
