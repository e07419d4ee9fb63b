//! The envelope: CloudEvents 1.0 in Kafka binary mode. The attributes travel as `ce_*`
//! headers, the event as a JSON body, the customer id as the key. No Kafka client here: a
//! record is plain bytes, so the same code serves rdkafka and the embedded log.

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::event::{CustomerEvent, EventDecodeError};
use crate::ids::CustomerId;
use crate::organisation::OrganisationEvent;
use crate::stream::Events;

pub const SPEC_VERSION: &str = "1.0";
pub const CONTENT_TYPE: &str = "application/json";

/// Header names: the CloudEvents Kafka binding prefixes each attribute with `ce_`.
pub mod header {
    pub const ID: &str = "ce_id";
    pub const SOURCE: &str = "ce_source";
    pub const TYPE: &str = "ce_type";
    pub const SPEC_VERSION: &str = "ce_specversion";
    pub const TIME: &str = "ce_time";
    pub const SUBJECT: &str = "ce_subject";
    pub const CONTENT_TYPE: &str = "content-type";
    // extensions
    pub const SEQUENCE: &str = "ce_sequence";
    pub const ACTOR: &str = "ce_actor";
    pub const COMMAND: &str = "ce_command";
    pub const COMMAND_ID: &str = "ce_commandid";
    pub const COMMAND_FINGERPRINT: &str = "ce_commandfingerprint";
    pub const CORRELATION_ID: &str = "ce_correlationid";
    pub const CAUSATION_ID: &str = "ce_causationid";
    pub const OCCURRED_AT: &str = "ce_occurredat";
    pub const RECORDED_AT: &str = "ce_recordedat";
}

/// Who, when, why and where-from of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    /// UUIDv7, unique per event.
    pub id: Uuid,
    /// The producer, as a URI reference: `/command-service`, `/channels/wechat`, ...
    pub source: String,
    /// The stream: also the CloudEvents subject and the Kafka key.
    pub customer_id: CustomerId,
    /// Position in the customer's stream: 1, 2, 3, ... without gaps.
    pub sequence: u64,
    /// The authenticated user or program that caused it.
    pub actor: String,
    /// The command that decided it, e.g. `change_stage`.
    pub command: Option<String>,
    /// The client's id for that command (idempotency key), when it gave one.
    pub command_id: Option<String>,
    /// A digest of the request that carried `command_id` (command, path ids, body): a key
    /// reused with another request is refused, even after a fail-over.
    pub command_fingerprint: Option<String>,
    /// Groups everything one request caused, across services.
    pub correlation_id: Uuid,
    /// The event or command id that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// Business time: when it happened in the world (an email's sent time).
    pub occurred_at: DateTime<Utc>,
    /// Processing time: when it was appended.
    pub recorded_at: DateTime<Utc>,
}

/// An event of any stream with its envelope. The stream's id is `metadata.customer_id`: the
/// Kafka key and the CloudEvents subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded<E> {
    pub metadata: EventMetadata,
    pub event: E,
}

/// A customer's event with its envelope.
pub type RecordedEvent = Recorded<CustomerEvent>;

/// An event of the organisation stream with its envelope (key and subject
/// [`crate::organisation::ORGANISATION_STREAM_ID`]).
pub type RecordedOrganisationEvent = Recorded<OrganisationEvent>;

/// A record as Kafka carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub key: Vec<u8>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub value: Vec<u8>,
}

/// Why a record is not a valid event. Such a record goes to the dead-letter topic with this
/// text as its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    #[error("header `{name}` is invalid: {reason}")]
    InvalidHeader { name: &'static str, reason: String },
    #[error("unsupported CloudEvents specversion `{0}`")]
    SpecVersion(String),
    #[error("unsupported content-type `{0}`: expected application/json")]
    ContentType(String),
    #[error("record has no key")]
    MissingKey,
    #[error("record has no body")]
    MissingBody,
    #[error("key `{key}` and subject `{subject}` differ")]
    KeyMismatch { key: String, subject: String },
    #[error("the body belongs to stream {body} but the subject is {subject}")]
    SubjectMismatch { body: String, subject: String },
    #[error(transparent)]
    Event(#[from] EventDecodeError),
    #[error("body cannot be encoded: {0}")]
    Encode(String),
}

/// Times travel with microsecond precision (as PostgreSQL keeps them): truncate a time to that
/// before it goes into an envelope, so that what is stored equals what is sent.
pub fn envelope_time(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    t.trunc_subsecs(6)
}

fn rfc3339(t: &DateTime<Utc>) -> Vec<u8> {
    t.to_rfc3339_opts(SecondsFormat::Micros, true).into_bytes()
}

impl<E: Events> Recorded<E> {
    /// Binary-mode record: key = the stream's id, `ce_*` headers, JSON body.
    pub fn to_kafka(&self) -> Result<KafkaRecord, EnvelopeError> {
        if self.event.stream() != self.metadata.customer_id {
            return Err(EnvelopeError::Encode(format!(
                "the event belongs to the stream {}, not {}",
                self.event.stream(),
                self.metadata.customer_id
            )));
        }
        let value = self
            .event
            .to_json()
            .map_err(|e| EnvelopeError::Encode(e.to_string()))?;
        Ok(encode(&self.metadata, self.event.event_type(), value))
    }

    /// Decodes a binary-mode record. Never panics: anything wrong is an [`EnvelopeError`].
    pub fn from_kafka<'a>(
        key: Option<&'a [u8]>,
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
        value: Option<&'a [u8]>,
    ) -> Result<Self, EnvelopeError> {
        let (metadata, event) = decode(key, headers, value, |event_type, body, subject| {
            let event = E::decode(event_type, body)?;
            if event.stream() != subject {
                return Err(EnvelopeError::SubjectMismatch {
                    body: event.stream().to_string(),
                    subject: subject.to_string(),
                });
            }
            Ok(event)
        })?;
        Ok(Recorded { metadata, event })
    }
}

/// Any record of the customer-events topic: a customer's event, or one of the organisation
/// stream (key [`crate::organisation::ORGANISATION_STREAM_ID`]).
// Decoded one record at a time, never kept in bulk: boxing would only cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    Customer(RecordedEvent),
    Organisation(RecordedOrganisationEvent),
}

impl StreamEvent {
    /// Decodes a record, choosing the stream by its key.
    pub fn from_kafka<'a>(
        key: Option<&'a [u8]>,
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
        value: Option<&'a [u8]>,
    ) -> Result<StreamEvent, EnvelopeError> {
        if is_organisation_key(key) {
            RecordedOrganisationEvent::from_kafka(key, headers, value)
                .map(StreamEvent::Organisation)
        } else {
            RecordedEvent::from_kafka(key, headers, value).map(StreamEvent::Customer)
        }
    }

    pub fn metadata(&self) -> &EventMetadata {
        match self {
            StreamEvent::Customer(e) => &e.metadata,
            StreamEvent::Organisation(e) => &e.metadata,
        }
    }
}

/// Whether a record's key is the organisation stream's.
pub fn is_organisation_key(key: Option<&[u8]>) -> bool {
    key.is_some_and(|k| k == ORGANISATION_KEY.as_bytes())
}

/// The organisation stream's key as text.
pub const ORGANISATION_KEY: &str = "00000000-0000-0000-0000-000000000000";

fn encode(m: &EventMetadata, event_type: &str, value: Vec<u8>) -> KafkaRecord {
    let subject = m.customer_id.to_string().into_bytes();
    let mut headers: Vec<(&'static str, Vec<u8>)> = vec![
        (header::SPEC_VERSION, SPEC_VERSION.as_bytes().to_vec()),
        (header::ID, m.id.to_string().into_bytes()),
        (header::SOURCE, m.source.clone().into_bytes()),
        (header::TYPE, event_type.as_bytes().to_vec()),
        (header::SUBJECT, subject.clone()),
        (header::TIME, rfc3339(&m.occurred_at)),
        (header::CONTENT_TYPE, CONTENT_TYPE.as_bytes().to_vec()),
        (header::SEQUENCE, m.sequence.to_string().into_bytes()),
        (header::ACTOR, m.actor.clone().into_bytes()),
        (
            header::CORRELATION_ID,
            m.correlation_id.to_string().into_bytes(),
        ),
        (header::OCCURRED_AT, rfc3339(&m.occurred_at)),
        (header::RECORDED_AT, rfc3339(&m.recorded_at)),
    ];
    if let Some(c) = &m.command {
        headers.push((header::COMMAND, c.clone().into_bytes()));
    }
    if let Some(c) = &m.command_id {
        headers.push((header::COMMAND_ID, c.clone().into_bytes()));
    }
    if let Some(c) = &m.command_fingerprint {
        headers.push((header::COMMAND_FINGERPRINT, c.clone().into_bytes()));
    }
    if let Some(c) = &m.causation_id {
        headers.push((header::CAUSATION_ID, c.to_string().into_bytes()));
    }
    KafkaRecord {
        key: subject,
        headers,
        value,
    }
}

/// The envelope checks shared by every stream; `event` decodes the body of `ce_type` and
/// checks it against the subject.
fn decode<'a, E>(
    key: Option<&'a [u8]>,
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    value: Option<&'a [u8]>,
    event: impl FnOnce(&str, &[u8], CustomerId) -> Result<E, EnvelopeError>,
) -> Result<(EventMetadata, E), EnvelopeError> {
    let h = Headers::collect(headers);
    let spec = h.text(header::SPEC_VERSION)?;
    if spec != SPEC_VERSION {
        return Err(EnvelopeError::SpecVersion(spec.to_owned()));
    }
    if let Some(ct) = h.optional_text(header::CONTENT_TYPE)? {
        let media_type = ct.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case(CONTENT_TYPE) {
            return Err(EnvelopeError::ContentType(ct.to_owned()));
        }
    }
    let subject = h.text(header::SUBJECT)?;
    let customer_id: CustomerId =
        subject
            .parse()
            .map_err(|e: uuid::Error| EnvelopeError::InvalidHeader {
                name: header::SUBJECT,
                reason: e.to_string(),
            })?;
    if subject != customer_id.to_string() {
        // Another spelling of the same UUID would hash to another partition.
        return Err(EnvelopeError::InvalidHeader {
            name: header::SUBJECT,
            reason: "the customer id must be a lower-case hyphenated UUID".into(),
        });
    }
    let key = key.ok_or(EnvelopeError::MissingKey)?;
    if key != subject.as_bytes() {
        return Err(EnvelopeError::KeyMismatch {
            key: String::from_utf8_lossy(key).into_owned(),
            subject: subject.to_owned(),
        });
    }
    let event_type = h.text(header::TYPE)?;
    let body = value.ok_or(EnvelopeError::MissingBody)?;
    let event = event(event_type, body, customer_id)?;
    let occurred_at = match h.optional_time(header::OCCURRED_AT)? {
        Some(t) => t,
        None => h.time(header::TIME)?,
    };
    let metadata = EventMetadata {
        id: h.uuid(header::ID)?,
        source: h.text(header::SOURCE)?.to_owned(),
        customer_id,
        sequence: h.parse(header::SEQUENCE)?,
        actor: h.text(header::ACTOR)?.to_owned(),
        command: h.optional_text(header::COMMAND)?.map(str::to_owned),
        command_id: h.optional_text(header::COMMAND_ID)?.map(str::to_owned),
        command_fingerprint: h
            .optional_text(header::COMMAND_FINGERPRINT)?
            .map(str::to_owned),
        correlation_id: h.uuid(header::CORRELATION_ID)?,
        causation_id: match h.optional_text(header::CAUSATION_ID)? {
            Some(_) => Some(h.uuid(header::CAUSATION_ID)?),
            None => None,
        },
        occurred_at,
        recorded_at: h.time(header::RECORDED_AT)?,
    };
    Ok((metadata, event))
}

/// The headers of one record, looked up by name (the last one wins, as in Kafka clients).
pub struct Headers<'a>(Vec<(&'a str, Option<&'a [u8]>)>);

impl<'a> Headers<'a> {
    pub fn collect(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Self {
        Headers(headers.into_iter().collect())
    }

    fn raw(&self, name: &str) -> Option<&'a [u8]> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| *v)
    }

    pub fn optional_text(&self, name: &'static str) -> Result<Option<&'a str>, EnvelopeError> {
        self.raw(name)
            .map(|v| {
                std::str::from_utf8(v).map_err(|e| EnvelopeError::InvalidHeader {
                    name,
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    pub fn text(&self, name: &'static str) -> Result<&'a str, EnvelopeError> {
        self.optional_text(name)?
            .ok_or(EnvelopeError::MissingHeader(name))
    }

    fn parse<T: std::str::FromStr>(&self, name: &'static str) -> Result<T, EnvelopeError>
    where
        T::Err: std::fmt::Display,
    {
        self.text(name)?
            .parse()
            .map_err(|e: T::Err| EnvelopeError::InvalidHeader {
                name,
                reason: e.to_string(),
            })
    }

    fn uuid(&self, name: &'static str) -> Result<Uuid, EnvelopeError> {
        self.parse(name)
    }

    fn optional_time(&self, name: &'static str) -> Result<Option<DateTime<Utc>>, EnvelopeError> {
        self.optional_text(name)?
            .map(|t| {
                DateTime::parse_from_rfc3339(t)
                    .map(|d| d.to_utc())
                    .map_err(|e| EnvelopeError::InvalidHeader {
                        name,
                        reason: e.to_string(),
                    })
            })
            .transpose()
    }

    fn time(&self, name: &'static str) -> Result<DateTime<Utc>, EnvelopeError> {
        self.optional_time(name)?
            .ok_or(EnvelopeError::MissingHeader(name))
    }
}
