//! A digest of a request: the command's name, the path's ids and the body as the client sent
//! it (keys sorted, so that their order does not matter), hex SHA-256. The digests are stored
//! in the log (`command_fingerprint`) and compared with a retry's, so their definition never
//! changes: the canonical text is compact JSON with every object's keys in order and scalars
//! and keys exactly as `serde_json` writes them.
//!
//! The body is walked as a tree that borrows its text ([`Json`]), whether it comes as a
//! `serde_json::Value` (single commands) or as the bytes of a batch item or inbound record
//! (the ingest hot path, where no `Value` is built), and the canonical text is fed to the
//! digest as it is written, never built as a string.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

/// How the numbers of a body in bytes are read before they are digested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbers {
    /// As written: an inbound record's body.
    AsWritten,
    /// A number with a zero fraction (`3.0`) as the integer it is, as a command body is read
    /// before it is decided (JSON Schema's integers).
    Integral,
}

/// The digest of a request whose body is a `Value`.
pub fn fingerprint(command: &str, path: &[(&str, &str)], body: &Value) -> String {
    digest(command, path, &Json::from(body))
}

/// The digest of a request whose body is JSON text, the same as [`fingerprint`] of that text
/// parsed into a `Value` (and, with [`Numbers::Integral`], its integral numbers made
/// integers). `Err` when the text is not JSON.
pub fn fingerprint_of_json(
    command: &str,
    path: &[(&str, &str)],
    body: &[u8],
    numbers: Numbers,
) -> Result<String, serde_json::Error> {
    let mut json: Json<'_> = serde_json::from_slice(body)?;
    if numbers == Numbers::Integral {
        json.make_integral();
    }
    Ok(digest(command, path, &json))
}

/// A JSON value borrowing its text where it has no escapes.
#[derive(Debug)]
enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Members in the order written; a repeated key's last value counts, as in a `Value`.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> From<&'a Value> for Json<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(n.clone()),
            Value::String(s) => Json::String(Cow::Borrowed(s)),
            Value::Array(items) => Json::Array(items.iter().map(Json::from).collect()),
            Value::Object(m) => Json::Object(
                m.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Json::from(v)))
                    .collect(),
            ),
        }
    }
}

impl Json<'_> {
    /// A number with a zero fraction (below 9e15) becomes the integer it is.
    fn make_integral(&mut self) {
        match self {
            Json::Number(n) if !n.is_i64() && !n.is_u64() => {
                if let Some(f) = n.as_f64() {
                    if f.fract() == 0.0 && f.abs() < 9.0e15 {
                        *n = Number::from(f as i64);
                    }
                }
            }
            Json::Array(items) => items.iter_mut().for_each(Json::make_integral),
            Json::Object(members) => members.iter_mut().for_each(|(_, v)| v.make_integral()),
            _ => {}
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Json<'de>, E> {
        // what a `Value` makes of it: a number, or null where JSON has none
        Ok(Number::from_f64(f).map_or(Json::Null, Json::Number))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        Json::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(Key(k)) = map.next_key()? {
            members.push((k, map.next_value()?));
        }
        Ok(Json::Object(members))
    }
}

/// An object's key, borrowed where it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// What is written goes into the digest.
struct Digesting(Sha256);

impl std::io::Write for Digesting {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn digest(command: &str, path: &[(&str, &str)], body: &Json<'_>) -> String {
    let mut path: Vec<(&str, &str)> = path.to_vec();
    path.sort();
    let mut out = Digesting(Sha256::new());
    out.0.update(command.as_bytes());
    for (k, v) in path {
        out.0.update(b"\n");
        out.0.update(k.as_bytes());
        out.0.update(b"=");
        out.0.update(v.as_bytes());
    }
    out.0.update(b"\n");
    // writing into a digest cannot fail, and every value of the tree can be written
    let _ = canonical(body, &mut out);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(64);
    for b in out.0.finalize() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    hex
}

/// Compact JSON with every object's keys in order (a repeated key once, its last value);
/// scalars and keys exactly as `serde_json` writes them.
fn canonical(v: &Json<'_>, out: &mut Digesting) -> serde_json::Result<()> {
    match v {
        Json::Null => out.0.update(b"null"),
        Json::Bool(true) => out.0.update(b"true"),
        Json::Bool(false) => out.0.update(b"false"),
        Json::Number(n) => serde_json::to_writer(&mut *out, n)?,
        Json::String(s) => serde_json::to_writer(&mut *out, s.as_ref())?,
        Json::Array(items) => {
            out.0.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.0.update(b",");
                }
                canonical(item, out)?;
            }
            out.0.update(b"]");
        }
        Json::Object(members) => {
            // stable: of a repeated key, the last member comes last
            let mut order: Vec<&(Cow<'_, str>, Json<'_>)> = members.iter().collect();
            order.sort_by(|a, b| a.0.cmp(&b.0));
            out.0.update(b"{");
            let mut first = true;
            for (i, (k, item)) in order.iter().map(|m| (&m.0, &m.1)).enumerate() {
                if order.get(i + 1).is_some_and(|next| next.0 == *k) {
                    continue;
                }
                if !first {
                    out.0.update(b",");
                }
                first = false;
                serde_json::to_writer(&mut *out, k.as_ref())?;
                out.0.update(b":");
                canonical(item, out)?;
            }
            out.0.update(b"}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::{fingerprint, fingerprint_of_json, Numbers};

    /// The digest as it was first defined, with the canonical text built as a string: the
    /// digests stored in the log (`command_fingerprint`) were made this way, so a retry after
    /// an upgrade must get the same one.
    fn reference(command: &str, path: &[(&str, &str)], body: &Value) -> String {
        use sha2::{Digest, Sha256};
        fn canonical(v: &Value, out: &mut String) {
            match v {
                Value::Object(m) => {
                    let mut keys: Vec<&String> = m.keys().collect();
                    keys.sort();
                    out.push('{');
                    for (i, k) in keys.into_iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(&Value::String(k.clone()).to_string());
                        out.push(':');
                        if let Some(item) = m.get(k) {
                            canonical(item, out);
                        }
                    }
                    out.push('}');
                }
                Value::Array(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        canonical(item, out);
                    }
                    out.push(']');
                }
                other => out.push_str(&other.to_string()),
            }
        }
        let mut path: Vec<(&str, &str)> = path.to_vec();
        path.sort();
        let mut text = String::from(command);
        for (k, v) in path {
            text.push_str(&format!("\n{k}={v}"));
        }
        text.push('\n');
        canonical(body, &mut text);
        Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The reference of a body in bytes: parsed into a `Value` (numbers made integral or not).
    fn reference_of_text(command: &str, text: &str, numbers: Numbers) -> String {
        let mut v: Value = serde_json::from_str(text).unwrap();
        if numbers == Numbers::Integral {
            // what a command body is made before it is decided and digested
            crate::http::integral_numbers(&mut v);
        }
        reference(command, &[], &v)
    }

    #[test]
    fn the_streamed_digest_is_the_digest_of_the_canonical_text() {
        let bodies = [
            json!({}),
            json!(null),
            json!({"b": 1, "a": [1, 2.5, -3, 1e300, "x"], "c": {"z": null, "y": true}}),
            json!({"touchpoint": {"channel": {"kind": "wechat"}, "summary": "引号 \" 与 \\ 与 \n 换行 \u{1} 😀"},
                   "customer_id": "0190c3c8-0000-7000-8000-000000000001",
                   "idempotency_key": "k-1", "occurred_at": "2026-11-30T08:00:00Z"}),
            json!([{"é": 1, "e": 2, "E": 3, "": 4}]),
            json!("a string body"),
            json!(18446744073709551615u64),
        ];
        let paths: [&[(&str, &str)]; 3] = [
            &[],
            &[("customer_id", "0190c3c8-0000-7000-8000-000000000001")],
            &[("opportunity_id", "b"), ("customer_id", "a=b\nc")],
        ];
        for body in &bodies {
            for path in paths {
                for command in ["record_touchpoint", "change_profile", ""] {
                    assert_eq!(
                        fingerprint(command, path, body),
                        reference(command, path, body),
                        "{command} {path:?} {body}"
                    );
                }
            }
        }
        // and it tells requests apart
        assert_ne!(
            fingerprint("a", &[], &json!({"x": 1})),
            fingerprint("a", &[], &json!({"x": 2}))
        );
    }

    #[test]
    fn text_is_digested_as_its_value_would_be() {
        let texts = [
            r#"{"b":1,"a":[1,2.5,-3,1e300,"x"],"c":{"z":null,"y":true}}"#,
            r#"  { "a" : 3.0 , "b" : [ -0.0, 1e2, 12345678901234567890, -9223372036854775808, 9.5e15 ] } "#,
            r#"{"x":1,"x":2,"y":{"k":"first","k":"last"}}"#,
            r#"{"s":"\u00e9\u0001\n\"\\\/ \ud83d\ude00","\u0065":"escaped key","e":"plain key"}"#,
            r#"[{"é":1,"e":2,"E":3,"":4}]"#,
            r#""a string body""#,
            "18446744073709551615",
            "null",
        ];
        for text in texts {
            for numbers in [Numbers::AsWritten, Numbers::Integral] {
                assert_eq!(
                    fingerprint_of_json("record_touchpoint", &[], text.as_bytes(), numbers)
                        .unwrap(),
                    reference_of_text("record_touchpoint", text, numbers),
                    "{text} {numbers:?}"
                );
            }
        }
        assert!(fingerprint_of_json("c", &[], b"{not json", Numbers::AsWritten).is_err());
        // integral numbers are integers only when asked for
        assert_ne!(
            fingerprint_of_json("c", &[], b"{\"n\":3.0}", Numbers::AsWritten).unwrap(),
            fingerprint_of_json("c", &[], b"{\"n\":3}", Numbers::AsWritten).unwrap()
        );
        assert_eq!(
            fingerprint_of_json("c", &[], b"{\"n\":3.0}", Numbers::Integral).unwrap(),
            fingerprint_of_json("c", &[], b"{\"n\":3}", Numbers::Integral).unwrap()
        );
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1.0e17f64..1.0e17).prop_map(Value::from),
            (-1000i32..1000).prop_map(|n| Value::from(f64::from(n))),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((".{0,6}", inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any JSON text, compact or pretty, digests as its `Value` does.
        #[test]
        fn any_text_digests_as_its_value(v in any_json(), pretty in any::<bool>(), integral_numbers in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
            let numbers = if integral_numbers { Numbers::Integral } else { Numbers::AsWritten };
            prop_assert_eq!(
                fingerprint_of_json("record_touchpoint", &[], text.as_bytes(), numbers).unwrap(),
                reference_of_text("record_touchpoint", &text, numbers)
            );
        }
    }
}
