#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The committed JSON Schemas and examples under `schemas/` (see `schemas/README.md`).
//!
//! - `schemas/events/<type>.json` is the schema of every current event type, generated from the
//!   Rust types; the code and the committed file must agree. A compatible change is
//!   regenerated with `UPDATE_SCHEMAS=1`; an incompatible one is refused and needs a new
//!   event version with an upcaster. Old versions stay committed.
//! - `schemas/examples/<type>.json` (and optionally `<type>.<label>.json`) are example bodies:
//!   each validates against its committed schema and decodes; a current one re-encodes to
//!   itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use domain::schema::{incompatibilities, Incompatibility};
use domain::upcast::{decode, UPCASTERS};
use domain::{
    event_schemas, organisation_event_schemas, OrganisationEvent, EVENT_TYPES,
    ORGANISATION_EVENT_TYPES,
};
use serde_json::{json, Value};

/// Every current event type of every stream: the customers' and the organisation's.
fn all_event_schemas() -> Vec<(&'static str, schemars::Schema)> {
    let mut all = event_schemas();
    all.extend(organisation_event_schemas());
    all
}

fn is_current(event_type: &str) -> bool {
    EVENT_TYPES.contains(&event_type) || ORGANISATION_EVENT_TYPES.contains(&event_type)
}

fn is_organisation(event_type: &str) -> bool {
    ORGANISATION_EVENT_TYPES.contains(&event_type)
}

const REGENERATE: &str = "UPDATE_SCHEMAS=1 cargo test -p domain --test schemas";

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn events_dir() -> PathBuf {
    schemas_dir().join("events")
}

fn examples_dir() -> PathBuf {
    schemas_dir().join("examples")
}

fn schema_path(event_type: &str) -> PathBuf {
    events_dir().join(format!("{event_type}.json"))
}

fn updating() -> bool {
    std::env::var("UPDATE_SCHEMAS").is_ok_and(|v| v == "1")
}

/// `crm.x.y.v3` → `crm.x.y.v4`.
fn next_version(event_type: &str) -> String {
    match event_type.rsplit_once(".v") {
        Some((base, n)) if n.parse::<u32>().is_ok() => {
            format!("{base}.v{}", n.parse::<u32>().unwrap() + 1)
        }
        _ => format!("{event_type}.v2"),
    }
}

/// The same value with every object's keys sorted, so that the committed text does not depend
/// on whether serde_json's `preserve_order` happens to be on in a build.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            Value::Object(
                sorted
                    .into_iter()
                    .map(|(k, v)| (k.clone(), canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The committed text of a schema: schemars' keyword order (`$schema`, `title`, ... `$defs`),
/// pretty JSON with a 2-space indent, and a trailing newline.
fn render(schema: &Value) -> String {
    let schema = schemars::Schema::try_from(canonical(schema)).expect("a schema is an object");
    let mut text = serde_json::to_string_pretty(&schema).unwrap();
    text.push('\n');
    text
}

/// Writes through a temporary file, so that a test reading the file meanwhile never sees half.
fn write_atomically(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// What to do about one event type's committed schema.
#[derive(Debug, PartialEq)]
enum Plan {
    /// The committed file is exactly what the code generates.
    UpToDate,
    /// No file yet: a new event type (or version).
    New,
    /// The file differs, but every event valid under it is valid under the new schema.
    CompatibleChange,
    /// The change would break published events or their readers.
    Incompatible(Vec<Incompatibility>),
    /// The committed file is not JSON (a bad merge?): restore it from git.
    Unreadable(String),
}

fn plan(committed: Option<&str>, generated: &Value) -> Plan {
    let Some(committed) = committed else {
        return Plan::New;
    };
    if committed == render(generated) {
        return Plan::UpToDate;
    }
    let old: Value = match serde_json::from_str(committed) {
        Ok(v) => v,
        Err(e) => return Plan::Unreadable(e.to_string()),
    };
    let broken = incompatibilities(&old, generated);
    if broken.is_empty() {
        Plan::CompatibleChange
    } else {
        Plan::Incompatible(broken)
    }
}

fn read_optional(path: &Path) -> Option<String> {
    match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

#[test]
fn committed_schemas_match_the_code() {
    let update = updating();
    let mut problems = Vec::new();
    for (event_type, schema) in all_event_schemas() {
        let generated = schema.as_value();
        let path = schema_path(event_type);
        let shown = format!("schemas/events/{event_type}.json");
        match plan(read_optional(&path).as_deref(), generated) {
            Plan::UpToDate => {}
            Plan::New | Plan::CompatibleChange if update => {
                write_atomically(&path, &render(generated));
            }
            Plan::New => problems.push(format!(
                "{event_type}: no committed schema {shown}; generate it with {REGENERATE}"
            )),
            Plan::CompatibleChange => problems.push(format!(
                "{event_type}: the code's schema differs from {shown}; the change is backward \
                 compatible: regenerate with {REGENERATE}"
            )),
            Plan::Incompatible(broken) => {
                let list: Vec<String> = broken.iter().map(|i| format!("    - {i}")).collect();
                problems.push(format!(
                    "{event_type}: the code's schema is NOT backward compatible with the \
                     published {shown}{}:\n{}\n  Published events must stay readable: make a new \
                     event version {} with an upcaster, see schemas/README.md",
                    if update {
                        " (UPDATE_SCHEMAS=1 refuses to overwrite it)"
                    } else {
                        ""
                    },
                    list.join("\n"),
                    next_version(event_type),
                ))
            }
            Plan::Unreadable(e) => problems.push(format!(
                "{event_type}: {shown} is not JSON ({e}); restore it with `git checkout -- {shown}`"
            )),
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n\n"));
}

/// The names (without `.json`) of the files in a directory; anything else there is an error.
fn json_stems(dir: &Path) -> Vec<String> {
    let mut stems: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json")
                .unwrap_or_else(|| panic!("{}/{name}: only .json files belong here", dir.display()))
                .to_owned()
        })
        .collect();
    stems.sort();
    stems
}

fn is_upcast(event_type: &str) -> bool {
    UPCASTERS.iter().any(|u| u.from == event_type)
}

#[test]
fn every_committed_schema_is_a_current_type_or_an_upcast_old_version() {
    for stem in json_stems(&events_dir()) {
        assert!(
            is_current(&stem) || is_upcast(&stem),
            "schemas/events/{stem}.json is neither a current event type nor an old version with \
             an upcaster in domain::upcast::UPCASTERS (see schemas/README.md)"
        );
        let schema: Value = serde_json::from_str(&fs::read_to_string(schema_path(&stem)).unwrap())
            .unwrap_or_else(|e| panic!("schemas/events/{stem}.json is not JSON: {e}"));
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{stem}: draft 2020-12"
        );
        jsonschema::draft202012::meta::validate(&schema)
            .unwrap_or_else(|e| panic!("schemas/events/{stem}.json is not a valid schema: {e}"));
    }
}

#[test]
fn every_upcast_old_version_stays_committed_and_reaches_a_current_type() {
    for u in UPCASTERS {
        assert!(
            !EVENT_TYPES.contains(&u.from),
            "{}: an upcaster from a current type is never used",
            u.from
        );
        assert!(
            schema_path(u.from).exists(),
            "{}: old versions keep their committed schema in schemas/events/",
            u.from
        );
        let mut to = u.to;
        for _ in 0..=UPCASTERS.len() {
            if EVENT_TYPES.contains(&to) {
                break;
            }
            to = UPCASTERS
                .iter()
                .find(|n| n.from == to)
                .unwrap_or_else(|| {
                    panic!("{}: its upcasters end at {to}, not a current type", u.from)
                })
                .to;
        }
        assert!(EVENT_TYPES.contains(&to), "{}: the upcasters loop", u.from);
    }
}

/// A validator for a committed schema, checking formats too (`uuid`, `date`, `date-time`).
fn validator(event_type: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &fs::read_to_string(schema_path(event_type))
            .unwrap_or_else(|e| panic!("no committed schema for {event_type}: {e}")),
    )
    .unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schemas/events/{event_type}.json does not compile: {e}"))
}

fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("at `{}`: {e}", e.instance_path))
        .collect()
}

/// One example file: `<type>.json` or `<type>.<label>.json`, a type being
/// `crm.<aggregate>.<fact>.v<N>`.
struct Example {
    file: String,
    event_type: String,
    body: Value,
    bytes: Vec<u8>,
}

fn examples() -> Vec<Example> {
    json_stems(&examples_dir())
        .into_iter()
        .map(|stem| {
            let parts: Vec<&str> = stem.split('.').collect();
            assert!(
                matches!(parts.len(), 4 | 5) && parts[0] == "crm" && parts[3].starts_with('v'),
                "schemas/examples/{stem}.json: name it <type>.json or <type>.<label>.json"
            );
            let file = format!("schemas/examples/{stem}.json");
            let bytes = fs::read(examples_dir().join(format!("{stem}.json"))).unwrap();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
            Example {
                file,
                event_type: parts[..4].join("."),
                body,
                bytes,
            }
        })
        .collect()
}

#[test]
fn every_current_type_has_an_example() {
    let covered: BTreeSet<String> = examples().into_iter().map(|e| e.event_type).collect();
    let missing: Vec<&&str> = EVENT_TYPES
        .iter()
        .chain(ORGANISATION_EVENT_TYPES)
        .filter(|t| !covered.contains(**t))
        .collect();
    assert!(
        missing.is_empty(),
        "no example in schemas/examples/ for {missing:?}"
    );
}

#[test]
fn examples_validate_against_their_committed_schema_and_round_trip() {
    let mut validators = BTreeMap::new();
    let mut problems = Vec::new();
    for ex in examples() {
        let file = &ex.file;
        if !schema_path(&ex.event_type).exists() {
            problems.push(format!("{file}: no committed schema for {}", ex.event_type));
            continue;
        }
        let v = validators
            .entry(ex.event_type.clone())
            .or_insert_with(|| validator(&ex.event_type));
        for e in schema_errors(v, &ex.body) {
            problems.push(format!("{file} fails its schema {e}"));
        }
        if is_organisation(&ex.event_type) {
            match <OrganisationEvent as domain::Events>::from_current_json(
                &ex.event_type,
                &ex.bytes,
            ) {
                Err(e) => problems.push(format!("{file} does not decode: {e}")),
                Ok(event) => {
                    assert_eq!(event.event_type(), ex.event_type, "{file}");
                    let again = event.to_value().unwrap();
                    if again != ex.body {
                        problems.push(format!(
                            "{file} does not re-encode to itself (unknown or defaulted fields?):\n  \
                             example: {}\n  encoded: {again}",
                            ex.body
                        ));
                    }
                }
            }
            continue;
        }
        match decode::<domain::CustomerEvent>(&ex.event_type, &ex.bytes) {
            Err(e) => problems.push(format!("{file} does not decode: {e}")),
            Ok(event) if EVENT_TYPES.contains(&ex.event_type.as_str()) => {
                assert_eq!(event.event_type(), ex.event_type, "{file}");
                let again = event.to_value().unwrap();
                if again != ex.body {
                    problems.push(format!(
                        "{file} does not re-encode to itself (unknown or defaulted fields?):\n  \
                         example: {}\n  encoded: {again}",
                        ex.body
                    ));
                }
            }
            // An old version: upcast to a current type, whose encoding differs by design.
            Ok(event) => assert!(EVENT_TYPES.contains(&event.event_type()), "{file}"),
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

fn example(event_type: &str) -> Value {
    let path = examples_dir().join(format!("{event_type}.json"));
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// Proof that the example check can fail: broken bodies are rejected by the committed schema.
#[test]
fn broken_examples_fail_their_schema() {
    type Breakage = fn(&mut Value);
    let cases: &[(&str, &str, Breakage)] = &[
        (
            "crm.service_request.feedback_given.v1",
            "satisfaction 9",
            |b| b["satisfaction"] = json!(9),
        ),
        (
            "crm.service_request.feedback_given.v1",
            "satisfaction 0",
            |b| b["satisfaction"] = json!(0),
        ),
        ("crm.customer.registered.v1", "credit rating 6", |b| {
            b["profile"]["credit"] = json!(6)
        }),
        ("crm.customer.registered.v1", "unknown level", |b| {
            b["profile"]["level"] = json!("vip")
        }),
        (
            "crm.customer.registered.v1",
            "customer id not a uuid",
            |b| b["customer_id"] = json!("HY-0001"),
        ),
        ("crm.opportunity.opened.v1", "missing required title", |b| {
            b.as_object_mut().unwrap().remove("title");
        }),
        ("crm.opportunity.opened.v1", "probability 101", |b| {
            b["probability"] = json!(101)
        }),
        ("crm.opportunity.opened.v1", "negative amount", |b| {
            b["value"]["amount"] = json!(-1)
        }),
        ("crm.opportunity.opened.v1", "lower-case currency", |b| {
            b["value"]["currency"] = json!("cny")
        }),
        (
            "crm.opportunity.opened.v1",
            "expected close not a date",
            |b| b["expected_close"] = json!("next quarter"),
        ),
        (
            "crm.opportunity.stage_changed.v1",
            "stage outside the funnel",
            |b| b["to"] = json!("won"),
        ),
        ("crm.order.placed.v1", "quantity 0", |b| {
            b["lines"][0]["quantity"] = json!(0)
        }),
        ("crm.order.placed.v1", "amount as a string", |b| {
            b["total"]["amount"] = json!("1250000")
        }),
        ("crm.touchpoint.recorded.v1", "unknown channel", |b| {
            b["touchpoint"]["channel"]["kind"] = json!("telegram")
        }),
        (
            "crm.touchpoint.recorded.v1",
            "channel without its direction",
            |b| {
                b["touchpoint"]["channel"]
                    .as_object_mut()
                    .unwrap()
                    .remove("direction");
            },
        ),
        ("crm.complaint.lodged.v1", "unknown category", |b| {
            b["category"] = json!("weather")
        }),
        (
            "crm.churn.warning_raised.v1",
            "last order at not a timestamp",
            |b| b["last_order_at"] = json!("2024-13-45"),
        ),
        (
            "crm.organisation.team_created.v1",
            "team id not a uuid",
            |b| b["team_id"] = json!("east"),
        ),
        (
            "crm.organisation.team_member_added.v1",
            "missing member",
            |b| {
                b.as_object_mut().unwrap().remove("member");
            },
        ),
    ];
    for (event_type, what, breakage) in cases {
        let v = validator(event_type);
        let mut body = example(event_type);
        assert!(
            v.is_valid(&body),
            "{event_type}: the unbroken example is valid"
        );
        breakage(&mut body);
        assert!(
            !v.is_valid(&body),
            "{event_type} with {what} passes its schema: {body}"
        );
    }
}

/// The gate against real committed schemas: incompatible edits are named, compatible ones pass.
#[test]
fn incompatible_edits_of_a_committed_schema_are_caught() {
    let committed: Value = serde_json::from_str(
        &fs::read_to_string(schema_path("crm.opportunity.opened.v1")).unwrap(),
    )
    .unwrap();
    let edited = |edit: fn(&mut Value)| {
        let mut s = committed.clone();
        edit(&mut s);
        incompatibilities(&committed, &s)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };

    assert!(edited(|_| {}).is_empty());
    assert!(
        edited(|s| {
            s["properties"]["channel"] = json!({"type": ["string", "null"]});
        })
        .is_empty(),
        "adding an optional field is compatible"
    );

    let r = edited(|s| {
        s["properties"].as_object_mut().unwrap().remove("title");
        let required = s["required"].as_array_mut().unwrap();
        required.retain(|f| f != "title");
    });
    assert_eq!(r, ["/title: field removed or renamed"]);

    let r = edited(|s| {
        s["required"]
            .as_array_mut()
            .unwrap()
            .push(json!("description"))
    });
    assert_eq!(r, ["/description: field made required"]);

    let r = edited(|s| s["$defs"]["Money"]["properties"]["amount"]["type"] = json!("string"));
    assert_eq!(
        r,
        ["/value/amount: type narrowed: `integer` no longer accepted"]
    );

    let r = edited(|s| s["properties"]["probability"]["maximum"] = json!(50));
    assert_eq!(r, ["/probability: `maximum` tightened from 100 to 50"]);
}

#[test]
fn an_incompatible_change_is_refused_even_when_updating() {
    let (_, schema) = event_schemas()
        .into_iter()
        .find(|(t, _)| *t == "crm.complaint.closed.v1")
        .unwrap();
    let generated = schema.as_value().clone();
    let text = render(&generated);
    assert_eq!(plan(Some(&text), &generated), Plan::UpToDate);
    assert_eq!(plan(None, &generated), Plan::New);
    assert!(matches!(
        plan(Some("<<<<<<< HEAD"), &generated),
        Plan::Unreadable(_)
    ));

    // The committed schema had a field the code no longer has: refused.
    let mut published = generated.clone();
    published["properties"]["closed_by"] = json!({"type": "string"});
    published["required"]
        .as_array_mut()
        .unwrap()
        .push(json!("closed_by"));
    match plan(Some(&render(&published)), &generated) {
        Plan::Incompatible(broken) => {
            assert_eq!(
                broken[0].to_string(),
                "/closed_by: field removed or renamed"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The code added an optional field: a compatible change, rewritten by UPDATE_SCHEMAS=1.
    let mut newer = generated.clone();
    newer["properties"]["note"] = json!({"type": ["string", "null"]});
    assert!(matches!(plan(Some(&text), &newer), Plan::CompatibleChange));
}

#[test]
fn rendering_is_stable_and_pretty() {
    for (event_type, schema) in all_event_schemas() {
        let text = render(schema.as_value());
        assert!(text.ends_with("}\n"), "{event_type}");
        assert!(text.starts_with("{\n  \"$schema\": "), "{event_type}");
        let reparsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(&reparsed, schema.as_value(), "{event_type}");
        assert_eq!(render(&reparsed), text, "{event_type}");
    }
    assert_eq!(next_version("crm.order.placed.v1"), "crm.order.placed.v2");
    assert_eq!(next_version("crm.order.placed.v9"), "crm.order.placed.v10");
}

fn committed(event_type: &str) -> Value {
    serde_json::from_str(&fs::read_to_string(schema_path(event_type)).unwrap()).unwrap()
}

fn reasons_after(event_type: &str, edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let old = committed(event_type);
    let mut new = old.clone();
    edit(&mut new);
    incompatibilities(&old, &new)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The changes Rust code typically makes, as schemars renders them: `Option<T>`
/// (`anyOf: [T, null]`), documented enums (`oneOf` of `const`s), tagged enums, formats.
#[test]
fn typical_rust_changes_are_judged_right() {
    // T -> Option<T> (and no longer required): compatible
    let r = reasons_after("crm.opportunity.opened.v1", |s| {
        s["properties"]["value"] = json!({"anyOf": [{"$ref": "#/$defs/Money"}, {"type": "null"}]});
        s["required"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f != "value");
    });
    assert!(r.is_empty(), "{r:?}");
    // Option<T> -> T: old events without it, or with null, break
    let r = reasons_after("crm.opportunity.opened.v1", |s| {
        s["properties"]["contact_id"] = json!({"$ref": "#/$defs/ContactId"});
        s["required"]
            .as_array_mut()
            .unwrap()
            .push(json!("contact_id"));
    });
    assert_eq!(
        r,
        [
            "/contact_id: type narrowed: `null` no longer accepted",
            "/contact_id: field made required"
        ]
    );
    // a documented enum (oneOf of consts) written as a plain enum, or the other way: compatible
    let plain = json!({"type": "string", "enum": ["qualification", "proposal", "evaluation", "negotiation"]});
    let r = reasons_after("crm.opportunity.stage_changed.v1", |s| {
        s["$defs"]["Stage"] = plain.clone()
    });
    assert!(r.is_empty(), "{r:?}");
    // ... but not without one of its values
    let r = reasons_after("crm.opportunity.stage_changed.v1", |s| {
        s["$defs"]["Stage"] =
            json!({"type": "string", "enum": ["qualification", "proposal", "evaluation"]});
    });
    assert_eq!(
        r,
        [
            "/from: enum value \"negotiation\" removed",
            "/to: enum value \"negotiation\" removed"
        ]
    );
    let r = reasons_after("crm.opportunity.stage_changed.v1", |s| {
        s["$defs"]["Stage"]["oneOf"]
            .as_array_mut()
            .unwrap()
            .remove(0);
    });
    assert_eq!(
        r,
        [
            "/from: enum value \"qualification\" removed",
            "/to: enum value \"qualification\" removed"
        ]
    );
    // a free string becomes an enum
    let r = reasons_after("crm.opportunity.opened.v1", |s| {
        s["properties"]["source"] = json!({"type": "string", "enum": ["campaign", "referral"]});
    });
    assert_eq!(r, ["/source: narrowed to an enumeration"]);
    // a date becomes a timestamp; a string becomes an id
    let r = reasons_after("crm.opportunity.opened.v1", |s| {
        s["properties"]["expected_close"]["format"] = json!("date-time");
        s["properties"]["title"]["format"] = json!("uuid");
    });
    assert_eq!(
        r,
        [
            "/expected_close: format changed from \"date\" to \"date-time\"",
            "/title: format \"uuid\" added"
        ]
    );
    // Option<String> -> Option<i64>
    let r = reasons_after("crm.opportunity.opened.v1", |s| {
        s["properties"]["description"] = json!({"anyOf": [{"type": "integer"}, {"type": "null"}]});
    });
    assert_eq!(
        r,
        ["/description: no alternative of the new schema accepts the old one"]
    );
    // u8 -> u16 widens; integer formats are not a narrowing by themselves
    let r = reasons_after("crm.service_request.feedback_given.v1", |s| {
        s["properties"]["satisfaction"]["format"] = json!("uint16");
    });
    assert!(r.is_empty(), "{r:?}");
    // a channel removed from the tagged enum; a channel's field made required
    let r = reasons_after("crm.touchpoint.recorded.v1", |s| {
        let channels = s["$defs"]["Channel"]["oneOf"].as_array_mut().unwrap();
        channels.retain(|c| c["properties"]["kind"]["const"] != "wechat");
    });
    assert_eq!(r, ["/touchpoint/channel: variant kind=\"wechat\" removed"]);
    let r = reasons_after("crm.touchpoint.recorded.v1", |s| {
        let channels = s["$defs"]["Channel"]["oneOf"].as_array_mut().unwrap();
        let web = channels
            .iter_mut()
            .find(|c| c["properties"]["kind"]["const"] == "web_form")
            .unwrap();
        web["required"].as_array_mut().unwrap().push(json!("form"));
    });
    assert_eq!(
        r,
        ["/touchpoint/channel<kind=\"web_form\">/form: field made required"]
    );
    // a new channel is compatible
    let r = reasons_after("crm.touchpoint.recorded.v1", |s| {
        let channels = s["$defs"]["Channel"]["oneOf"].as_array_mut().unwrap();
        channels.push(json!({"type": "object", "properties": {"kind": {"type": "string", "const": "self_service"}}, "required": ["kind"]}));
    });
    assert!(r.is_empty(), "{r:?}");
}
