//! A customer's contact people (`cst_linkman`). Written event by event (a change follows its
//! addition).

use async_trait::async_trait;
use domain::CustomerEvent as E;
use sqlx::PgConnection;

use super::{to_i64, Batch, Effects, ReadModel};
use crate::describe::gender;
use crate::error::Result;

pub(crate) struct Contacts;

#[async_trait]
impl ReadModel for Contacts {
    fn name(&self) -> &'static str {
        "contacts"
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
        for (_, r) in batch.customer_events() {
            let customer = r.metadata.customer_id.as_uuid();
            match &r.event {
                E::ContactAdded(e) => {
                    let c = &e.contact;
                    sqlx::query(
                        "INSERT INTO contacts (customer_id, contact_id, name, gender, position,
                             office_phone, mobile, email, memo, added_sequence)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                         ON CONFLICT (customer_id, contact_id) DO UPDATE SET
                             name = EXCLUDED.name, gender = EXCLUDED.gender,
                             position = EXCLUDED.position, office_phone = EXCLUDED.office_phone,
                             mobile = EXCLUDED.mobile, email = EXCLUDED.email,
                             memo = EXCLUDED.memo, added_sequence = EXCLUDED.added_sequence",
                    )
                    .bind(customer)
                    .bind(e.contact_id.as_uuid())
                    .bind(&c.name)
                    .bind(c.gender.map(gender))
                    .bind(&c.position)
                    .bind(&c.office_phone)
                    .bind(&c.mobile)
                    .bind(&c.email)
                    .bind(&c.memo)
                    .bind(to_i64(r.metadata.sequence, "sequence")?)
                    .execute(&mut *conn)
                    .await?;
                }
                E::ContactChanged(e) => {
                    let c = &e.changes;
                    sqlx::query(
                        "UPDATE contacts SET name = coalesce($3, name), gender = coalesce($4, gender),
                             position = coalesce($5, position),
                             office_phone = coalesce($6, office_phone),
                             mobile = coalesce($7, mobile), email = coalesce($8, email),
                             memo = coalesce($9, memo)
                          WHERE customer_id = $1 AND contact_id = $2",
                    )
                    .bind(customer)
                    .bind(e.contact_id.as_uuid())
                    .bind(&c.name)
                    .bind(c.gender.map(gender))
                    .bind(&c.position)
                    .bind(&c.office_phone)
                    .bind(&c.mobile)
                    .bind(&c.email)
                    .bind(&c.memo)
                    .execute(&mut *conn)
                    .await?;
                }
                E::ContactRemoved(e) => {
                    sqlx::query("DELETE FROM contacts WHERE customer_id = $1 AND contact_id = $2")
                        .bind(customer)
                        .bind(e.contact_id.as_uuid())
                        .execute(&mut *conn)
                        .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
