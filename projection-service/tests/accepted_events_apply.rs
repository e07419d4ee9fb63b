//! **Every event the command side accepts, every read model can apply.** Commands generated
//! with arbitrary Unicode — C0 controls, U+0000, right-to-left marks, byte-order marks,
//! noncharacters, the neighbours of the surrogate range, emoji and other 4-byte characters, and
//! lengths at and just past each field's maximum — go through command-service's HTTP routes,
//! the log and the projection, on both backends (the embedded log, and a Kafka-compatible
//! broker). Each command is either refused with a 4xx problem (and appends nothing) or
//! acknowledged; every acknowledged event is then in the read models (the audit trail holds
//! its id, the customer row its last accepted name), nothing else is, and a rebuild from
//! offset zero equals them.
//!
//! The generator is random on each run (proptest's runner); a failure prints the command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use common::*;
use crm_tests::{unique_prefix, KafkaBroker};
use infra::kafka::{provision_topics, KafkaSettings};
use infra::log::KafkaCustomerLog;
use projection_service::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};
use tower::ServiceExt;

const PARTITIONS: i32 = 3;
const CUSTOMERS: usize = 6;
const COMMANDS: usize = 300;

/// Text of every kind, up to and just past `max` characters.
fn text(max: usize) -> BoxedStrategy<String> {
    let special = prop::sample::select(vec![
        '\u{0}',
        '\u{1}',
        '\u{7}',
        '\u{8}',
        '\u{b}',
        '\u{1b}',
        '\u{7f}',
        '\u{85}',
        '\u{a0}',
        '\u{200b}',
        '\u{200e}',
        '\u{200f}',
        '\u{202e}',
        '\u{2066}',
        '\u{feff}',
        '\u{fffd}',
        '\u{fffe}',
        '\u{ffff}',
        '\u{d7ff}',
        '\u{e000}',
        '\u{10ffff}',
        '😀',
        '👩',
        '\u{200d}',
        '𝄞',
        '字',
        'é',
        'a',
        ' ',
        '"',
        '\\',
        '\n',
        '\r',
        '\t',
        '=',
        '+',
        '\'',
        '<',
    ]);
    let any_char = prop_oneof![5 => special, 5 => any::<char>()];
    let long_char = prop::sample::select(vec!['字', '𝄞', 'a', '😀', '\u{202e}']);
    prop_oneof![
        6 => prop::collection::vec(any_char, 0..24)
            .prop_map(|v| v.into_iter().collect::<String>()),
        1 => (max.saturating_sub(1)..=max + 1)
            .prop_flat_map(move |n| prop::collection::vec(long_char.clone(), n..=n))
            .prop_map(|v| v.into_iter().collect::<String>()),
    ]
    .boxed()
}

/// A JSON value that is either the text or, sometimes, `null` (for optional fields).
fn optional_text(max: usize) -> BoxedStrategy<Value> {
    prop_oneof![4 => text(max).prop_map(Value::String), 1 => Just(Value::Null)].boxed()
}

fn registration() -> BoxedStrategy<Value> {
    (
        optional_text(500),
        optional_text(200),
        optional_text(2000),
        optional_text(200),
        optional_text(200),
    )
        .prop_map(|(address, phone, website, bank, tax)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("address", address),
                ("phone", phone),
                ("website", website),
                ("bank", bank),
                ("national_tax_number", tax),
            ] {
                if !v.is_null() {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        })
        .boxed()
}

/// One request: method, path (with `{c}` for the customer), body.
#[derive(Debug, Clone)]
struct Step {
    customer: usize,
    method: &'static str,
    path: &'static str,
    body: Value,
}

fn step() -> BoxedStrategy<Step> {
    let customer = 0..CUSTOMERS;
    prop_oneof![
        (customer.clone(), text(200), text(200), optional_text(200), registration()).prop_map(
            |(customer, name, region, number, registration)| {
                let mut profile = json!({"kind": "company", "name": name, "region": region, "industry": "software",
                    "level": "key", "credit": 3, "satisfaction": 4, "registration": registration});
                if !number.is_null() {
                    profile["number"] = number;
                }
                Step { customer, method: "POST", path: "/v1/customers", body: json!({"profile": profile, "owner": "am-li"}) }
            }
        ),
        (customer.clone(), text(200), registration(), optional_text(200)).prop_map(
            |(customer, name, registration, phone)| Step {
                customer,
                method: "PATCH",
                path: "/v1/customers/{c}",
                body: json!({"changes": {"name": name, "registration": registration, "number": phone}}),
            }
        ),
        (customer.clone(), text(200), optional_text(2000), optional_text(200)).prop_map(
            |(customer, name, memo, email)| Step {
                customer,
                method: "POST",
                path: "/v1/customers/{c}/contacts",
                body: json!({"contact": {"name": name, "memo": memo, "email": email}}),
            }
        ),
        (customer.clone(), text(1000), text(10_000)).prop_map(|(customer, subject, summary)| Step {
            customer,
            method: "POST",
            path: "/v1/customers/{c}/touchpoints",
            body: json!({"touchpoint": {"channel": {"kind": "email", "direction": "inbound", "subject": subject}, "summary": summary}}),
        }),
        (customer.clone(), text(500), text(10_000)).prop_map(|(customer, place, summary)| Step {
            customer,
            method: "POST",
            path: "/v1/customers/{c}/touchpoints",
            body: json!({"touchpoint": {"channel": {"kind": "visit", "place": place}, "summary": summary}}),
        }),
        (customer.clone(), text(200), text(10_000)).prop_map(|(customer, sub, description)| Step {
            customer,
            method: "POST",
            path: "/v1/customers/{c}/complaints",
            body: json!({"category": "product", "sub_category": sub, "urgency": "high", "importance": "low", "description": description}),
        }),
        (customer.clone(), text(200), text(500), optional_text(10_000)).prop_map(
            |(customer, source, title, description)| Step {
                customer,
                method: "POST",
                path: "/v1/customers/{c}/opportunities",
                body: json!({"source": source, "title": title, "value": {"amount": 500_000, "currency": "CNY"},
                             "probability": 30, "expected_close": "2026-12-31", "description": description}),
            }
        ),
        (customer.clone(), text(200), text(200), 1u32..5).prop_map(
            |(customer, number, product, quantity)| Step {
                customer,
                method: "POST",
                path: "/v1/customers/{c}/orders",
                body: json!({"order_number": number, "lines": [{"product": product, "quantity": quantity, "unit_price": 1000}],
                             "total": {"amount": 1000 * i64::from(quantity), "currency": "CNY"}}),
            }
        ),
        (customer, text(10_000), text(10_000)).prop_map(|(customer, summary, request)| Step {
            customer,
            method: "POST",
            path: "/v1/customers/{c}/service-requests",
            body: json!({"kind": "consultation", "summary": summary, "request": request}),
        }),
    ]
    .boxed()
}

/// The generated run: each customer registered with a plain profile first (so that most
/// commands have a customer to land on), then the random steps.
fn generate() -> Vec<Step> {
    let mut runner = TestRunner::new(proptest::test_runner::Config::default());
    let steps = prop::collection::vec(step(), COMMANDS..=COMMANDS)
        .new_tree(&mut runner)
        .map(|t| t.current())
        .unwrap_or_default();
    let mut all: Vec<Step> = (0..CUSTOMERS)
        .map(|customer| Step {
            customer,
            method: "POST",
            path: "/v1/customers",
            body: json!({"profile": {"kind": "person", "name": format!("客户 {customer}"), "region": "华东",
                                     "industry": "retail", "level": "ordinary", "credit": 3, "satisfaction": 3},
                         "owner": "am-li"}),
        })
        .collect();
    all.extend(steps);
    all
}

/// What the command side acknowledged.
#[derive(Default)]
struct Acknowledged {
    event_ids: BTreeSet<String>,
    /// The last accepted name of each customer (registration or profile change).
    names: BTreeMap<String, String>,
    refused: usize,
}

async fn drive(router: &Router, steps: &[Step]) -> Acknowledged {
    let customers: Vec<String> = (0..CUSTOMERS)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let mut ack = Acknowledged::default();
    for step in steps {
        let c = &customers[step.customer];
        let mut body = step.body.clone();
        if step.path == "/v1/customers" {
            body["customer_id"] = json!(c);
        }
        let request = Request::builder()
            .method(step.method)
            .uri(step.path.replace("{c}", c))
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(
            status.is_success() || status.is_client_error(),
            "{status} for {step:?}: {answer}"
        );
        if status.is_client_error() {
            ack.refused += 1;
            assert!(answer["type"].is_string(), "a problem: {answer}");
            continue;
        }
        for e in answer["events"].as_array().unwrap() {
            ack.event_ids.insert(e["id"].as_str().unwrap().to_owned());
        }
        let name = match step.path {
            "/v1/customers" => body["profile"]["name"].as_str(),
            "/v1/customers/{c}" => body["changes"]["name"].as_str(),
            _ => None,
        };
        if let Some(name) = name {
            ack.names.insert(c.clone(), name.to_owned());
        }
    }
    ack
}

fn options() -> RunOptions {
    let mut options = RunOptions::new("rm");
    options.batch = BatchOptions {
        max_records: 50,
        max_wait: Duration::from_millis(20),
        ..BatchOptions::default()
    };
    options.version_check_interval = Duration::from_millis(200);
    options.jobs.sweep_interval = Duration::from_secs(3600);
    options.jobs.rfm_interval = Duration::from_secs(3600);
    options.jobs.rfm_check_interval = Duration::from_secs(3600);
    options
}

/// Waits until the audit trail holds every acknowledged event, then checks the read models
/// against what was acknowledged.
async fn check_read_models(db: &TestDb, ack: &Acknowledged, service: &ProjectionService) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let ids: BTreeSet<String> = loop {
        let rows: Vec<(uuid::Uuid,)> = sqlx::query_as("SELECT event_id FROM rm_v1.audit_trail")
            .fetch_all(&db.pool)
            .await
            .unwrap_or_default();
        let ids: BTreeSet<String> = rows.into_iter().map(|(id,)| id.to_string()).collect();
        if ids.len() >= ack.event_ids.len() || Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let missing: Vec<&String> = ack.event_ids.difference(&ids).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are not in the read models (projection: {:?})",
        missing.len(),
        service.status()
    );
    assert_eq!(
        ids, ack.event_ids,
        "the read models hold exactly what was acknowledged"
    );
    assert_eq!(service.status().consumer.dead_letters, 0);
    for (customer, name) in &ack.names {
        let (stored,): (String,) =
            sqlx::query_as("SELECT name FROM rm_v1.customers WHERE customer_id = $1::uuid")
                .bind(customer)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(&stored, name, "customer {customer}");
    }
}

async fn rebuild_equals(db: &TestDb, source: EventSource) {
    let outcome = replay_into(&db.pool, source.clone(), 2, options().batch, false).await;
    assert_eq!(outcome.dead_letters, 0);
    let v1 = projected_facts(&db.pool, "rm_v1").await;
    let v2 = projected_facts(&db.pool, "rm_v2").await;
    assert_same(&v1, &v2, "a rebuild from offset zero");

    // each read model rebuilt alone into the live version ends as it was
    for name in read_models::names() {
        let before = snapshot(&db.pool, "rm_v1").await;
        // the live rows go: only the rebuilt ones can bring them back (the stage alerts are
        // refused below: they come from the sweep, not from the events alone)
        let tables = match name {
            "stage_alerts" => &[][..],
            _ => read_models::tables_of(name),
        };
        for table in tables {
            sqlx::query(&format!("DELETE FROM rm_v1.{table}"))
                .execute(&db.pool)
                .await
                .unwrap();
        }
        match rebuild_read_model(
            db.pool.clone(),
            source.clone(),
            RebuildOptions {
                catch_up_lag: 0,
                batch: options().batch,
                ..RebuildOptions::new("rm", name)
            },
            Metrics::new().unwrap(),
            |_| {},
        )
        .await
        {
            Ok(outcome) => assert!(outcome.events_applied > 0, "{name}: {outcome:?}"),
            Err(ServiceError::Projection(ProjectionError::NotRebuildableAlone { .. })) => {
                assert_eq!(name, "stage_alerts");
                continue;
            }
            Err(e) => panic!("rebuilding {name}: {e}"),
        }
        let mut after = snapshot(&db.pool, "rm_v1").await;
        let mut before = before;
        if name == "rfm" {
            // recomputed by the jobs from the orders, not by the rebuild
            for t in ["rfm", "rfm_runs"] {
                before.remove(t);
                after.remove(t);
            }
        }
        assert_same(&before, &after, &format!("read model {name} rebuilt alone"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_log_every_accepted_event_applies() {
    let steps = generate();
    let dir = std::env::temp_dir().join(format!("crm-prop-{}", uuid::Uuid::now_v7()));
    let topics = EmbeddedTopics::open(&dir, PARTITIONS).unwrap();
    let app = command_app("/property-test", topics.customer_events.clone());
    app.streams
        .assign(&(0..PARTITIONS).collect::<Vec<_>>())
        .await
        .unwrap();
    let router = command_service::http::router(app, 16 * 1024 * 1024);
    let ack = drive(&router, &steps).await;
    eprintln!(
        "embedded: {} commands, {} refused, {} events acknowledged",
        steps.len(),
        ack.refused,
        ack.event_ids.len()
    );
    assert!(ack.event_ids.len() >= CUSTOMERS);
    let db = TestDb::new().await;
    let service = ProjectionService::start_on(
        db.pool.clone(),
        EventSource::Embedded(topics.clone()),
        options(),
        Arc::new(SystemClock),
    )
    .unwrap();
    check_read_models(&db, &ack, &service).await;
    service.shutdown().await;
    rebuild_equals(&db, EventSource::Embedded(topics)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_every_accepted_event_applies() {
    let steps = generate();
    let broker = KafkaBroker::start();
    let settings = KafkaSettings {
        partitions: PARTITIONS,
        operation_timeout_ms: 15_000,
        ..KafkaSettings::new(broker.brokers(), unique_prefix("accepted"))
    };
    provision_topics(&settings).await.unwrap();
    let app = command_app(
        "/property-test",
        Arc::new(KafkaCustomerLog {
            settings: settings.clone(),
        }),
    );
    app.streams
        .assign(&(0..PARTITIONS).collect::<Vec<_>>())
        .await
        .unwrap();
    let router = command_service::http::router(app, 16 * 1024 * 1024);
    let ack = drive(&router, &steps).await;
    eprintln!(
        "kafka: {} commands, {} refused, {} events acknowledged",
        steps.len(),
        ack.refused,
        ack.event_ids.len()
    );
    let db = TestDb::new().await;
    let service = ProjectionService::start(
        db.pool.clone(),
        settings.clone(),
        options(),
        Arc::new(SystemClock),
    )
    .unwrap();
    check_read_models(&db, &ack, &service).await;
    service.shutdown().await;
    rebuild_equals(&db, EventSource::Kafka(settings)).await;
}
