//! Lists: one SQL query per list, answered as a JSON page (keyset pagination with an opaque
//! cursor) or as a CSV stream of every matching row. Each row is read as `to_jsonb` of the
//! list's derived table `t`, so JSON and CSV come from the same values.
//!
//! Keyset pagination orders by the sort key and a unique tiebreaker and continues strictly
//! after the last row's keys: a row inserted or deleted between two pages shifts nothing, so
//! rows that exist throughout are never skipped nor repeated.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use infra::problem::Problem;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use sqlx::{FromRow, PgPool, Postgres};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::{QueryError, Result};
use crate::params::Params;

/// Rows per page when `limit` is absent, and the most a page may hold.
pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;
/// CSV bytes gathered before a chunk goes out.
const CSV_CHUNK: usize = 32 * 1024;

/// A value bound to a query placeholder.
#[derive(Debug, Clone)]
pub enum Bind {
    Text(String),
    Texts(Vec<String>),
    /// A `text[]` or NULL (e.g. the owners a caller sees; NULL: every customer).
    OptTexts(Option<Vec<String>>),
    Uuid(Uuid),
    Time(DateTime<Utc>),
    Date(NaiveDate),
    Int(i64),
}

pub(crate) fn bind_all<'q, O>(
    mut q: QueryAs<'q, Postgres, O, PgArguments>,
    binds: &[Bind],
) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> FromRow<'r, PgRow>,
{
    for b in binds {
        q = match b {
            Bind::Text(v) => q.bind(v.clone()),
            Bind::Texts(v) => q.bind(v.clone()),
            Bind::OptTexts(v) => q.bind(v.clone()),
            Bind::Uuid(v) => q.bind(*v),
            Bind::Time(v) => q.bind(*v),
            Bind::Date(v) => q.bind(*v),
            Bind::Int(v) => q.bind(*v),
        };
    }
    q
}

/// How a paginated list may be sorted: named keys and the unique tiebreaker after them.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    /// (name in `sort=`, SQL expression over `t`, SQL type)
    pub sorts: &'static [(&'static str, &'static str, &'static str)],
    /// The default `sort=` value (`-` prefix: descending).
    pub default: &'static str,
    /// (SQL expression over `t`, SQL type), unique within the list.
    pub tiebreak: (&'static str, &'static str),
}

impl Paging {
    pub fn sort_names(&self) -> Vec<&'static str> {
        self.sorts.iter().map(|(n, _, _)| *n).collect()
    }
}

/// What an opaque cursor holds: the last row's keys, for this sort and these filters.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    /// the `sort=` value
    s: String,
    /// hash of the route and every other parameter
    f: String,
    /// the last row's key values, as text
    k: Vec<String>,
}

/// FNV-1a, 64 bits: stable across builds (for cursors and ETags).
pub fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn bad_cursor(detail: &str) -> Problem {
    Problem::bad_parameter("cursor", detail)
}

fn decode_cursor(text: &str) -> Result<Cursor, Problem> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| bad_cursor("not a cursor returned by this service"))?;
    serde_json::from_slice(&bytes).map_err(|_| bad_cursor("not a cursor returned by this service"))
}

fn encode_cursor(c: &Cursor) -> Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(serde_json::to_vec(c)?))
}

/// The keyset part of a paginated query.
#[derive(Debug, Clone)]
struct Keyset {
    keys: Vec<(&'static str, &'static str)>,
    sort: String,
    fingerprint: String,
}

/// One list query, built by a handler.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Column names in CSV order (the derived table's columns).
    pub columns: &'static [&'static str],
    inner: String,
    filters: Vec<String>,
    binds: Vec<Bind>,
    order: String,
    keyset: Option<Keyset>,
    limit: Option<i64>,
    /// Extra fields of the JSON answer beside `items`.
    pub envelope: Map<String, Value>,
}

/// A JSON page.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Value>,
    pub next_cursor: Option<String>,
}

impl ListQuery {
    pub fn new(columns: &'static [&'static str]) -> Self {
        ListQuery {
            columns,
            inner: String::new(),
            filters: Vec::new(),
            binds: Vec::new(),
            order: String::new(),
            keyset: None,
            limit: None,
            envelope: Map::new(),
        }
    }

    /// Adds a bound value; returns its placeholder (`$n`).
    pub fn bind(&mut self, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", self.binds.len())
    }

    /// The derived table `t`: a SELECT with exactly the `columns`.
    pub fn from(&mut self, inner: String) -> &mut Self {
        self.inner = inner;
        self
    }

    pub fn filter(&mut self, condition: String) -> &mut Self {
        self.filters.push(condition);
        self
    }

    /// `expr = ANY(values)` when values are given.
    pub fn any_of(&mut self, expr: &str, values: Vec<String>) -> &mut Self {
        if !values.is_empty() {
            let p = self.bind(Bind::Texts(values));
            self.filters.push(format!("{expr} = ANY({p}::text[])"));
        }
        self
    }

    pub fn eq_uuid(&mut self, expr: &str, value: Option<Uuid>) -> &mut Self {
        if let Some(v) = value {
            let p = self.bind(Bind::Uuid(v));
            self.filters.push(format!("{expr} = {p}"));
        }
        self
    }

    /// `expr >= from` and `expr < to` for the bounds given.
    pub fn time_range(
        &mut self,
        expr: &str,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> &mut Self {
        if let Some(f) = from {
            let p = self.bind(Bind::Time(f));
            self.filters.push(format!("{expr} >= {p}"));
        }
        if let Some(t) = to {
            let p = self.bind(Bind::Time(t));
            self.filters.push(format!("{expr} < {p}"));
        }
        self
    }

    /// A fixed order, for lists that are not paginated.
    pub fn order(&mut self, order: &str) -> &mut Self {
        self.order = order.to_owned();
        self
    }

    /// Keyset pagination from the `sort`, `cursor` and `limit` parameters.
    pub fn paginate(&mut self, route: &str, paging: &Paging, params: &Params) -> Result<()> {
        let sort = params
            .text("sort")
            .unwrap_or_else(|| paging.default.to_owned());
        let descending = sort.starts_with('-');
        let name = sort.trim_start_matches('-');
        let Some((_, expr, ty)) = paging.sorts.iter().find(|(n, _, _)| *n == name) else {
            return Err(
                Problem::bad_parameter("sort", format!("`{sort}` is not a sort key")).into(),
            );
        };
        let mut keys = vec![(*expr, *ty)];
        if *expr != paging.tiebreak.0 {
            keys.push(paging.tiebreak);
        }
        let fingerprint = format!(
            "{:016x}",
            fnv64(format!("{route}?{}", params.fingerprint()).as_bytes())
        );
        let dir = if descending { "DESC" } else { "ASC" };
        self.order = keys
            .iter()
            .map(|(e, _)| format!("{e} {dir}"))
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(text) = params.text("cursor") {
            let c = decode_cursor(&text)?;
            if c.s != sort {
                return Err(bad_cursor(&format!(
                    "the cursor was made for sort={}, not sort={sort}",
                    c.s
                ))
                .into());
            }
            if c.f != fingerprint || c.k.len() != keys.len() {
                return Err(bad_cursor(
                    "the cursor was made for other filters; start again without it",
                )
                .into());
            }
            let mut lhs = Vec::new();
            let mut rhs = Vec::new();
            for ((e, ty), v) in keys.iter().zip(c.k) {
                let p = self.bind(Bind::Text(v));
                lhs.push((*e).to_owned());
                rhs.push(format!("CAST({p} AS {ty})"));
            }
            let op = if descending { "<" } else { ">" };
            self.filters
                .push(format!("({}) {op} ({})", lhs.join(", "), rhs.join(", ")));
        }
        self.limit = params.int("limit")?;
        self.keyset = Some(Keyset {
            keys,
            sort,
            fingerprint,
        });
        Ok(())
    }

    fn sql(&self, limit: Option<i64>) -> String {
        let keys = match &self.keyset {
            Some(k) => format!(
                "ARRAY[{}]::text[]",
                k.keys
                    .iter()
                    .map(|(e, _)| format!("({e})::text"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "ARRAY[]::text[]".to_owned(),
        };
        // the rows are chosen (filtered, ordered, limited) first, and only those of the page
        // turned into JSON: whatever plan PostgreSQL picks, it serialises a page, not every
        // row it sorted
        let mut rows = format!("SELECT t.* FROM ({}) t", self.inner);
        if !self.filters.is_empty() {
            rows.push_str(" WHERE ");
            rows.push_str(&self.filters.join(" AND "));
        }
        if !self.order.is_empty() {
            rows.push_str(" ORDER BY ");
            rows.push_str(&self.order);
        }
        if let Some(n) = limit {
            rows.push_str(&format!(" LIMIT {n}"));
        }
        let mut sql = format!("SELECT to_jsonb(t) AS row, {keys} AS keys FROM ({rows}) t");
        if !self.order.is_empty() {
            sql.push_str(" ORDER BY ");
            sql.push_str(&self.order);
        }
        sql
    }

    /// One JSON page: `limit` rows (default [`DEFAULT_LIMIT`]) and the cursor of the next page,
    /// or every row when the list is not paginated.
    pub async fn page(&self, pool: &PgPool) -> Result<Page> {
        let limit = self
            .keyset
            .as_ref()
            .map(|_| self.limit.unwrap_or(DEFAULT_LIMIT));
        let sql = self.sql(limit.map(|n| n + 1));
        let mut rows: Vec<(Value, Vec<String>)> = bind_all(sqlx::query_as(&sql), &self.binds)
            .fetch_all(pool)
            .await?;
        let mut next_cursor = None;
        if let (Some(n), Some(k)) = (limit, &self.keyset) {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if rows.len() > n {
                rows.truncate(n);
                if let Some((_, keys)) = rows.last() {
                    next_cursor = Some(encode_cursor(&Cursor {
                        s: k.sort.clone(),
                        f: k.fingerprint.clone(),
                        k: keys.clone(),
                    })?);
                }
            }
        }
        Ok(Page {
            items: rows.into_iter().map(|(v, _)| v).collect(),
            next_cursor,
        })
    }

    /// The JSON answer: the envelope, `items` and (when paginated) `next_cursor`.
    pub async fn json(&self, pool: &PgPool) -> Result<Response> {
        let page = self.page(pool).await?;
        let mut body = self.envelope.clone();
        body.insert("items".into(), Value::Array(page.items));
        if self.keyset.is_some() {
            body.insert(
                "next_cursor".into(),
                page.next_cursor.map(Value::String).unwrap_or(Value::Null),
            );
        }
        Ok(axum::Json(Value::Object(body)).into_response())
    }

    /// Every matching row (after `cursor`, at most `limit` when given) as CSV, streamed from
    /// the database as it is read. A failure before the first row is a problem+json answer;
    /// a failure later cuts the stream (the status was sent already).
    pub async fn csv(&self, pool: &PgPool, filename: &str) -> Result<Response> {
        let sql = self.sql(self.limit);
        let binds = self.binds.clone();
        let columns = self.columns;
        let pool = pool.clone();
        let (tx, mut rx) = mpsc::channel::<Result<Bytes, QueryError>>(4);
        tokio::spawn(async move {
            let mut buf = String::with_capacity(CSV_CHUNK + 1024);
            csv_record(&mut buf, columns.iter().map(|c| (*c).to_owned()));
            let mut first = true;
            let mut rows =
                bind_all(sqlx::query_as::<_, (Value, Vec<String>)>(&sql), &binds).fetch(&pool);
            while let Some(row) = rows.next().await {
                match row {
                    Ok((v, _)) => {
                        csv_record(&mut buf, columns.iter().map(|c| csv_cell(v.get(*c))));
                        if first || buf.len() >= CSV_CHUNK {
                            first = false;
                            let chunk = Bytes::from(std::mem::take(&mut buf));
                            if tx.send(Ok(chunk)).await.is_err() {
                                return; // the client went away
                            }
                        }
                    }
                    Err(e) => {
                        if !first {
                            tracing::warn!(error = %e, "CSV stream cut by a database error");
                        }
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
            if !buf.is_empty() {
                let _ = tx.send(Ok(Bytes::from(buf))).await;
            }
        });
        let first = match rx.recv().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => return Err(e),
            None => Bytes::new(),
        };
        let rest = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|item| (item.map_err(|e| std::io::Error::other(e.to_string())), rx))
        });
        let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(rest);
        let mut response = (StatusCode::OK, Body::from_stream(body)).into_response();
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8; header=present"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}.csv\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        Ok(response)
    }
}

/// A JSON value as a CSV cell: text as is, numbers and booleans as JSON writes them, null
/// empty, arrays and objects as JSON. Text that a spreadsheet would run as a formula (it
/// starts with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading `'`, which
/// spreadsheets show as text: a customer named `=HYPERLINK(...)` stays a name (OWASP's CSV
/// injection advice).
pub fn csv_cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => {
            format!("'{s}")
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(other) => other.to_string(),
    }
}

/// Appends one RFC 4180 record (CRLF-terminated; fields with `,`, `"`, CR or LF quoted).
pub fn csv_record(out: &mut String, fields: impl Iterator<Item = String>) {
    for (i, f) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        if f.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&f.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(&f);
        }
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut out = String::new();
        csv_record(
            &mut out,
            ["a", "b,c", "say \"hi\"", "two\nlines", ""]
                .iter()
                .map(|s| (*s).to_owned()),
        );
        assert_eq!(out, "a,\"b,c\",\"say \"\"hi\"\"\",\"two\nlines\",\r\n");
    }

    #[test]
    fn formulas_are_neutralised_numbers_are_not() {
        use serde_json::json;
        for (text, cell) in [
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "'=HYPERLINK(\"http://x\",\"y\")",
            ),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("杭州远景", "杭州远景"),
            ("a=b", "a=b"),
        ] {
            assert_eq!(csv_cell(Some(&json!(text))), cell);
        }
        assert_eq!(csv_cell(Some(&json!(-5))), "-5");
    }

    #[test]
    fn cursors_round_trip() {
        let c = Cursor {
            s: "-name".into(),
            f: "ab".into(),
            k: vec!["Acme, Inc.".into(), "x".into()],
        };
        let text = encode_cursor(&c).ok();
        let back = text.as_deref().map(decode_cursor);
        assert!(
            matches!(back, Some(Ok(Cursor { ref s, ref k, .. })) if s == "-name" && k.len() == 2)
        );
        assert!(decode_cursor("not a cursor!").is_err());
    }
}
