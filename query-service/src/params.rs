//! Query parameters: each route declares its parameters once ([`ParamSpec`]); the same table
//! validates requests (unknown, repeated or malformed parameters are a 400 naming the
//! parameter) and generates the OpenAPI document.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use infra::problem::Problem;
use serde_json::{json, Value};
use uuid::Uuid;

/// What a parameter holds.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Free text, at most `max` characters.
    Text {
        max: usize,
    },
    Uuid,
    /// `YYYY-MM-DD`.
    Date,
    /// RFC 3339, or a date meaning its midnight UTC.
    Time,
    /// An integer in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    /// One of these values.
    Enum(&'static [&'static str]),
    /// A sort key, optionally prefixed by `-` for descending.
    Sort(&'static [&'static str]),
    /// An opaque cursor from a previous page.
    Cursor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Query,
    Path,
}

/// One parameter of a route.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub location: In,
    pub kind: Kind,
    pub required: bool,
    /// Several values allowed, comma separated or repeated (any of them matches).
    pub multi: bool,
    pub description: &'static str,
}

impl ParamSpec {
    pub const fn query(name: &'static str, kind: Kind, description: &'static str) -> Self {
        ParamSpec {
            name,
            location: In::Query,
            kind,
            required: false,
            multi: false,
            description,
        }
    }

    pub const fn path(name: &'static str, kind: Kind, description: &'static str) -> Self {
        ParamSpec {
            name,
            location: In::Path,
            kind,
            required: true,
            multi: false,
            description,
        }
    }

    pub const fn multi(mut self) -> Self {
        self.multi = true;
        self
    }

    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// The parameter's JSON Schema, for OpenAPI.
    pub fn schema(&self) -> Value {
        let one = match self.kind {
            // no control characters, not blank
            Kind::Text { max } => json!({"type": "string", "minLength": 1, "maxLength": max,
                "pattern": r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"}),
            Kind::Uuid => json!({"type": "string", "format": "uuid"}),
            Kind::Date => json!({"type": "string", "format": "date"}),
            Kind::Time => {
                json!({"type": "string", "anyOf": [{"format": "date-time"}, {"format": "date"}],
                       "description": "RFC 3339 date-time, or a date (midnight UTC)"})
            }
            Kind::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
            Kind::Enum(values) => json!({"type": "string", "enum": values}),
            Kind::Sort(keys) => {
                let all: Vec<String> = keys
                    .iter()
                    .flat_map(|k| [(*k).to_owned(), format!("-{k}")])
                    .collect();
                json!({"type": "string", "enum": all})
            }
            Kind::Cursor => {
                json!({"type": "string", "minLength": 1, "description": "next_cursor of the previous page (opaque: only the server makes one)"})
            }
        };
        if self.multi {
            // items are comma separated: an item holds no comma
            let mut one = one;
            if let (Kind::Text { .. }, Some(p)) = (&self.kind, one.get_mut("pattern")) {
                *p = json!(
                    r"^[^,\u0000-\u001f\u007f-\u009f]*[^,\s\u0000-\u001f\u007f-\u009f][^,\u0000-\u001f\u007f-\u009f]*$"
                );
            }
            json!({"type": "array", "minItems": 1, "items": one})
        } else {
            one
        }
    }
}

/// Parses a time parameter: RFC 3339, or a date meaning its midnight UTC.
pub fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, Problem> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.to_utc());
    }
    // a `+` offset that was not percent-encoded arrives as a space
    if let Ok(t) = DateTime::parse_from_rfc3339(&v.replace(' ', "+")) {
        return Ok(t.to_utc());
    }
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .map(|d| d.and_time(NaiveTime::MIN).and_utc())
        .map_err(|_| {
            Problem::bad_parameter(
                name,
                format!("`{v}` is neither an RFC 3339 time (2025-01-31T08:00:00Z) nor a date (2025-01-31)"),
            )
        })
}

fn check(spec: &ParamSpec, v: &str) -> Result<(), Problem> {
    let bad = |detail: String| Err(Problem::bad_parameter(spec.name, detail));
    if v.chars().any(|c| c.is_control()) {
        return bad("must not contain control characters".into());
    }
    match spec.kind {
        Kind::Text { max } => {
            if v.trim().is_empty() {
                return bad("must not be empty".into());
            }
            if v.chars().count() > max {
                return bad(format!("at most {max} characters"));
            }
        }
        Kind::Uuid => {
            if let Err(e) = Uuid::parse_str(v) {
                return bad(format!("`{v}` is not a UUID: {e}"));
            }
        }
        Kind::Date => {
            if NaiveDate::parse_from_str(v, "%Y-%m-%d").is_err() {
                return bad(format!("`{v}` is not a date (YYYY-MM-DD)"));
            }
        }
        Kind::Time => {
            parse_time(spec.name, v)?;
        }
        Kind::Int { min, max } => match v.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => {}
            _ => return bad(format!("`{v}` is not an integer from {min} to {max}")),
        },
        Kind::Enum(values) => {
            if !values.contains(&v) {
                return bad(format!("`{v}` is not one of: {}", values.join(", ")));
            }
        }
        Kind::Sort(keys) => {
            if !keys.contains(&v.strip_prefix('-').unwrap_or(v)) {
                return bad(format!(
                    "`{v}` is not a sort key; use one of {} (prefix `-` for descending)",
                    keys.join(", ")
                ));
            }
        }
        Kind::Cursor => {
            if v.is_empty() || v.len() > 4096 {
                return bad("not a cursor returned by this service".into());
            }
        }
    }
    Ok(())
}

/// The validated parameters of one request.
#[derive(Debug, Clone, Default)]
pub struct Params {
    values: BTreeMap<&'static str, Vec<String>>,
}

impl Params {
    /// Validates the query string's pairs and the path's values against `specs`.
    pub fn parse(
        specs: &'static [ParamSpec],
        query: Vec<(String, String)>,
        path: Vec<(String, String)>,
    ) -> Result<Params, Problem> {
        let mut values: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for (location, pairs) in [(In::Query, query), (In::Path, path)] {
            for (name, value) in pairs {
                let Some(spec) = specs
                    .iter()
                    .find(|s| s.name == name && s.location == location)
                else {
                    let known: Vec<&str> = specs
                        .iter()
                        .filter(|s| s.location == In::Query)
                        .map(|s| s.name)
                        .collect();
                    return Err(Problem::bad_parameter(
                        &name,
                        if known.is_empty() {
                            "this resource takes no query parameters".to_owned()
                        } else {
                            format!("unknown parameter; known: {}", known.join(", "))
                        },
                    ));
                };
                let entry = values.entry(spec.name).or_default();
                if spec.multi {
                    for v in value.split(',') {
                        let v = v.trim();
                        check(spec, v)?;
                        entry.push(v.to_owned());
                    }
                } else {
                    if !entry.is_empty() {
                        return Err(Problem::bad_parameter(spec.name, "given more than once"));
                    }
                    check(spec, &value)?;
                    entry.push(value);
                }
            }
        }
        for spec in specs {
            if spec.required && !values.contains_key(spec.name) {
                return Err(Problem::bad_parameter(spec.name, "required"));
            }
        }
        Ok(Params { values })
    }

    pub fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    pub fn text(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|v| v.first()).cloned()
    }

    pub fn list(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    pub fn uuid(&self, name: &str) -> Result<Option<Uuid>, Problem> {
        self.text(name)
            .map(|v| {
                Uuid::parse_str(&v)
                    .map_err(|e| Problem::bad_parameter(name, format!("not a UUID: {e}")))
            })
            .transpose()
    }

    pub fn date(&self, name: &str) -> Result<Option<NaiveDate>, Problem> {
        self.text(name)
            .map(|v| {
                NaiveDate::parse_from_str(&v, "%Y-%m-%d")
                    .map_err(|_| Problem::bad_parameter(name, "not a date (YYYY-MM-DD)"))
            })
            .transpose()
    }

    pub fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, Problem> {
        self.text(name).map(|v| parse_time(name, &v)).transpose()
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, Problem> {
        self.text(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| Problem::bad_parameter(name, "not an integer"))
            })
            .transpose()
    }

    /// A canonical text of every parameter except the cursor and the limit: a cursor is only
    /// valid with the filters and sort it was made for.
    pub fn fingerprint(&self) -> String {
        let mut out = String::new();
        for (name, values) in &self.values {
            if *name == "cursor" || *name == "limit" {
                continue;
            }
            let mut values = values.clone();
            values.sort();
            out.push_str(name);
            out.push('=');
            out.push_str(&values.join(","));
            out.push('&');
        }
        out
    }
}

/// The bounds of a half-open period, each optional.
pub type Period = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// `from` < `to` when both are given (the period is half-open, `[from, to)`).
pub fn period(params: &Params, from: &str, to: &str) -> Result<Period, Problem> {
    let (f, t) = (params.time(from)?, params.time(to)?);
    if let (Some(f), Some(t)) = (f, t) {
        if f >= t {
            return Err(Problem::bad_parameter(
                to,
                format!("must be after `{from}` (the period is [{from}, {to}))"),
            ));
        }
    }
    Ok((f, t))
}
