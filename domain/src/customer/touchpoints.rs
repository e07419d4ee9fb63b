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

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use crate::customer::fixtures::*;
    use crate::scenario::Scenario;
    use crate::*;

    #[test]
    fn a_touchpoint_names_only_existing_contacts_and_opportunities() {
        let mut s = Scenario::registered().with_contact().with_opportunity();
        let touchpoint = |contact: u128, opportunity: u128| {
            Command::RecordTouchpoint(RecordTouchpoint {
                touchpoint_id: TouchpointId(Uuid::now_v7()),
                touchpoint: Touchpoint {
                    channel: Channel::PhoneCall {
                        direction: Direction::Inbound,
                        duration_seconds: 300,
                        wait_seconds: 12,
                        outcome: CallOutcome::Answered,
                    },
                    summary: "询价".into(),
                    contact_id: Some(ContactId(id(contact))),
                    opportunity_id: Some(OpportunityId(id(opportunity))),
                },
            })
        };
        assert_eq!(s.accept(touchpoint(10, 20)).len(), 1);
        assert_eq!(
            s.refuse(touchpoint(11, 20)).field(),
            Some("touchpoint.contact_id")
        );
        assert_eq!(
            s.refuse(touchpoint(10, 21)).field(),
            Some("touchpoint.opportunity_id")
        );
    }

    #[test]
    fn every_channel_is_recorded() {
        let mut s = Scenario::registered();
        let channels = vec![
            Channel::PhoneCall {
                direction: Direction::Outbound,
                duration_seconds: 60,
                wait_seconds: 0,
                outcome: CallOutcome::NoAnswer,
            },
            Channel::Email {
                direction: Direction::Inbound,
                subject: "报价".into(),
            },
            Channel::Visit {
                place: "客户办公室".into(),
            },
            Channel::Wechat {
                direction: Direction::Inbound,
            },
            Channel::WebForm {
                form: Some("contact-us".into()),
            },
            Channel::FaxLetter {
                direction: Direction::Outbound,
            },
        ];
        for channel in channels {
            let events = s.accept(Command::RecordTouchpoint(RecordTouchpoint {
                touchpoint_id: TouchpointId(Uuid::now_v7()),
                touchpoint: Touchpoint {
                    channel,
                    summary: "s".into(),
                    contact_id: None,
                    opportunity_id: None,
                },
            }));
            assert_eq!(events[0].event_type(), "crm.touchpoint.recorded.v1");
        }
        assert_eq!(s.state().version, 7);
        let e = s.refuse(Command::RecordTouchpoint(RecordTouchpoint {
            touchpoint_id: TouchpointId(Uuid::now_v7()),
            touchpoint: Touchpoint {
                channel: Channel::Visit { place: "".into() },
                summary: "s".into(),
                contact_id: None,
                opportunity_id: None,
            },
        }));
        assert_eq!(invalid_field(&e), "touchpoint.channel.place");
    }
}
