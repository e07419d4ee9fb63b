//! Rows that only accumulate (the audit trail, the timeline) go in with one
//! `COPY … FROM STDIN (FORMAT binary)` per batch: PostgreSQL's cheapest way in, with no array
//! to build, send and unnest. [`CopyRows`] writes them in the binary COPY format
//! (<https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>) as the batch is
//! read, and sends them on the batch's transaction.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{ProjectionError, Result};

/// The signature, flags and header-extension length that open every binary COPY stream.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// The format version byte that starts a `jsonb` value.
const JSONB_VERSION: u8 = 1;

/// Rows for one table, in the binary COPY format.
pub(crate) struct CopyRows {
    table: &'static str,
    columns: &'static [&'static str],
    buf: Vec<u8>,
    rows: usize,
}

/// One row being written: each call appends the next column's value, in `columns` order.
pub(crate) struct CopyRow<'a> {
    buf: &'a mut Vec<u8>,
    fields: usize,
}

impl CopyRows {
    /// Rows for `table`, each with a value for every one of `columns`, in that order.
    pub fn new(table: &'static str, columns: &'static [&'static str]) -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(HEADER);
        CopyRows {
            table,
            columns,
            buf,
            rows: 0,
        }
    }

    /// Appends one row that `write` fills; an error if it wrote another number of values than
    /// there are columns (nothing is sent then).
    pub fn row(&mut self, write: impl FnOnce(&mut CopyRow<'_>)) -> Result<()> {
        let fields = i16::try_from(self.columns.len())
            .map_err(|_| ProjectionError::OutOfRange(format!("{} columns", self.columns.len())))?;
        self.buf.extend_from_slice(&fields.to_be_bytes());
        let mut row = CopyRow {
            buf: &mut self.buf,
            fields: 0,
        };
        write(&mut row);
        if row.fields != self.columns.len() {
            return Err(ProjectionError::OutOfRange(format!(
                "a row of {} has {} values for {} columns",
                self.table,
                row.fields,
                self.columns.len()
            )));
        }
        self.rows += 1;
        Ok(())
    }

    /// Sends the rows with one `COPY` on `conn`; returns how many PostgreSQL took.
    pub async fn send(mut self, conn: &mut PgConnection) -> Result<u64> {
        if self.rows == 0 {
            return Ok(0);
        }
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        let statement = format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            self.table,
            self.columns
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut copy = conn.copy_in_raw(&statement).await?;
        if let Err(e) = copy.send(self.buf).await {
            // end the COPY so the connection is usable again; the batch rolls back anyway
            let _ = copy.abort(e.to_string()).await;
            return Err(e.into());
        }
        Ok(copy.finish().await?)
    }
}

impl CopyRow<'_> {
    fn value(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let len = i32::try_from(bytes.len()).map_err(|_| ())?;
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(bytes);
        self.fields += 1;
        Ok(())
    }

    fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self.fields += 1;
    }

    pub fn uuid(&mut self, v: Uuid) {
        let _ = self.value(v.as_bytes());
    }

    pub fn opt_uuid(&mut self, v: Option<Uuid>) {
        match v {
            Some(v) => self.uuid(v),
            None => self.null(),
        }
    }

    pub fn int8(&mut self, v: i64) {
        let _ = self.value(&v.to_be_bytes());
    }

    pub fn int4(&mut self, v: i32) {
        let _ = self.value(&v.to_be_bytes());
    }

    /// A text value; one longer than PostgreSQL takes (1 GB) is left out, so the row has a
    /// value too few and [`CopyRows::row`] refuses it.
    pub fn text(&mut self, v: &str) {
        let _ = self.value(v.as_bytes());
    }

    pub fn opt_text(&mut self, v: Option<&str>) {
        match v {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub fn timestamptz(&mut self, v: DateTime<Utc>) {
        let micros = v.timestamp_micros() - PG_EPOCH_MICROS;
        let _ = self.value(&micros.to_be_bytes());
    }

    /// A `jsonb` value from its JSON text (PostgreSQL parses and checks it).
    pub fn jsonb(&mut self, json: &[u8]) {
        let Ok(len) = i32::try_from(json.len() + 1) else {
            return;
        };
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.push(JSONB_VERSION);
        self.buf.extend_from_slice(json);
        self.fields += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_with_a_value_missing_is_refused() {
        let mut rows = CopyRows::new("t", &["a", "b"]);
        assert!(rows.row(|r| r.int8(1)).is_err());
        assert!(rows
            .row(|r| {
                r.int8(1);
                r.opt_text(None);
            })
            .is_ok());
        assert_eq!(rows.rows, 1);
    }

    #[test]
    fn values_are_in_the_binary_format() {
        let mut rows = CopyRows::new("t", &["a", "b", "c"]);
        let at = DateTime::from_timestamp(946_684_800, 1_000).unwrap_or_default();
        rows.row(|r| {
            r.int4(7);
            r.timestamptz(at);
            r.jsonb(b"{}");
        })
        .unwrap_or_default();
        let mut expected = HEADER.to_vec();
        expected.extend_from_slice(&3i16.to_be_bytes());
        expected.extend_from_slice(&4i32.to_be_bytes());
        expected.extend_from_slice(&7i32.to_be_bytes());
        expected.extend_from_slice(&8i32.to_be_bytes());
        expected.extend_from_slice(&1i64.to_be_bytes()); // one microsecond past 2000-01-01
        expected.extend_from_slice(&3i32.to_be_bytes());
        expected.extend_from_slice(b"\x01{}");
        assert_eq!(rows.buf, expected);
    }
}
