#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Channel adapters publish CloudEvents on the inbound topic: valid ones are appended once,
//! invalid ones land on the dead-letter topic with the reason, and the pipeline goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use command_service::inbound::InboundReaders;
use command_service::streams::{Caller, CommandRequest, Via};
use command_service::App;
use crm_tests::{unique_prefix, KafkaBroker};
use domain::access::{Credential, Principal, Role};
use domain::*;
use infra::auth::{AuthArgs, Authenticator};
use infra::kafka::{provision_topics, read_partition, KafkaSettings, DLQ_REASON};
use infra::log::KafkaCustomerLog;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

const PARTITIONS: i32 = 2;

fn ce_headers(id: &str, event_type: &str, subject: &str, time: &str) -> OwnedHeaders {
    ce_headers_from("/channels/wechat", id, event_type, subject, time)
}

fn ce_headers_from(
    source: &str,
    id: &str,
    event_type: &str,
    subject: &str,
    time: &str,
) -> OwnedHeaders {
    [
        ("ce_specversion", "1.0"),
        ("ce_id", id),
        ("ce_source", source),
        ("ce_type", event_type),
        ("ce_subject", subject),
        ("ce_time", time),
        ("content-type", "application/json"),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(v),
        })
    })
}

async fn publish(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    headers: OwnedHeaders,
    body: &[u8],
) {
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(body)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

fn touchpoint_body(customer: CustomerId, summary: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "customer_id": customer,
        "touchpoint_id": Uuid::now_v7(),
        "touchpoint": {"channel": {"kind": "wechat", "direction": "inbound"}, "summary": summary}
    }))
    .unwrap()
}

async fn all(settings: &KafkaSettings, topic: &str) -> Vec<infra::kafka::StoredRecord> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        out.extend(read_partition(settings, topic, p, 0).await.unwrap());
    }
    out
}

#[tokio::test]
async fn inbound_events_are_validated_appended_once_or_dead_lettered() {
    let broker = KafkaBroker::start();
    let mut settings = KafkaSettings::new(broker.brokers(), unique_prefix("inbound"));
    settings.partitions = PARTITIONS;
    provision_topics(&settings).await.unwrap();
    let app = App::new(
        Arc::new(KafkaCustomerLog {
            settings: settings.clone(),
        }),
        "/test".into(),
        Authenticator::from_args(&AuthArgs {
            channel_sources: Some("/channels/wechat=channel-wechat".into()),
            api_keys: Some("an-api-key-of-16-chars=x:channel_adapter".into()),
            ..AuthArgs::default()
        })
        .unwrap(),
        domain::limits::BusinessTimeWindow::default(),
    )
    .unwrap();
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    app.streams.assign(&partitions).await.unwrap();

    let customer = CustomerId(Uuid::now_v7());
    let registered = app
        .streams
        .execute(CommandRequest {
            customer_id: customer,
            command: Command::RegisterCustomer(RegisterCustomer {
                profile: CustomerProfile {
                    kind: CustomerKind::Person,
                    number: None,
                    name: "李雷".into(),
                    region: "华南".into(),
                    industry: "retail".into(),
                    level: CustomerLevel::Ordinary,
                    credit: 3,
                    satisfaction: 3,
                    registration: Registration::default(),
                },
                owner: UserId::new("am-li"),
            }),
            expected_sequence: None,
            command_id: None,
            fingerprint: None,
            caller: Caller::new(
                Arc::new(Principal::new(
                    "am-li",
                    [Role::AccountManager],
                    Credential::Token,
                )),
                Via::Command,
            ),
            occurred_at: None,
            correlation_id: None,
            causation_id: None,
        })
        .await
        .unwrap();
    assert_eq!(registered.sequence, 1);

    let producer: FutureProducer = settings.producer_config().create().unwrap();
    let inbound = settings.topics().inbound();
    let c = customer.to_string();
    let unknown = CustomerId(Uuid::now_v7());
    // 1. valid
    let first = touchpoint_body(customer, "你好");
    publish(
        &producer,
        &inbound,
        &c,
        ce_headers(
            "wx-1",
            "crm.touchpoint.recorded.v1",
            &c,
            "2026-05-01T08:00:00Z",
        ),
        &first,
    )
    .await;
    // 2. the same event again (the adapter retried): appended once
    publish(
        &producer,
        &inbound,
        &c,
        ce_headers(
            "wx-1",
            "crm.touchpoint.recorded.v1",
            &c,
            "2026-05-01T08:00:00Z",
        ),
        &first,
    )
    .await;
    // 3. not JSON
    publish(
        &producer,
        &inbound,
        &c,
        ce_headers(
            "wx-2",
            "crm.touchpoint.recorded.v1",
            &c,
            "2026-05-01T08:01:00Z",
        ),
        b"{not json",
    )
    .await;
    // 4. a type that adapters may not publish
    publish(
        &producer,
        &inbound,
        &c,
        ce_headers("wx-3", "crm.churn.confirmed.v1", &c, "2026-05-01T08:02:00Z"),
        &serde_json::to_vec(&serde_json::json!({"customer_id": customer, "churn_case_id": Uuid::now_v7(), "reason": "x"})).unwrap(),
    )
    .await;
    // 5. a customer nobody registered
    let u = unknown.to_string();
    publish(
        &producer,
        &inbound,
        &u,
        ce_headers(
            "wx-4",
            "crm.touchpoint.recorded.v1",
            &u,
            "2026-05-01T08:03:00Z",
        ),
        &touchpoint_body(unknown, "谁"),
    )
    .await;
    // 6. valid again, after the bad ones: the pipeline went on
    publish(
        &producer,
        &inbound,
        &c,
        ce_headers(
            "wx-5",
            "crm.touchpoint.recorded.v1",
            &c,
            "2026-05-01T08:04:00Z",
        ),
        &touchpoint_body(customer, "再见"),
    )
    .await;

    // 7. from a source that is no configured adapter
    publish(
        &producer,
        &inbound,
        &c,
        ce_headers_from(
            "/channels/rogue",
            "wx-6",
            "crm.touchpoint.recorded.v1",
            &c,
            "2026-05-01T08:05:00Z",
        ),
        &touchpoint_body(customer, "冒充"),
    )
    .await;

    let readers = InboundReaders::new(app.clone(), settings.clone()).unwrap();
    readers.start(&partitions);

    let deadline = Instant::now() + Duration::from_secs(60);
    let (stream, dead) = loop {
        let stream: Vec<RecordedEvent> = all(&settings, &settings.topics().customer_events())
            .await
            .iter()
            .map(|r| r.decode().unwrap())
            .filter(|e| e.metadata.customer_id == customer)
            .collect();
        let dead = all(&settings, &settings.topics().dead_letter()).await;
        if (stream.len() >= 3 && dead.len() >= 4) || Instant::now() > deadline {
            break (stream, dead);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    readers.stop(&partitions);

    assert_eq!(
        stream.len(),
        3,
        "registration and two touchpoints, the retry appended nothing"
    );
    assert_eq!(
        stream
            .iter()
            .map(|e| e.metadata.sequence)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let t = &stream[1];
    // the configured adapter behind the record's ce_source
    assert_eq!(t.metadata.actor, "channel-wechat");
    assert_eq!(
        t.metadata.occurred_at.to_rfc3339(),
        "2026-05-01T08:00:00+00:00"
    );
    assert_eq!(
        t.metadata.command_id.as_deref(),
        Some("inbound:/channels/wechat:wx-1")
    );

    let reasons: Vec<String> = dead
        .iter()
        .map(|r| String::from_utf8_lossy(r.header(DLQ_REASON).unwrap()).into_owned())
        .collect();
    assert_eq!(dead.len(), 4, "{reasons:?}");
    let ids: Vec<String> = dead
        .iter()
        .map(|r| String::from_utf8_lossy(r.header("ce_id").unwrap()).into_owned())
        .collect();
    for (id, reason) in ids.iter().zip(&reasons) {
        match id.as_str() {
            "wx-2" => assert!(reason.contains("does not match its schema"), "{reason}"),
            "wx-3" => assert!(
                reason.contains("cannot be published on the inbound topic"),
                "{reason}"
            ),
            "wx-4" => assert!(
                reason.contains("not-found") && reason.contains("not registered"),
                "{reason}"
            ),
            "wx-6" => assert!(
                reason.contains("not a configured channel adapter"),
                "{reason}"
            ),
            other => panic!("unexpected dead letter {other}: {reason}"),
        }
    }
    // the original record is kept as it was, with where it came from
    assert!(dead
        .iter()
        .all(|r| r.header("dlq_source_topic") == Some(inbound.as_bytes())));
}
