#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The CloudEvents envelope in Kafka binary mode: round trips, a typed error for every kind of
//! malformed record, no panic on arbitrary bytes; and the upcasting mechanism of
//! `domain::upcast`.

use chrono::{DateTime, NaiveDate, SubsecRound, TimeZone, Utc};
use domain::envelope::{header, EnvelopeError};
use domain::upcast::{decode, decode_with, Upcaster};
use domain::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

const CUSTOMER: &str = "0190a6f2-3c1e-7b4a-9d2f-5e8c1a7b3d01";
const OTHER_CUSTOMER: &str = "0190a6f8-9d04-7a55-8c61-0b7e3f2d4c10";

fn customer() -> CustomerId {
    CUSTOMER.parse().unwrap()
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_a6f2_0000_7000_8000_0000_0000_0000 | n)
}

fn cny(amount: i64) -> Money {
    Money {
        amount,
        currency: "CNY".into(),
    }
}

/// A time with microseconds, the precision the envelope carries.
fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, micros: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
        + chrono::Duration::microseconds(micros.into())
}

/// Every metadata field set.
fn full_metadata(sequence: u64) -> EventMetadata {
    EventMetadata {
        id: id(1000 + u128::from(sequence)),
        source: "/command-service".into(),
        customer_id: customer(),
        sequence,
        actor: "am-zhang.wei".into(),
        command: Some("change_stage".into()),
        command_id: Some("req-7f3a9c".into()),
        command_fingerprint: None,
        correlation_id: id(2000),
        causation_id: Some(id(3000)),
        // an email sent a day before it was synced
        occurred_at: at(2025, 7, 14, 1, 23, 45, 123_456),
        recorded_at: at(2025, 7, 15, 9, 0, 0, 7),
    }
}

/// Only the required metadata fields.
fn minimal_metadata(sequence: u64) -> EventMetadata {
    EventMetadata {
        command: None,
        command_id: None,
        command_fingerprint: None,
        causation_id: None,
        source: "/channels/wechat".into(),
        actor: "channel-wechat".into(),
        ..full_metadata(sequence)
    }
}

fn events() -> Vec<CustomerEvent> {
    let c = customer();
    vec![
        CustomerRegistered {
            customer_id: c,
            profile: CustomerProfile {
                kind: CustomerKind::Company,
                number: Some("KH-2024-00317".into()),
                name: "苏州恒远精密机械有限公司".into(),
                region: "华东".into(),
                industry: "机械制造".into(),
                level: CustomerLevel::Key,
                credit: 4,
                satisfaction: 4,
                registration: Registration {
                    address: Some("江苏省苏州市工业园区星湖街218号".into()),
                    registered_capital: Some(5_000_000_000),
                    currency: Some("CNY".into()),
                    ..Registration::default()
                },
            },
            owner: UserId::new("am-zhang.wei"),
        }
        .into(),
        TouchpointRecorded {
            customer_id: c,
            touchpoint_id: TouchpointId(id(10)),
            touchpoint: Touchpoint {
                channel: Channel::Email {
                    direction: Direction::Outbound,
                    subject: "二期产线改造方案（第二版）".into(),
                },
                summary: "发送修订后的技术方案和报价单".into(),
                contact_id: Some(ContactId(id(11))),
                opportunity_id: Some(OpportunityId(id(12))),
            },
        }
        .into(),
        TouchpointRecorded {
            customer_id: c,
            touchpoint_id: TouchpointId(id(13)),
            touchpoint: Touchpoint {
                channel: Channel::PhoneCall {
                    direction: Direction::Inbound,
                    duration_seconds: 412,
                    wait_seconds: 38,
                    outcome: CallOutcome::Answered,
                },
                summary: "询问交货期".into(),
                contact_id: None,
                opportunity_id: None,
            },
        }
        .into(),
        OpportunityStageChanged {
            customer_id: c,
            opportunity_id: OpportunityId(id(12)),
            from: Stage::Evaluation,
            to: Stage::Proposal,
            reason: Some("客户要求增加自动上下料单元".into()),
            probability: Some(40),
        }
        .into(),
        OpportunityOpened {
            customer_id: c,
            opportunity_id: OpportunityId(id(12)),
            source: "展会".into(),
            title: "二期产线数控化改造".into(),
            value: cny(160_000_000),
            probability: 30,
            expected_close: NaiveDate::from_ymd_opt(2025, 9, 30).unwrap(),
            contact_id: None,
            description: None,
        }
        .into(),
        OrderPlaced {
            customer_id: c,
            order_number: OrderNumber("SO-20250812-0045".into()),
            lines: vec![OrderLine {
                product: "数控车床 CK6150".into(),
                quantity: 2,
                unit_price: 18_500_000,
            }],
            total: cny(37_000_000),
            delivery_address: Some("苏州市相城区澄阳路116号".into()),
        }
        .into(),
        ServiceFeedbackGiven {
            customer_id: c,
            service_request_id: ServiceRequestId(id(20)),
            result: "手册是英文版，要求上门指导".into(),
            satisfaction: 2,
        }
        .into(),
        ChurnWarningRaised {
            customer_id: c,
            churn_case_id: ChurnCaseId(id(30)),
            reason: "超过180天没有下单".into(),
            last_order_at: Some(at(2025, 2, 1, 6, 30, 0, 0)),
        }
        .into(),
        ContactRemoved {
            customer_id: c,
            contact_id: ContactId(id(11)),
        }
        .into(),
    ]
}

fn recorded(event: CustomerEvent, metadata: EventMetadata) -> RecordedEvent {
    RecordedEvent { metadata, event }
}

fn sample() -> RecordedEvent {
    recorded(events().remove(3), full_metadata(7))
}

/// Decodes a record as a Kafka consumer hands it over.
fn from_record(r: &KafkaRecord) -> Result<RecordedEvent, EnvelopeError> {
    RecordedEvent::from_kafka(
        Some(&r.key),
        r.headers.iter().map(|(k, v)| (*k, Some(v.as_slice()))),
        Some(&r.value),
    )
}

fn header_value<'a>(r: &'a KafkaRecord, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
}

fn without(mut r: KafkaRecord, name: &str) -> KafkaRecord {
    r.headers.retain(|(k, _)| *k != name);
    r
}

fn with(mut r: KafkaRecord, name: &'static str, value: &[u8]) -> KafkaRecord {
    r.headers.retain(|(k, _)| *k != name);
    r.headers.push((name, value.to_vec()));
    r
}

fn record() -> KafkaRecord {
    sample().to_kafka().unwrap()
}

// ---------------------------------------------------------------- round trips

#[test]
fn every_event_round_trips_with_all_metadata() {
    for (i, event) in events().into_iter().enumerate() {
        let original = recorded(event, full_metadata(i as u64 + 1));
        let r = original.to_kafka().unwrap();
        assert_eq!(
            from_record(&r).unwrap(),
            original,
            "{}",
            original.event.event_type()
        );
    }
}

#[test]
fn every_event_round_trips_without_the_optional_metadata() {
    for (i, event) in events().into_iter().enumerate() {
        let original = recorded(event, minimal_metadata(i as u64 + 1));
        let r = original.to_kafka().unwrap();
        for absent in [header::COMMAND, header::COMMAND_ID, header::CAUSATION_ID] {
            assert_eq!(header_value(&r, absent), None, "{absent}");
        }
        assert_eq!(
            from_record(&r).unwrap(),
            original,
            "{}",
            original.event.event_type()
        );
    }
}

#[test]
fn the_record_is_cloudevents_binary_mode() {
    let e = sample();
    let r = e.to_kafka().unwrap();
    assert_eq!(r.key, CUSTOMER.as_bytes());
    assert_eq!(header_value(&r, "ce_specversion"), Some("1.0"));
    assert_eq!(
        header_value(&r, "ce_id"),
        Some(id(1007).to_string().as_str())
    );
    assert_eq!(header_value(&r, "ce_source"), Some("/command-service"));
    assert_eq!(
        header_value(&r, "ce_type"),
        Some("crm.opportunity.stage_changed.v1")
    );
    assert_eq!(header_value(&r, "ce_subject"), Some(CUSTOMER));
    assert_eq!(header_value(&r, "content-type"), Some("application/json"));
    // CloudEvents `time` is the business time; both times are RFC 3339 UTC with microseconds
    assert_eq!(
        header_value(&r, "ce_time"),
        Some("2025-07-14T01:23:45.123456Z")
    );
    assert_eq!(
        header_value(&r, "ce_occurredat"),
        Some("2025-07-14T01:23:45.123456Z")
    );
    assert_eq!(
        header_value(&r, "ce_recordedat"),
        Some("2025-07-15T09:00:00.000007Z")
    );
    assert_eq!(header_value(&r, "ce_sequence"), Some("7"));
    assert_eq!(header_value(&r, "ce_actor"), Some("am-zhang.wei"));
    assert_eq!(header_value(&r, "ce_command"), Some("change_stage"));
    assert_eq!(header_value(&r, "ce_commandid"), Some("req-7f3a9c"));
    assert_eq!(
        header_value(&r, "ce_correlationid"),
        Some(id(2000).to_string().as_str())
    );
    assert_eq!(
        header_value(&r, "ce_causationid"),
        Some(id(3000).to_string().as_str())
    );
    // header names are unique and the body is the event's JSON, nothing more
    let mut names: Vec<&str> = r.headers.iter().map(|(k, _)| *k).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), r.headers.len());
    let body: Value = serde_json::from_slice(&r.value).unwrap();
    assert_eq!(body, e.event.to_value().unwrap());
    assert_eq!(body["customer_id"], CUSTOMER);
}

#[test]
fn times_travel_with_microsecond_precision() {
    let mut e = sample();
    let nanos = at(2025, 7, 14, 1, 23, 45, 0) + chrono::Duration::nanoseconds(123_456_789);
    e.metadata.occurred_at = nanos;
    e.metadata.recorded_at = nanos;
    let back = from_record(&e.to_kafka().unwrap()).unwrap();
    assert_eq!(back.metadata.occurred_at, nanos.trunc_subsecs(6));
    assert_eq!(back.metadata.recorded_at, nanos.trunc_subsecs(6));
}

#[test]
fn occurred_at_falls_back_to_the_cloudevents_time() {
    let r = without(record(), header::OCCURRED_AT);
    assert_eq!(from_record(&r).unwrap(), sample());
    // and a producer's offset time is read as the same instant in UTC
    let r = with(
        record(),
        header::OCCURRED_AT,
        b"2025-07-14T09:23:45.123456+08:00",
    );
    assert_eq!(from_record(&r).unwrap(), sample());
}

#[test]
fn content_type_is_optional_and_may_carry_parameters() {
    assert_eq!(
        from_record(&without(record(), header::CONTENT_TYPE)).unwrap(),
        sample()
    );
    let r = with(
        record(),
        header::CONTENT_TYPE,
        b"application/json; charset=utf-8",
    );
    assert_eq!(from_record(&r).unwrap(), sample());
}

#[test]
fn the_last_of_repeated_headers_wins() {
    let mut r = record();
    r.headers
        .insert(0, (header::SEQUENCE, b"not a number".to_vec()));
    r.headers.push((header::ACTOR, b"am-li.na".to_vec()));
    let e = from_record(&r).unwrap();
    assert_eq!(e.metadata.sequence, 7);
    assert_eq!(e.metadata.actor, "am-li.na");
}

#[test]
fn unknown_headers_are_ignored() {
    let mut r = record();
    r.headers.push((
        "traceparent",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
    ));
    r.headers.push(("ce_partitionkey", b"whatever".to_vec()));
    assert_eq!(from_record(&r).unwrap(), sample());
}

// ---------------------------------------------------------------- malformed records

#[test]
fn each_missing_required_header_is_named() {
    for name in [
        header::SPEC_VERSION,
        header::SUBJECT,
        header::TYPE,
        header::ID,
        header::SOURCE,
        header::SEQUENCE,
        header::ACTOR,
        header::CORRELATION_ID,
        header::RECORDED_AT,
    ] {
        assert_eq!(
            from_record(&without(record(), name)),
            Err(EnvelopeError::MissingHeader(name)),
            "{name}"
        );
    }
    let neither_time = without(without(record(), header::OCCURRED_AT), header::TIME);
    assert_eq!(
        from_record(&neither_time),
        Err(EnvelopeError::MissingHeader(header::TIME))
    );
}

#[test]
fn a_null_header_value_counts_as_missing() {
    let r = record();
    let decoded = RecordedEvent::from_kafka(
        Some(&r.key),
        r.headers.iter().map(|(k, v)| {
            let v = if *k == header::ACTOR {
                None
            } else {
                Some(v.as_slice())
            };
            (*k, v)
        }),
        Some(&r.value),
    );
    assert_eq!(decoded, Err(EnvelopeError::MissingHeader(header::ACTOR)));
}

fn invalid_header_name(r: Result<RecordedEvent, EnvelopeError>) -> &'static str {
    match r {
        Err(EnvelopeError::InvalidHeader { name, reason }) => {
            assert!(!reason.is_empty());
            name
        }
        other => panic!("expected an invalid header, got {other:?}"),
    }
}

#[test]
fn each_invalid_header_is_named() {
    let cases: &[(&'static str, &[u8])] = &[
        (header::ID, b"not-a-uuid"),
        (header::SEQUENCE, b"-1"),
        (header::SEQUENCE, b"seven"),
        (header::SEQUENCE, b"18446744073709551616"),
        (header::CORRELATION_ID, b""),
        (header::CAUSATION_ID, b"0190a6f2"),
        (header::RECORDED_AT, b"yesterday"),
        (header::RECORDED_AT, b"2025-07-15 09:00:00"),
        (header::OCCURRED_AT, b"2025-13-01T00:00:00Z"),
        (header::ACTOR, b"am-\xff\xfe"),
        (header::SOURCE, b"\xc3\x28"),
        (header::COMMAND, b"\x80"),
    ];
    for (name, value) in cases {
        assert_eq!(
            invalid_header_name(from_record(&with(record(), name, value))),
            *name,
            "{name} = {:?}",
            String::from_utf8_lossy(value)
        );
    }
}

#[test]
fn a_subject_that_is_not_a_customer_id_is_invalid() {
    let mut r = with(record(), header::SUBJECT, b"HY-0001");
    r.key = b"HY-0001".to_vec();
    assert_eq!(invalid_header_name(from_record(&r)), header::SUBJECT);
}

#[test]
fn only_cloudevents_1_0_is_accepted() {
    for v in ["0.3", "1.1", "", "1.0 "] {
        let r = with(record(), header::SPEC_VERSION, v.as_bytes());
        assert_eq!(
            from_record(&r),
            Err(EnvelopeError::SpecVersion(v.to_owned())),
            "{v:?}"
        );
    }
}

#[test]
fn only_json_bodies_are_accepted() {
    for ct in [
        "application/xml",
        "text/plain",
        "application/cloudevents+json",
        "",
    ] {
        let r = with(record(), header::CONTENT_TYPE, ct.as_bytes());
        assert_eq!(
            from_record(&r),
            Err(EnvelopeError::ContentType(ct.to_owned())),
            "{ct:?}"
        );
    }
}

#[test]
fn the_key_must_be_the_subject() {
    let mut r = record();
    r.key = OTHER_CUSTOMER.as_bytes().to_vec();
    assert_eq!(
        from_record(&r),
        Err(EnvelopeError::KeyMismatch {
            key: OTHER_CUSTOMER.into(),
            subject: CUSTOMER.into()
        })
    );
    // the same id spelled differently is still a different key: one customer, one partition
    r.key = CUSTOMER.to_uppercase().into_bytes();
    assert!(matches!(
        from_record(&r),
        Err(EnvelopeError::KeyMismatch { .. })
    ));
}

#[test]
fn the_body_must_be_about_the_subject() {
    let mut r = with(record(), header::SUBJECT, OTHER_CUSTOMER.as_bytes());
    r.key = OTHER_CUSTOMER.as_bytes().to_vec();
    assert_eq!(
        from_record(&r),
        Err(EnvelopeError::SubjectMismatch {
            body: CUSTOMER.into(),
            subject: OTHER_CUSTOMER.into()
        })
    );
}

#[test]
fn an_unknown_event_type_is_named() {
    let r = with(record(), header::TYPE, b"crm.opportunity.teleported.v1");
    assert_eq!(
        from_record(&r),
        Err(EnvelopeError::Event(EventDecodeError::UnknownType(
            "crm.opportunity.teleported.v1".into()
        )))
    );
    // a known fact at a version that does not exist (yet)
    let r = with(record(), header::TYPE, b"crm.opportunity.stage_changed.v2");
    assert!(matches!(
        from_record(&r),
        Err(EnvelopeError::Event(EventDecodeError::UnknownType(t))) if t == "crm.opportunity.stage_changed.v2"
    ));
}

fn body_error(r: &KafkaRecord) -> (String, String) {
    match from_record(r) {
        Err(EnvelopeError::Event(EventDecodeError::Body { event_type, reason })) => {
            (event_type, reason)
        }
        other => panic!("expected a body error, got {other:?}"),
    }
}

#[test]
fn a_body_that_is_not_the_event_is_a_body_error() {
    let stage_changed = "crm.opportunity.stage_changed.v1".to_owned();
    let bodies: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        Vec::new(),
        b"{\"customer_id\":".to_vec(),
        b"\xff\xfe{}".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        json!({"customer_id": CUSTOMER}).to_string().into_bytes(),
        // a body of another type under this type
        events()[0].to_json().unwrap(),
        // a stage outside the funnel
        {
            let mut v = sample().event.to_value().unwrap();
            v["to"] = json!("won");
            v.to_string().into_bytes()
        },
    ];
    for body in bodies {
        let mut r = record();
        r.value = body.clone();
        let (event_type, reason) = body_error(&r);
        assert_eq!(
            event_type,
            stage_changed,
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert!(!reason.is_empty());
    }
}

#[test]
fn a_record_without_key_or_body_is_refused() {
    let r = record();
    let headers = || r.headers.iter().map(|(k, v)| (*k, Some(v.as_slice())));
    assert_eq!(
        RecordedEvent::from_kafka(None, headers(), Some(&r.value)),
        Err(EnvelopeError::MissingKey)
    );
    assert_eq!(
        RecordedEvent::from_kafka(Some(&r.key), headers(), None),
        Err(EnvelopeError::MissingBody)
    );
    assert_eq!(
        RecordedEvent::from_kafka(None, std::iter::empty(), None),
        Err(EnvelopeError::MissingHeader(header::SPEC_VERSION))
    );
}

#[test]
fn errors_read_well_as_dead_letter_reasons() {
    let r = with(record(), header::SEQUENCE, b"seven");
    let text = from_record(&r).unwrap_err().to_string();
    assert!(
        text.starts_with("header `ce_sequence` is invalid: "),
        "{text}"
    );
    let r = with(record(), header::TYPE, b"crm.x.y.v1");
    assert_eq!(
        from_record(&r).unwrap_err().to_string(),
        "unknown event type `crm.x.y.v1`"
    );
}

// ---------------------------------------------------------------- properties

const HEADER_NAMES: &[&str] = &[
    header::ID,
    header::SOURCE,
    header::TYPE,
    header::SPEC_VERSION,
    header::TIME,
    header::SUBJECT,
    header::CONTENT_TYPE,
    header::SEQUENCE,
    header::ACTOR,
    header::COMMAND,
    header::COMMAND_ID,
    header::CORRELATION_ID,
    header::CAUSATION_ID,
    header::OCCURRED_AT,
    header::RECORDED_AT,
    "ce_other",
    "",
];

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(HEADER_NAMES).prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

/// Bytes that are sometimes plausible: valid ids, types, times, JSON.
fn header_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    let plausible = proptest::sample::select(vec![
        "1.0",
        CUSTOMER,
        OTHER_CUSTOMER,
        "crm.opportunity.stage_changed.v1",
        "crm.contact.removed.v1",
        "application/json",
        "2025-07-14T01:23:45.123456Z",
        "7",
        "",
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    proptest::option::weighted(
        0.9,
        prop_oneof![
            1 => plausible,
            1 => proptest::collection::vec(any::<u8>(), 0..48),
        ],
    )
}

fn body_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::weighted(
        0.9,
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            Just(sample().event.to_json().unwrap()),
            Just(br#"{"customer_id":"0190a6f2-3c1e-7b4a-9d2f-5e8c1a7b3d01"}"#.to_vec()),
        ],
    )
}

fn decode_raw(
    key: &Option<Vec<u8>>,
    headers: &[(String, Option<Vec<u8>>)],
    body: &Option<Vec<u8>>,
) -> Result<RecordedEvent, EnvelopeError> {
    RecordedEvent::from_kafka(
        key.as_deref(),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
        body.as_deref(),
    )
}

/// One step of damage to a valid record.
#[derive(Debug, Clone)]
enum Damage {
    Drop(usize),
    Replace(usize, Option<Vec<u8>>),
    Add(String, Option<Vec<u8>>),
    Body(Option<Vec<u8>>),
    TruncateBody(usize),
    Key(Option<Vec<u8>>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Drop),
        (any::<usize>(), header_bytes()).prop_map(|(i, v)| Damage::Replace(i, v)),
        (header_name(), header_bytes()).prop_map(|(n, v)| Damage::Add(n, v)),
        body_bytes().prop_map(Damage::Body),
        any::<usize>().prop_map(Damage::TruncateBody),
        header_bytes().prop_map(Damage::Key),
    ]
}

/// A time between 1970 and 2100 with microseconds.
fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800_000_000).prop_map(|us| DateTime::from_timestamp_micros(us).unwrap())
}

fn metadata() -> impl Strategy<Value = EventMetadata> {
    (
        (any::<u128>(), ".*", any::<u64>(), ".*"),
        (
            proptest::option::of(".*"),
            proptest::option::of(".*"),
            any::<u128>(),
            proptest::option::of(any::<u128>()),
        ),
        (time(), time()),
    )
        .prop_map(
            |(
                (id, source, sequence, actor),
                (command, command_id, correlation, causation),
                (occurred_at, recorded_at),
            )| {
                EventMetadata {
                    id: Uuid::from_u128(id),
                    source,
                    customer_id: customer(),
                    sequence,
                    actor,
                    command,
                    command_id,
                    command_fingerprint: None,
                    correlation_id: Uuid::from_u128(correlation),
                    causation_id: causation.map(Uuid::from_u128),
                    occurred_at,
                    recorded_at,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_records_never_panic(
        key in header_bytes(),
        headers in proptest::collection::vec((header_name(), header_bytes()), 0..20),
        body in body_bytes(),
    ) {
        let _ = decode_raw(&key, &headers, &body);
    }

    #[test]
    fn damaged_records_never_panic(damages in proptest::collection::vec(damage(), 1..6)) {
        let r = record();
        let mut key = Some(r.key);
        let mut headers: Vec<(String, Option<Vec<u8>>)> =
            r.headers.into_iter().map(|(k, v)| (k.to_owned(), Some(v))).collect();
        let mut body = Some(r.value);
        for d in damages {
            match d {
                Damage::Drop(i) if !headers.is_empty() => { let n = headers.len(); headers.remove(i % n); }
                Damage::Replace(i, v) if !headers.is_empty() => { let n = headers.len(); headers[i % n].1 = v; }
                Damage::Drop(_) | Damage::Replace(..) => {}
                Damage::Add(n, v) => headers.push((n, v)),
                Damage::Body(b) => body = b,
                Damage::TruncateBody(i) => if let Some(b) = &mut body { let n = b.len() + 1; b.truncate(i % n); },
                Damage::Key(k) => key = k,
            }
        }
        let _ = decode_raw(&key, &headers, &body);
    }

    #[test]
    fn any_metadata_round_trips(metadata in metadata(), which in 0usize..9) {
        let original = recorded(events().remove(which), metadata);
        let r = original.to_kafka().unwrap();
        prop_assert_eq!(from_record(&r).unwrap(), original);
    }
}

// ---------------------------------------------------------------- upcasting

/// A test-only history of the service feedback event: `crm.service_request.rated.v1` gave
/// 1–10 stars and a comment; `.v2` moved to a 1–5 rating; the current
/// `crm.service_request.feedback_given.v1` calls them satisfaction and result.
fn rated_v1_to_v2(mut v: Value) -> Result<Value, String> {
    let o = v.as_object_mut().ok_or("not an object")?;
    let stars = o
        .remove("stars")
        .and_then(|s| s.as_u64())
        .ok_or("no stars")?;
    o.insert("rating".into(), json!(stars.div_ceil(2)));
    Ok(v)
}

fn rated_v2_to_feedback(mut v: Value) -> Result<Value, String> {
    let o = v.as_object_mut().ok_or("not an object")?;
    let rating = o.remove("rating").ok_or("no rating")?;
    let comment = o.remove("comment").unwrap_or_else(|| json!(""));
    o.insert("satisfaction".into(), rating);
    o.insert("result".into(), comment);
    Ok(v)
}

const CHAIN: &[Upcaster] = &[
    Upcaster {
        from: "crm.service_request.rated.v1",
        to: "crm.service_request.rated.v2",
        upcast: rated_v1_to_v2,
    },
    Upcaster {
        from: "crm.service_request.rated.v2",
        to: "crm.service_request.feedback_given.v1",
        upcast: rated_v2_to_feedback,
    },
];

fn feedback(result: &str, satisfaction: u8) -> CustomerEvent {
    ServiceFeedbackGiven {
        customer_id: customer(),
        service_request_id: ServiceRequestId(id(20)),
        result: result.into(),
        satisfaction,
    }
    .into()
}

fn service_request() -> String {
    id(20).to_string()
}

#[test]
fn an_old_version_is_upcast_to_the_current_type() {
    let v2 = json!({"customer_id": CUSTOMER, "service_request_id": service_request(), "rating": 4, "comment": "很及时"});
    let decoded = decode_with::<CustomerEvent>(
        CHAIN,
        "crm.service_request.rated.v2",
        v2.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(decoded, feedback("很及时", 4));
    assert_eq!(
        decoded.event_type(),
        "crm.service_request.feedback_given.v1"
    );
}

#[test]
fn upcasters_chain_through_every_version() {
    let v1 = json!({"customer_id": CUSTOMER, "service_request_id": service_request(), "stars": 3, "comment": "手册看不懂"});
    let decoded = decode_with::<CustomerEvent>(
        CHAIN,
        "crm.service_request.rated.v1",
        v1.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(decoded, feedback("手册看不懂", 2));
}

#[test]
fn a_current_type_is_decoded_without_upcasting() {
    let body = feedback("满意", 5).to_json().unwrap();
    let decoded =
        decode_with::<CustomerEvent>(CHAIN, "crm.service_request.feedback_given.v1", &body)
            .unwrap();
    assert_eq!(decoded, feedback("满意", 5));
    assert_eq!(
        decode::<CustomerEvent>("crm.service_request.feedback_given.v1", &body).unwrap(),
        decoded
    );
}

#[test]
fn an_unknown_type_is_unknown_with_or_without_upcasters() {
    let body = br#"{"customer_id":"0190a6f2-3c1e-7b4a-9d2f-5e8c1a7b3d01"}"#;
    for t in ["crm.service_request.rated.v3", "crm.nothing.v1", ""] {
        assert_eq!(
            decode_with::<CustomerEvent>(CHAIN, t, body),
            Err(EventDecodeError::UnknownType(t.into()))
        );
        assert_eq!(
            decode::<CustomerEvent>(t, body),
            Err(EventDecodeError::UnknownType(t.into()))
        );
    }
    // without its upcaster an old version is unknown too
    assert_eq!(
        decode_with::<CustomerEvent>(&CHAIN[1..], "crm.service_request.rated.v1", body),
        Err(EventDecodeError::UnknownType(
            "crm.service_request.rated.v1".into()
        ))
    );
}

#[test]
fn a_chain_that_ends_nowhere_or_loops_is_an_unknown_type() {
    fn same(v: Value) -> Result<Value, String> {
        Ok(v)
    }
    let dead_end = [Upcaster {
        from: "crm.a.b.v1",
        to: "crm.a.b.v2",
        upcast: same,
    }];
    let cycle = [
        Upcaster {
            from: "crm.a.b.v1",
            to: "crm.a.b.v2",
            upcast: same,
        },
        Upcaster {
            from: "crm.a.b.v2",
            to: "crm.a.b.v1",
            upcast: same,
        },
    ];
    for table in [&dead_end[..], &cycle[..]] {
        assert_eq!(
            decode_with::<CustomerEvent>(table, "crm.a.b.v1", b"{}"),
            Err(EventDecodeError::UnknownType("crm.a.b.v1".into()))
        );
    }
}

#[test]
fn a_failing_upcast_or_a_bad_old_body_is_a_body_error() {
    let no_stars = json!({"customer_id": CUSTOMER, "service_request_id": service_request()});
    match decode_with::<CustomerEvent>(
        CHAIN,
        "crm.service_request.rated.v1",
        no_stars.to_string().as_bytes(),
    ) {
        Err(EventDecodeError::Body { event_type, reason }) => {
            assert_eq!(event_type, "crm.service_request.rated.v1");
            assert_eq!(reason, "no stars");
        }
        other => panic!("expected a body error, got {other:?}"),
    }
    assert!(matches!(
        decode_with::<CustomerEvent>(CHAIN, "crm.service_request.rated.v1", b"not json"),
        Err(EventDecodeError::Body { event_type, .. }) if event_type == "crm.service_request.rated.v1"
    ));
    // upcast fine, but the result is not a valid current event (no service request id)
    let incomplete = json!({"customer_id": CUSTOMER, "rating": 4});
    assert!(matches!(
        decode_with::<CustomerEvent>(
            CHAIN,
            "crm.service_request.rated.v2",
            incomplete.to_string().as_bytes()
        ),
        Err(EventDecodeError::Body { .. })
    ));
}

#[test]
fn the_real_table_is_consistent() {
    for u in domain::upcast::UPCASTERS {
        assert!(!EVENT_TYPES.contains(&u.from), "{} is current", u.from);
    }
}

#[test]
fn envelope_time_is_what_survives_the_trip() {
    let nanos = at(2025, 7, 14, 1, 23, 45, 0) + chrono::Duration::nanoseconds(123_456_789);
    let mut e = sample();
    e.metadata.occurred_at = domain::envelope::envelope_time(nanos);
    e.metadata.recorded_at = domain::envelope::envelope_time(nanos);
    assert_eq!(from_record(&e.to_kafka().unwrap()).unwrap(), e);
}

#[test]
fn another_spelling_of_the_customer_id_is_refused() {
    let mut r = record();
    let upper = sample()
        .metadata
        .customer_id
        .to_string()
        .to_uppercase()
        .into_bytes();
    r.key = upper.clone();
    let r = with(r, header::SUBJECT, &upper);
    assert!(matches!(
        from_record(&r),
        Err(EnvelopeError::InvalidHeader {
            name: header::SUBJECT,
            ..
        })
    ));
}

#[test]
fn a_content_type_that_merely_starts_like_json_is_refused() {
    let r = with(record(), header::CONTENT_TYPE, b"application/jsonx");
    assert!(matches!(
        from_record(&r),
        Err(EnvelopeError::ContentType(_))
    ));
}
