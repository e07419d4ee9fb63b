//! Touchpoints (接触记录): every call, email, visit, chat, web form and letter.

use super::{contact, one, opportunity, Decision};
use crate::command::RecordTouchpoint;
use crate::event::TouchpointRecorded;
use crate::rules::non_empty;
use crate::state::CustomerState;
use crate::values::Channel;

/// A touchpoint names only existing contacts and opportunities; a visit names its place.
pub(super) fn record_touchpoint(state: &CustomerState, c: &RecordTouchpoint) -> Decision {
    let t = &c.touchpoint;
    if let Some(id) = t.contact_id {
        contact(state, id, "touchpoint.contact_id")?;
    }
    if let Some(id) = t.opportunity_id {
        opportunity(state, id, "touchpoint.opportunity_id")?;
    }
    if let Channel::Visit { place } = &t.channel {
        non_empty(place, "touchpoint.channel.place")?;
    }
    one(TouchpointRecorded {
        customer_id: state.customer_id,
        touchpoint_id: c.touchpoint_id,
        touchpoint: t.clone(),
    })
}
