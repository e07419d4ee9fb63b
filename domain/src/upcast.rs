//! Upcasters: how an old version of an event type becomes the current one. A change to a
//! published event that is not backward compatible is a new type version
//! (`crm.x.y.v2`); its predecessor keeps its committed schema, and an upcaster here turns a v1
//! body into a v2 body, so that every reader only ever sees current events.
//! See `schemas/README.md`.

use serde_json::Value;

use crate::event::EventDecodeError;
use crate::stream::Events;

/// Turns a body of type `from` into a body of type `to`.
#[derive(Debug, Clone, Copy)]
pub struct Upcaster {
    pub from: &'static str,
    pub to: &'static str,
    pub upcast: fn(Value) -> Result<Value, String>,
}

/// Every upcaster, oldest first. Empty while every event type is at its first version.
pub const UPCASTERS: &[Upcaster] = &[];

/// Decodes a body of any known version of `event_type`.
pub fn decode<E: Events>(event_type: &str, body: &[u8]) -> Result<E, EventDecodeError> {
    decode_with(UPCASTERS, event_type, body)
}

/// [`decode`] with a given list of upcasters.
pub fn decode_with<E: Events>(
    upcasters: &[Upcaster],
    event_type: &str,
    body: &[u8],
) -> Result<E, EventDecodeError> {
    if E::TYPES.contains(&event_type) {
        return E::from_current_json(event_type, body);
    }
    let Some(first) = upcasters.iter().find(|u| u.from == event_type) else {
        return Err(EventDecodeError::UnknownType(event_type.to_owned()));
    };
    let body_error = |reason: String| EventDecodeError::Body {
        event_type: event_type.to_owned(),
        reason,
    };
    let mut value: Value = serde_json::from_slice(body).map_err(|e| body_error(e.to_string()))?;
    let mut upcaster = first;
    // Bounded by the number of upcasters, so a cycle in the table cannot loop forever.
    for _ in 0..=upcasters.len() {
        value = (upcaster.upcast)(value).map_err(body_error)?;
        if E::TYPES.contains(&upcaster.to) {
            let bytes = serde_json::to_vec(&value).map_err(|e| body_error(e.to_string()))?;
            return E::from_current_json(upcaster.to, &bytes);
        }
        match upcasters.iter().find(|u| u.from == upcaster.to) {
            Some(next) => upcaster = next,
            None => break,
        }
    }
    Err(EventDecodeError::UnknownType(event_type.to_owned()))
}
