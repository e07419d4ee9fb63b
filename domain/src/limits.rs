//! The bounds every command's values keep, so that **every event the command side accepts,
//! every read model can apply** and people can read: no U+0000 in any text (PostgreSQL's
//! `text` and `jsonb` cannot hold it), text lengths per field, list lengths, amounts, dates,
//! and business time within a window around now.
//!
//! The check walks the command's JSON (the same JSON a client sent), so that every string of
//! every command, present or future, is covered without a rule to forget, and the refusal
//! names the field as a JSON path (`profile.registration.phone`, `lines[3].product`).

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::error::DomainError;

/// Most characters of a text field not named in [`TEXT_LIMITS`]: names, numbers, phones,
/// codes, ids.
pub const DEFAULT_TEXT_CHARS: usize = 200;

/// Text fields that may be longer than [`DEFAULT_TEXT_CHARS`], by their name (the last
/// segment of the JSON path).
pub const TEXT_LIMITS: &[(&str, usize)] = &[
    ("summary", 10_000),
    ("description", 10_000),
    ("request", 10_000),
    ("handling", 10_000),
    ("cause_analysis", 10_000),
    ("resolution", 10_000),
    ("result", 10_000),
    ("reason", 2_000),
    ("measure", 2_000),
    ("action", 2_000),
    ("memo", 2_000),
    ("subject", 1_000),
    ("address", 500),
    ("delivery_address", 500),
    ("place", 500),
    ("website", 2_000),
    ("title", 500),
];

/// Most items of any list in a command (the lines of an order).
pub const MAX_LIST_ITEMS: usize = 1_000;

/// The largest amount of money, in minor units: 10¹⁵ (ten trillion yuan). Sums over many
/// orders stay far inside PostgreSQL's `bigint`.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// Fields holding an amount of money in minor units.
pub const AMOUNT_FIELDS: &[&str] = &[
    "amount",
    "unit_price",
    "registered_capital",
    "annual_turnover",
];

/// Calendar dates (expected close, plan item due) are between these years.
pub const DATE_YEARS: (i32, i32) = (1900, 2200);

/// Fields holding a calendar date.
pub const DATE_FIELDS: &[&str] = &["expected_close", "due_on"];

/// Text fields that must hold at least one visible character (`decide` refuses blank ones).
pub const NON_BLANK_FIELDS: &[&str] = &[
    "owner",
    "to",
    "name",
    "region",
    "place",
    "sub_category",
    "handling",
    "resolution",
    "title",
    "source",
    "action",
    "result",
    "reason",
    "order_number",
    "request",
    "assignee",
    "measure",
    "product",
    "member",
    "director",
];

/// Writes these bounds into a JSON Schema of a command (as the OpenAPI documents publish
/// it): `maxLength` (and `minLength`/`pattern` for the non-blank fields) on every plain text
/// property, `maxItems` on every list, `maximum` on amounts. The limits are named once, here;
/// the documents describe what the server enforces.
pub fn describe_in_schema(schema: &mut Value) {
    match schema {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get_mut("properties") {
                for (name, prop) in props.iter_mut() {
                    annotate_property(name, prop);
                }
            }
            for (key, v) in m.iter_mut() {
                if key != "properties" {
                    describe_in_schema(v);
                }
            }
            if let Some(Value::Object(props)) = m.get_mut("properties") {
                for prop in props.values_mut() {
                    describe_in_schema(prop);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(describe_in_schema),
        _ => {}
    }
}

fn has_type(prop: &serde_json::Map<String, Value>, wanted: &str) -> bool {
    match prop.get("type") {
        Some(Value::String(t)) => t == wanted,
        Some(Value::Array(ts)) => ts.iter().any(|t| t == wanted),
        _ => false,
    }
}

/// Text without U+0000 (an ECMA-262 regular expression, as JSON Schema's `pattern` is).
pub const TEXT_PATTERN: &str = r"^[^\u0000]*$";
/// Text without U+0000 holding at least one character that is not white space.
pub const NON_BLANK_PATTERN: &str = r"^[^\u0000]*[^\s\u0000][^\u0000]*$";
/// A user id: no control characters, not blank.
pub const USER_ID_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$";
/// A calendar date within [`DATE_YEARS`].
pub const DATE_PATTERN: &str = r"^(19[0-9]{2}|2[01][0-9]{2}|2200)-";

/// The schema of a user id (owner, assignee, director, member), as the documents publish it.
pub fn user_id_schema(schema: &mut Value) {
    if let Value::Object(p) = schema {
        p.insert("minLength".into(), Value::from(1));
        p.insert("maxLength".into(), Value::from(DEFAULT_TEXT_CHARS));
        p.insert("pattern".into(), Value::from(USER_ID_PATTERN));
    }
}

fn annotate_property(name: &str, prop: &mut Value) {
    let Value::Object(p) = prop else { return };
    if has_type(p, "string") && p.get("format").and_then(Value::as_str) == Some("date") {
        if DATE_FIELDS.contains(&name) {
            p.entry("pattern").or_insert(Value::from(DATE_PATTERN));
        }
        return;
    }
    if name == "currency" && has_type(p, "string") {
        // ISO 4217, as `decide` checks it
        p.insert("pattern".into(), Value::from("^[A-Z]{3}$"));
        return;
    }
    if has_type(p, "string") && !p.contains_key("format") && !p.contains_key("enum") {
        p.entry("maxLength")
            .or_insert(Value::from(text_limit(name)));
        let pattern = if NON_BLANK_FIELDS.contains(&name) {
            p.entry("minLength").or_insert(Value::from(1));
            NON_BLANK_PATTERN
        } else {
            TEXT_PATTERN
        };
        p.entry("pattern").or_insert(Value::from(pattern));
    }
    if has_type(p, "array") {
        p.entry("maxItems").or_insert(Value::from(MAX_LIST_ITEMS));
    }
    if has_type(p, "integer") && AMOUNT_FIELDS.contains(&name) {
        p.insert("minimum".into(), Value::from(0));
        p.insert("maximum".into(), Value::from(MAX_AMOUNT));
    }
    // the integer widths the Rust types have
    if has_type(p, "integer") {
        let max: Option<u64> = match p.get("format").and_then(Value::as_str) {
            Some("uint8") => Some(u8::MAX.into()),
            Some("uint16") => Some(u16::MAX.into()),
            Some("uint32") => Some(u32::MAX.into()),
            Some("int32") => Some(i32::MAX as u64),
            Some("int64") | Some("uint64") => Some(i64::MAX as u64),
            _ => None,
        };
        if let Some(max) = max {
            p.entry("maximum").or_insert(Value::from(max));
        }
    }
}

/// The most characters a text field named `name` may hold.
pub fn text_limit(name: &str) -> usize {
    TEXT_LIMITS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, l)| *l)
        .unwrap_or(DEFAULT_TEXT_CHARS)
}

/// Checks every value of a command against the bounds above. Refusals are
/// [`DomainError::Invalid`] naming the field.
pub fn check_values<T: Serialize>(command: &T) -> Result<(), DomainError> {
    let value = serde_json::to_value(command)
        .map_err(|e| DomainError::invalid("", format!("not representable as JSON: {e}")))?;
    let mut path = String::new();
    walk(&value, "", &mut path)
}

fn walk(value: &Value, name: &str, path: &mut String) -> Result<(), DomainError> {
    match value {
        Value::String(s) => check_text(s, name, path),
        Value::Number(n) => {
            if AMOUNT_FIELDS.contains(&name) {
                let within = n.as_i64().is_some_and(|v| v <= MAX_AMOUNT);
                if !within {
                    return Err(DomainError::invalid(
                        path.clone(),
                        format!("at most {MAX_AMOUNT} (minor units)"),
                    ));
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            if items.len() > MAX_LIST_ITEMS {
                return Err(DomainError::invalid(
                    path.clone(),
                    format!("at most {MAX_LIST_ITEMS} items, got {}", items.len()),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(item, name, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, item) in map {
                check_text(key, "", path)?;
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                walk(item, key, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) => Ok(()),
    }
}

fn check_text(text: &str, name: &str, path: &str) -> Result<(), DomainError> {
    if text.contains('\0') {
        return Err(DomainError::invalid(
            path,
            "must not contain the character U+0000 (NUL)",
        ));
    }
    let limit = text_limit(name);
    // bytes bound chars from above: count only when it could matter
    if text.len() > limit {
        let chars = text.chars().count();
        if chars > limit {
            return Err(DomainError::invalid(
                path,
                format!("at most {limit} characters, got {chars}"),
            ));
        }
    }
    if DATE_FIELDS.contains(&name) {
        if let Ok(date) = text.parse::<NaiveDate>() {
            let (from, to) = DATE_YEARS;
            if !(from..=to).contains(&date.year()) {
                return Err(DomainError::invalid(
                    path,
                    format!("must be a date in the years {from} to {to}"),
                ));
            }
        }
    }
    Ok(())
}

/// The window business time (`occurred_at`) must fall in: not before `earliest`, not more
/// than `max_future` after now. An order dated 9999-12-31 would make its customer look active
/// forever; year 0 is a typing error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusinessTimeWindow {
    pub earliest: DateTime<Utc>,
    pub max_future: Duration,
}

impl Default for BusinessTimeWindow {
    fn default() -> Self {
        BusinessTimeWindow {
            earliest: Utc
                .with_ymd_and_hms(1900, 1, 1, 0, 0, 0)
                .single()
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            max_future: Duration::days(1),
        }
    }
}

impl BusinessTimeWindow {
    /// Refuses `occurred_at` outside the window around `now`, naming `field`.
    pub fn check(
        &self,
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
        field: &str,
    ) -> Result<(), DomainError> {
        if occurred_at < self.earliest {
            return Err(DomainError::invalid(
                field,
                format!("must not be before {}", self.earliest.to_rfc3339()),
            ));
        }
        let latest = now + self.max_future;
        if occurred_at > latest {
            return Err(DomainError::invalid(
                field,
                format!(
                    "must not be more than {} hours in the future (latest {})",
                    self.max_future.num_hours(),
                    latest.to_rfc3339()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(r: Result<(), DomainError>) -> Option<String> {
        r.err().and_then(|e| e.field().map(str::to_owned))
    }

    #[test]
    fn nul_is_refused_anywhere_with_its_path() {
        let c = json!({"profile": {"name": "a\u{0}b", "registration": {}}});
        assert_eq!(field(check_values(&c)).as_deref(), Some("profile.name"));
        let c = json!({"lines": [{"product": "ok"}, {"product": "x\u{0}"}]});
        assert_eq!(field(check_values(&c)).as_deref(), Some("lines[1].product"));
        // other controls, RTL marks, emoji and 4-byte characters are text like any other
        let c = json!({"summary": "\u{1}\u{7}\u{1b}\u{200f}\u{202e}😀𝄞\u{fffd}\u{10ffff}"});
        assert!(check_values(&c).is_ok());
    }

    #[test]
    fn lengths_are_per_field_in_characters() {
        let at = |n: usize| "字".repeat(n);
        assert!(check_values(&json!({"name": at(200)})).is_ok());
        assert_eq!(
            field(check_values(&json!({"name": at(201)}))).as_deref(),
            Some("name")
        );
        assert!(check_values(&json!({"touchpoint": {"summary": at(10_000)}})).is_ok());
        assert_eq!(
            field(check_values(
                &json!({"touchpoint": {"summary": at(10_001)}})
            ))
            .as_deref(),
            Some("touchpoint.summary")
        );
    }

    #[test]
    fn lists_amounts_and_dates_are_bounded() {
        let lines: Vec<Value> = (0..=MAX_LIST_ITEMS).map(|_| json!({})).collect();
        assert_eq!(
            field(check_values(&json!({"lines": lines}))).as_deref(),
            Some("lines")
        );
        assert!(check_values(&json!({"total": {"amount": MAX_AMOUNT}})).is_ok());
        assert_eq!(
            field(check_values(&json!({"total": {"amount": MAX_AMOUNT + 1}}))).as_deref(),
            Some("total.amount")
        );
        assert_eq!(
            field(check_values(&json!({"expected_close": "9999-12-31"}))).as_deref(),
            Some("expected_close")
        );
        assert!(check_values(&json!({"expected_close": "2026-12-31"})).is_ok());
    }

    #[test]
    fn business_time_stays_in_its_window() {
        let w = BusinessTimeWindow::default();
        let now = Utc::now();
        assert!(w.check(now, now, "occurred_at").is_ok());
        assert!(w
            .check(now + Duration::hours(23), now, "occurred_at")
            .is_ok());
        assert!(w
            .check(now + Duration::hours(25), now, "occurred_at")
            .is_err());
        let far = Utc.with_ymd_and_hms(9999, 12, 31, 0, 0, 0).single();
        let zero = "0000-01-01T00:00:00Z".parse::<DateTime<Utc>>().ok();
        for t in [far, zero].into_iter().flatten() {
            assert_eq!(
                field(w.check(t, now, "occurred_at")).as_deref(),
                Some("occurred_at")
            );
        }
    }
}
