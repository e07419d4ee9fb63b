//! Backward compatibility of JSON Schemas. A published event schema may only change in ways
//! that every existing event still satisfies and every existing reader still understands:
//! optional fields may be added; nothing may be removed, renamed, made required or narrowed.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// One way in which a new schema breaks an old one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// Where in the instance, as a JSON pointer-like path (`/profile/name`).
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.reason)
    }
}

/// Every incompatibility of `new` with `old`; empty when `new` is a compatible evolution.
pub fn incompatibilities(old: &Value, new: &Value) -> Vec<Incompatibility> {
    let mut out = Vec::new();
    Comparison {
        old_root: old,
        new_root: new,
        out: &mut out,
        depth: 0,
    }
    .compare(old, new, "");
    out
}

struct Comparison<'a, 'o> {
    old_root: &'a Value,
    new_root: &'a Value,
    out: &'o mut Vec<Incompatibility>,
    depth: usize,
}

/// Follows a local `$ref` (`#/$defs/Name`).
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut current = schema;
    for _ in 0..32 {
        match current.get("$ref").and_then(Value::as_str) {
            Some(r) => match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
                Some(target) => current = target,
                None => return current,
            },
            None => return current,
        }
    }
    current
}

fn types(schema: &Value) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// The variants of a `oneOf`/`anyOf`, each with its discriminating constant if it has one.
fn variants(schema: &Value) -> Option<&Vec<Value>> {
    schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
}

fn discriminator(root: &Value, variant: &Value) -> Option<String> {
    let variant = resolve(root, variant);
    if let Some(c) = variant.get("const") {
        return Some(c.to_string());
    }
    if let Some(e) = variant.get("enum").and_then(Value::as_array) {
        if e.len() == 1 {
            return Some(e[0].to_string());
        }
    }
    properties(variant)?.iter().find_map(|(name, p)| {
        let p = resolve(root, p);
        p.get("const").map(|c| format!("{name}={c}"))
    })
}

/// The alternatives a schema accepts: the variants of a `oneOf`/`anyOf` (flattened, `$ref`s
/// followed), and each value of an `enum` as a `const` of its own, so that `Option<T>`
/// (`anyOf: [T, null]`) and `T`, or a plain enum and a documented one (`oneOf` of `const`s),
/// compare alike.
fn branches<'a>(root: &'a Value, schema: &'a Value, depth: usize) -> Vec<Cow<'a, Value>> {
    let schema = resolve(root, schema);
    if depth < 16 {
        if let Some(vs) = variants(schema) {
            return vs
                .iter()
                .flat_map(|v| branches(root, v, depth + 1))
                .collect();
        }
    }
    if let (Some(values), Some(object)) = (
        schema.get("enum").and_then(Value::as_array),
        schema.as_object(),
    ) {
        return values
            .iter()
            .map(|v| {
                let mut branch = object.clone();
                branch.remove("enum");
                branch.insert("const".into(), v.clone());
                Cow::Owned(Value::Object(branch))
            })
            .collect();
    }
    vec![Cow::Borrowed(schema)]
}

impl Comparison<'_, '_> {
    fn report(&mut self, path: &str, reason: impl Into<String>) {
        self.out.push(Incompatibility {
            path: path.to_owned(),
            reason: reason.into(),
        });
    }

    fn compare(&mut self, old: &Value, new: &Value, path: &str) {
        if self.depth > 64 {
            return;
        }
        self.depth += 1;
        let old = resolve(self.old_root, old);
        let new = resolve(self.new_root, new);
        self.compare_resolved(old, new, path);
        self.depth -= 1;
    }

    fn compare_resolved(&mut self, old: &Value, new: &Value, path: &str) {
        if new == &Value::Bool(true) || old == new && self.old_root == self.new_root {
            return;
        }
        let old_branches = branches(self.old_root, old, 0);
        let new_branches = branches(self.new_root, new, 0);
        match (&old_branches[..], &new_branches[..]) {
            ([o], [n]) => self.compare_one(o, n, path),
            (o, n) => self.compare_unions(o, n, path),
        }
    }

    /// The incompatibilities of `new` with `old`, without reporting them.
    fn trial(&self, old: &Value, new: &Value, path: &str) -> Vec<Incompatibility> {
        let mut out = Vec::new();
        Comparison {
            old_root: self.old_root,
            new_root: self.new_root,
            out: &mut out,
            depth: self.depth,
        }
        .compare(old, new, path);
        out
    }

    /// Every alternative of the old schema must still be accepted by an alternative of the new
    /// one; alternatives with a tag or a constant are paired by it.
    fn compare_unions(&mut self, old: &[Cow<'_, Value>], new: &[Cow<'_, Value>], path: &str) {
        for ob in old {
            let key = discriminator(self.old_root, ob);
            let tagged: Vec<&Value> = match &key {
                Some(k) => new
                    .iter()
                    .map(AsRef::as_ref)
                    .filter(|nb| discriminator(self.new_root, nb).as_ref() == Some(k))
                    .collect(),
                None => Vec::new(),
            };
            let candidates: Vec<&Value> = if tagged.is_empty() {
                new.iter().map(AsRef::as_ref).collect()
            } else {
                tagged.clone()
            };
            if candidates
                .iter()
                .any(|nb| self.trial(ob, nb, path).is_empty())
            {
                continue;
            }
            match (&key, &tagged[..], &candidates[..]) {
                (Some(k), [nb], _) => self.compare(ob, nb, &format!("{path}<{k}>")),
                (None, _, [nb]) => self.compare(ob, nb, path),
                (Some(k), _, _) if ob.get("const").is_some() => {
                    self.report(path, format!("enum value {k} removed"))
                }
                (Some(k), _, _) => self.report(path, format!("variant {k} removed")),
                (None, _, n) if !n.is_empty() && n.iter().all(|b| b.get("const").is_some()) => {
                    self.report(path, "narrowed to an enumeration")
                }
                (None, _, _) => {
                    self.report(path, "no alternative of the new schema accepts the old one")
                }
            }
        }
    }

    fn compare_one(&mut self, old: &Value, new: &Value, path: &str) {
        // types: the new schema must accept every type the old one did
        match (types(old), types(new)) {
            (Some(o), Some(n)) => {
                let mut still_accepted = 0;
                for t in &o {
                    let widened = *t == "integer" && n.contains(&"number");
                    if !n.contains(t) && !widened {
                        self.report(path, format!("type narrowed: `{t}` no longer accepted"));
                    } else {
                        still_accepted += 1;
                    }
                }
                // nothing in common: the keywords below would only repeat it
                if still_accepted == 0 && !o.is_empty() {
                    return;
                }
            }
            (None, Some(n)) if !old.is_null() && variants(old).is_none() => {
                self.report(path, format!("type restricted to {n:?}"));
            }
            _ => {}
        }
        // enumerations: no value may disappear
        if let Some(old_enum) = old.get("enum").and_then(Value::as_array) {
            match new.get("enum").and_then(Value::as_array) {
                Some(new_enum) => {
                    for v in old_enum {
                        if !new_enum.contains(v) {
                            self.report(path, format!("enum value {v} removed"));
                        }
                    }
                }
                None if new.get("const").is_some() => {
                    self.report(path, "enum narrowed to a constant")
                }
                None => {}
            }
        }
        if let (Some(o), Some(n)) = (old.get("const"), new.get("const")) {
            if o != n {
                self.report(path, format!("constant changed from {o} to {n}"));
            }
        }
        if old.get("const").is_none() && old.get("enum").is_none() {
            if new.get("const").is_some() {
                self.report(path, "narrowed to a constant");
            } else if new.get("enum").is_some() && types(old) != Some(vec!["string"]) {
                // a free value became an enumeration
            }
            if new.get("enum").is_some() && old.get("enum").is_none() {
                self.report(path, "narrowed to an enumeration");
            }
        }
        // numeric and string bounds
        for (key, tighter) in [
            ("minimum", std::cmp::Ordering::Greater),
            ("exclusiveMinimum", std::cmp::Ordering::Greater),
            ("minLength", std::cmp::Ordering::Greater),
            ("minItems", std::cmp::Ordering::Greater),
            ("maximum", std::cmp::Ordering::Less),
            ("exclusiveMaximum", std::cmp::Ordering::Less),
            ("maxLength", std::cmp::Ordering::Less),
            ("maxItems", std::cmp::Ordering::Less),
        ] {
            let n = new.get(key).and_then(Value::as_f64);
            let o = old.get(key).and_then(Value::as_f64);
            match (o, n) {
                (None, Some(n)) => self.report(path, format!("`{key}` {n} added")),
                (Some(o), Some(n)) if n.partial_cmp(&o) == Some(tighter) => {
                    self.report(path, format!("`{key}` tightened from {o} to {n}"))
                }
                _ => {}
            }
        }
        match (old.get("pattern"), new.get("pattern")) {
            (None, Some(p)) => self.report(path, format!("pattern {p} added")),
            (Some(o), Some(n)) if o != n => {
                self.report(path, format!("pattern changed from {o} to {n}"))
            }
            _ => {}
        }
        // formats: a new or another format rejects values the old one accepted (a `date` is no
        // `date-time`); integer formats (`uint8`, ...) only restate the bounds checked above
        let numeric = |f: &Value| {
            f.as_str().is_some_and(|f| {
                f.starts_with("int") || f.starts_with("uint") || f == "float" || f == "double"
            })
        };
        match (old.get("format"), new.get("format")) {
            (None, Some(n)) if !numeric(n) => self.report(path, format!("format {n} added")),
            (Some(o), Some(n)) if o != n && !(numeric(o) && numeric(n)) => {
                self.report(path, format!("format changed from {o} to {n}"))
            }
            _ => {}
        }
        // objects: nothing removed, nothing newly required
        let old_props = properties(old);
        let new_props = properties(new);
        if let Some(op) = old_props {
            let empty = Map::new();
            let np = new_props.unwrap_or(&empty);
            for (name, old_schema) in op {
                let child = format!("{path}/{name}");
                match np.get(name) {
                    Some(new_schema) => self.compare(old_schema, new_schema, &child),
                    None => self.report(&child, "field removed or renamed"),
                }
            }
        }
        let old_required = required(old);
        for name in required(new) {
            if !old_required.contains(&name) {
                self.report(&format!("{path}/{name}"), "field made required");
            }
        }
        let closed = |s: &Value| s.get("additionalProperties") == Some(&Value::Bool(false));
        if closed(new) && !closed(old) {
            self.report(path, "additional properties no longer allowed");
        }
        // arrays
        if let (Some(o), Some(n)) = (old.get("items"), new.get("items")) {
            self.compare(o, n, &format!("{path}/[]"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reasons(old: Value, new: Value) -> Vec<String> {
        incompatibilities(&old, &new)
            .into_iter()
            .map(|i| i.to_string())
            .collect()
    }

    fn object(props: Value, required: &[&str]) -> Value {
        json!({"type": "object", "properties": props, "required": required})
    }

    #[test]
    fn identical_schemas_are_compatible() {
        let s = object(json!({"a": {"type": "string"}}), &["a"]);
        assert!(reasons(s.clone(), s).is_empty());
    }

    #[test]
    fn adding_an_optional_field_is_compatible() {
        let old = object(json!({"a": {"type": "string"}}), &["a"]);
        let new = object(
            json!({"a": {"type": "string"}, "b": {"type": ["string", "null"]}}),
            &["a"],
        );
        assert!(reasons(old, new).is_empty());
    }

    #[test]
    fn removing_a_field_is_not() {
        let old = object(
            json!({"a": {"type": "string"}, "b": {"type": "string"}}),
            &["a"],
        );
        let new = object(json!({"a": {"type": "string"}}), &["a"]);
        assert_eq!(reasons(old, new), ["/b: field removed or renamed"]);
    }

    #[test]
    fn renaming_a_field_is_not() {
        let old = object(json!({"a": {"type": "string"}}), &["a"]);
        let new = object(json!({"z": {"type": "string"}}), &["z"]);
        let r = reasons(old, new);
        assert!(
            r.contains(&"/a: field removed or renamed".to_owned()),
            "{r:?}"
        );
        assert!(r.contains(&"/z: field made required".to_owned()), "{r:?}");
    }

    #[test]
    fn making_a_field_required_is_not() {
        let old = object(json!({"a": {"type": "string"}}), &[]);
        let new = object(json!({"a": {"type": "string"}}), &["a"]);
        assert_eq!(reasons(old, new), ["/a: field made required"]);
    }

    #[test]
    fn narrowing_a_type_is_not() {
        let old = object(json!({"a": {"type": ["string", "null"]}}), &[]);
        let new = object(json!({"a": {"type": "string"}}), &[]);
        assert_eq!(
            reasons(old, new),
            ["/a: type narrowed: `null` no longer accepted"]
        );
        let old = object(json!({"n": {"type": "number"}}), &[]);
        let new = object(json!({"n": {"type": "integer"}}), &[]);
        assert_eq!(
            reasons(old, new),
            ["/n: type narrowed: `number` no longer accepted"]
        );
    }

    #[test]
    fn widening_is_compatible() {
        let old = object(json!({"n": {"type": "integer", "minimum": 1}}), &["n"]);
        let new = object(
            json!({"n": {"type": ["number", "null"], "minimum": 0}}),
            &[],
        );
        assert!(reasons(old, new).is_empty());
    }

    #[test]
    fn tightening_bounds_and_enums_is_not() {
        let old = object(
            json!({"n": {"type": "integer", "maximum": 100}, "e": {"type": "string", "enum": ["a", "b"]}}),
            &[],
        );
        let new = object(
            json!({"n": {"type": "integer", "maximum": 5}, "e": {"type": "string", "enum": ["a"]}}),
            &[],
        );
        let r = reasons(old, new);
        assert!(
            r.contains(&"/n: `maximum` tightened from 100 to 5".to_owned()),
            "{r:?}"
        );
        assert!(
            r.contains(&"/e: enum value \"b\" removed".to_owned()),
            "{r:?}"
        );
    }

    #[test]
    fn refs_are_followed() {
        let old = json!({"type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}, "required": ["p"],
            "$defs": {"P": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}});
        let new = json!({"type": "object", "properties": {"p": {"$ref": "#/$defs/Q"}}, "required": ["p"],
            "$defs": {"Q": {"type": "object", "properties": {}, "required": []}}});
        assert_eq!(reasons(old, new), ["/p/x: field removed or renamed"]);
    }

    #[test]
    fn tagged_union_variants_are_matched_by_tag() {
        let variant = |tag: &str, extra: Value| {
            let mut props = json!({"kind": {"type": "string", "const": tag}});
            if let (Some(p), Some(e)) = (props.as_object_mut(), extra.as_object()) {
                p.extend(e.clone());
            }
            json!({"type": "object", "properties": props, "required": ["kind"]})
        };
        let old = json!({"oneOf": [variant("a", json!({})), variant("b", json!({"x": {"type": "string"}}))]});
        let reordered = json!({"oneOf": [variant("b", json!({"x": {"type": "string"}})), variant("a", json!({})), variant("c", json!({}))]});
        assert!(reasons(old.clone(), reordered).is_empty());
        let removed = json!({"oneOf": [variant("a", json!({}))]});
        assert_eq!(reasons(old, removed), ["/: variant kind=\"b\" removed"]);
    }
}
