#![allow(clippy::unwrap_used, clippy::expect_used)]
//! command-service against a real Kafka-protocol broker: every command through HTTP, the
//! events read back by a read_committed reader, concurrency, idempotency and bad input.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use command_service::App;
use crm_tests::{unique_prefix, KafkaBroker};
use domain::{CustomerId, RecordedEvent};
use infra::kafka::{provision_topics, read_partition, KafkaSettings};
use infra::log::KafkaCustomerLog;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

mod common;

const PARTITIONS: i32 = 3;

struct Service {
    _broker: KafkaBroker,
    settings: KafkaSettings,
    app: Arc<App>,
    router: Router,
}

async fn service(name: &str) -> Service {
    infra::config::init_tracing(infra::config::LogFormat::Text);
    let broker = KafkaBroker::start();
    let mut settings = KafkaSettings::new(broker.brokers(), unique_prefix(name));
    settings.partitions = PARTITIONS;
    provision_topics(&settings).await.unwrap();
    let app = owner_of_every_partition(&settings, None).await;
    let router = command_service::http::router(app.clone(), 1024 * 1024);
    Service {
        _broker: broker,
        settings,
        app,
        router,
    }
}

/// A command-service owning every partition of the settings' topic (a new owner, when one
/// exists already: it rebuilds the partitions from the log), with an idempotency window.
async fn owner_of_every_partition(
    settings: &KafkaSettings,
    idempotency_window: Option<std::time::Duration>,
) -> Arc<App> {
    let app = App::new(
        Arc::new(KafkaCustomerLog {
            settings: settings.clone(),
        }),
        "/test".into(),
        common::authenticator(),
        domain::limits::BusinessTimeWindow::default(),
    )
    .unwrap();
    if let Some(window) = idempotency_window {
        app.streams.set_idempotency_window(window);
    }
    app.streams
        .assign(&(0..PARTITIONS).collect::<Vec<_>>())
        .await
        .unwrap();
    app
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn send(
    router: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    // an administrator unless the test says who
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        request = request.header("authorization", common::bearer("admin", &["administrator"]));
    }
    let body = match body {
        Some(v) => Body::from(serde_json::to_vec(&v).unwrap()),
        None => Body::empty(),
    };
    let response = router
        .clone()
        .oneshot(
            request
                .header("content-type", "application/json")
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Answer {
        status,
        headers,
        body,
    }
}

async fn stream_of(settings: &KafkaSettings, customer: &str) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    for p in 0..settings.partitions {
        for record in read_partition(settings, &settings.topics().customer_events(), p, 0)
            .await
            .unwrap()
        {
            let e = record.decode().unwrap();
            if e.metadata.customer_id.to_string() == customer {
                events.push(e);
            }
        }
    }
    events
}

fn register_body() -> Value {
    json!({
        "profile": {"kind": "company", "name": "杭州远景科技有限公司", "region": "华东", "industry": "software",
                    "level": "key", "credit": 4, "satisfaction": 4},
        "owner": "am-li"
    })
}

#[tokio::test]
async fn every_command_appends_its_event_in_order() {
    let s = service("every-command").await;
    let r = &s.router;
    let li = common::bearer("am-li", &["administrator"]);
    let a = send(
        r,
        "POST",
        "/v1/customers",
        &[("authorization", &li)],
        Some(register_body()),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let c = a.body["customer_id"].as_str().unwrap().to_owned();
    assert_eq!(a.headers["location"], format!("/v1/customers/{c}").as_str());
    let base = format!("/v1/customers/{c}");
    let contact = Uuid::now_v7().to_string();
    let complaint = Uuid::now_v7().to_string();
    let opp = Uuid::now_v7().to_string();
    let plan = Uuid::now_v7().to_string();
    let sr = Uuid::now_v7().to_string();
    let steps: Vec<(&str, String, Value, &str)> = vec![
        (
            "PATCH",
            base.clone(),
            json!({"changes": {"level": "strategic_partner"}}),
            "crm.customer.profile_changed.v1",
        ),
        (
            "PUT",
            format!("{base}/owner"),
            json!({"to": "am-zhao"}),
            "crm.customer.owner_reassigned.v1",
        ),
        (
            "POST",
            format!("{base}/contacts"),
            json!({"contact_id": contact, "contact": {"name": "王芳", "position": "采购经理"}}),
            "crm.contact.added.v1",
        ),
        (
            "PATCH",
            format!("{base}/contacts/{contact}"),
            json!({"changes": {"mobile": "13900000000"}}),
            "crm.contact.changed.v1",
        ),
        (
            "POST",
            format!("{base}/touchpoints"),
            json!({"occurred_at": "2026-03-01T09:30:00Z", "touchpoint": {"channel": {"kind": "phone_call", "direction": "inbound", "duration_seconds": 320, "wait_seconds": 15, "outcome": "answered"}, "summary": "询价", "contact_id": contact}}),
            "crm.touchpoint.recorded.v1",
        ),
        (
            "POST",
            format!("{base}/complaints"),
            json!({"complaint_id": complaint, "category": "product", "sub_category": "quality", "urgency": "high", "importance": "normal", "description": "外壳开裂"}),
            "crm.complaint.lodged.v1",
        ),
        (
            "POST",
            format!("{base}/complaints/{complaint}/handling"),
            json!({"handling": "换货"}),
            "crm.complaint.handled.v1",
        ),
        (
            "POST",
            format!("{base}/complaints/{complaint}/closure"),
            json!({"resolution": "客户满意"}),
            "crm.complaint.closed.v1",
        ),
        (
            "POST",
            format!("{base}/opportunities"),
            json!({"opportunity_id": opp, "source": "referral", "title": "年度采购", "value": {"amount": 5000000, "currency": "CNY"}, "probability": 20, "expected_close": "2026-12-31"}),
            "crm.opportunity.opened.v1",
        ),
        (
            "PUT",
            format!("{base}/opportunities/{opp}/owner"),
            json!({"owner": "am-zhao"}),
            "crm.opportunity.assigned.v1",
        ),
        (
            "PUT",
            format!("{base}/opportunities/{opp}/stage"),
            json!({"to": "proposal"}),
            "crm.opportunity.stage_changed.v1",
        ),
        (
            "POST",
            format!("{base}/opportunities/{opp}/plan-items"),
            json!({"plan_item_id": plan, "item": {"due_on": "2026-04-01", "action": "产品演示"}}),
            "crm.opportunity.plan_item_added.v1",
        ),
        (
            "PUT",
            format!("{base}/opportunities/{opp}/plan-items/{plan}/result"),
            json!({"result": "客户认可"}),
            "crm.opportunity.plan_result_recorded.v1",
        ),
        (
            "PUT",
            format!("{base}/opportunities/{opp}/stage"),
            json!({"to": "evaluation"}),
            "crm.opportunity.stage_changed.v1",
        ),
        (
            "PUT",
            format!("{base}/opportunities/{opp}/stage"),
            json!({"to": "negotiation"}),
            "crm.opportunity.stage_changed.v1",
        ),
        (
            "POST",
            format!("{base}/opportunities/{opp}/won"),
            json!({}),
            "crm.opportunity.won.v1",
        ),
        (
            "POST",
            format!("{base}/opportunities/{opp}/reopen"),
            json!({"reason": "合同作废"}),
            "crm.opportunity.reopened.v1",
        ),
        (
            "POST",
            format!("{base}/opportunities/{opp}/lost"),
            json!({"reason": "预算取消"}),
            "crm.opportunity.lost.v1",
        ),
        (
            "POST",
            format!("{base}/orders"),
            json!({"occurred_at": "2026-02-10T00:00:00Z", "order_number": "SO-1", "lines": [{"product": "打印机", "quantity": 2, "unit_price": 150000}], "total": {"amount": 300000, "currency": "CNY"}}),
            "crm.order.placed.v1",
        ),
        (
            "POST",
            format!("{base}/service-requests"),
            json!({"service_request_id": sr, "kind": "consultation", "summary": "安装", "request": "如何安装"}),
            "crm.service_request.created.v1",
        ),
        (
            "PUT",
            format!("{base}/service-requests/{sr}/assignee"),
            json!({"assignee": "agent-chen"}),
            "crm.service_request.assigned.v1",
        ),
        (
            "POST",
            format!("{base}/service-requests/{sr}/handling"),
            json!({"handling": "电话指导"}),
            "crm.service_request.handled.v1",
        ),
        (
            "POST",
            format!("{base}/service-requests/{sr}/feedback"),
            json!({"result": "仍不会", "satisfaction": 2}),
            "crm.service_request.feedback_given.v1",
        ),
        (
            "POST",
            format!("{base}/service-requests/{sr}/handling"),
            json!({"handling": "上门"}),
            "crm.service_request.handled.v1",
        ),
        (
            "POST",
            format!("{base}/service-requests/{sr}/feedback"),
            json!({"result": "解决", "satisfaction": 5}),
            "crm.service_request.feedback_given.v1",
        ),
        (
            "POST",
            format!("{base}/service-requests/{sr}/archive"),
            json!({}),
            "crm.service_request.archived.v1",
        ),
        (
            "POST",
            format!("{base}/churn/warnings"),
            json!({"reason": "180 天无订单"}),
            "crm.churn.warning_raised.v1",
        ),
        (
            "POST",
            format!("{base}/churn/measures"),
            json!({"measure": "赠送保养"}),
            "crm.churn.delay_measure_recorded.v1",
        ),
        (
            "POST",
            format!("{base}/churn/confirmation"),
            json!({"reason": "转向竞争对手"}),
            "crm.churn.confirmed.v1",
        ),
        (
            "POST",
            format!("{base}/churn/reactivation"),
            json!({"reason": "新订单"}),
            "crm.churn.customer_reactivated.v1",
        ),
        (
            "DELETE",
            format!("{base}/contacts/{contact}"),
            Value::Null,
            "crm.contact.removed.v1",
        ),
    ];
    let zhao = common::bearer("am-zhao", &["administrator"]);
    let mut expected_types = vec!["crm.customer.registered.v1".to_owned()];
    for (method, uri, body, event_type) in steps {
        let body = if body.is_null() { None } else { Some(body) };
        // an X-Actor header is no longer heard: the token's subject is the actor
        let a = send(
            r,
            method,
            &uri,
            &[("authorization", &zhao), ("x-actor", "someone-else")],
            body,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{method} {uri}: {}", a.body);
        assert_eq!(a.body["events"][0]["type"], event_type, "{method} {uri}");
        assert_eq!(a.body["sequence"], expected_types.len() as u64 + 1);
        assert_eq!(
            a.headers["etag"],
            format!("\"{}\"", expected_types.len() + 1).as_str()
        );
        assert!(a.headers.contains_key("crm-position"));
        expected_types.push(event_type.to_owned());
    }
    let stream = stream_of(&s.settings, &c).await;
    let types: Vec<&str> = stream.iter().map(|e| e.event.event_type()).collect();
    assert_eq!(types, expected_types);
    let sequences: Vec<u64> = stream.iter().map(|e| e.metadata.sequence).collect();
    assert_eq!(
        sequences,
        (1..=expected_types.len() as u64).collect::<Vec<_>>()
    );
    // the envelope carries who, which command and business time
    assert_eq!(stream[0].metadata.actor, "am-li");
    assert!(stream[1..].iter().all(|e| e.metadata.actor == "am-zhao"));
    assert_eq!(
        stream[1].metadata.command.as_deref(),
        Some("change_profile")
    );
    let touchpoint = stream
        .iter()
        .find(|e| e.event.event_type() == "crm.touchpoint.recorded.v1")
        .unwrap();
    assert_eq!(
        touchpoint.metadata.occurred_at.to_rfc3339(),
        "2026-03-01T09:30:00+00:00"
    );
    assert!(touchpoint.metadata.recorded_at > touchpoint.metadata.occurred_at);
}

#[tokio::test]
async fn fifty_conflicting_commands_one_wins() {
    let s = service("conflict").await;
    let a = send(
        &s.router,
        "POST",
        "/v1/customers",
        &[],
        Some(register_body()),
    )
    .await;
    let c = a.body["customer_id"].as_str().unwrap().to_owned();
    let uri = format!("/v1/customers/{c}/owner");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let router = s.router.clone();
        let uri = uri.clone();
        tasks.push(tokio::spawn(async move {
            send(
                &router,
                "PUT",
                &uri,
                &[("if-match", "\"1\"")],
                Some(json!({"to": format!("am-{i}")})),
            )
            .await
        }));
    }
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for t in tasks {
        let a = t.await.unwrap();
        if a.status == StatusCode::CONFLICT {
            assert_eq!(a.headers["content-type"], "application/problem+json");
            assert_eq!(a.body["type"], "/problems/sequence-mismatch");
            assert_eq!(a.body["current_sequence"], 2);
        }
        *statuses.entry(a.status.as_u16()).or_default() += 1;
    }
    assert_eq!(statuses, HashMap::from([(200, 1), (409, 49)]));
    let stream = stream_of(&s.settings, &c).await;
    assert_eq!(stream.len(), 2);
    assert_eq!(
        stream
            .iter()
            .map(|e| e.metadata.sequence)
            .collect::<Vec<_>>(),
        [1, 2]
    );
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_appends_nothing() {
    let s = service("idempotency").await;
    let a = send(
        &s.router,
        "POST",
        "/v1/customers",
        &[],
        Some(register_body()),
    )
    .await;
    let c = a.body["customer_id"].as_str().unwrap().to_owned();
    let uri = format!("/v1/customers/{c}/touchpoints");
    let body = json!({"touchpoint": {"channel": {"kind": "wechat", "direction": "inbound"}, "summary": "你好"}});
    let first = send(
        &s.router,
        "POST",
        &uri,
        &[("idempotency-key", "wx-msg-1")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["replayed"], false);
    let retry = send(
        &s.router,
        "POST",
        &uri,
        &[("idempotency-key", "wx-msg-1")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.body["replayed"], true);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(
        retry.body["events"], first.body["events"],
        "the first answer"
    );
    assert_eq!(stream_of(&s.settings, &c).await.len(), 2);

    // a new owner of the partition rebuilds the answers from the log
    let again = owner_of_every_partition(&s.settings, None).await;
    let router = command_service::http::router(again, 1024 * 1024);
    let retry = send(
        &router,
        "POST",
        &uri,
        &[("idempotency-key", "wx-msg-1")],
        Some(body),
    )
    .await;
    assert_eq!(retry.body["replayed"], true, "{}", retry.body);
    assert_eq!(retry.body["events"], first.body["events"]);
    assert_eq!(stream_of(&s.settings, &c).await.len(), 2);
    // the key is bound to its request (kept in the log, so also after the fail-over): with
    // another body, or another command, it is refused naming the key, and nothing is appended
    // (it used to answer 200 with the touchpoint's event and place no order)
    let other_body = json!({"touchpoint": {"channel": {"kind": "wechat", "direction": "inbound"}, "summary": "另一条"}});
    let order = json!({"order_number": "SO-K", "total": {"amount": 5, "currency": "CNY"}});
    for (uri, body) in [
        (uri.clone(), other_body),
        (format!("/v1/customers/{c}/orders"), order.clone()),
    ] {
        let reused = send(
            &router,
            "POST",
            &uri,
            &[("idempotency-key", "wx-msg-1")],
            Some(body),
        )
        .await;
        assert_eq!(
            reused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reused.body
        );
        assert_eq!(reused.body["field"], "Idempotency-Key");
        assert_eq!(reused.body["type"], "/problems/idempotency-key-reused");
    }
    assert_eq!(stream_of(&s.settings, &c).await.len(), 2);
    // the same body with its keys in another order is the same request
    let reordered: Value = serde_json::from_str(
        r#"{"touchpoint": {"summary": "你好", "channel": {"direction": "inbound", "kind": "wechat"}}}"#,
    )
    .unwrap();
    let retry = send(
        &router,
        "POST",
        &format!("/v1/customers/{c}/touchpoints"),
        &[("idempotency-key", "wx-msg-1")],
        Some(reordered),
    )
    .await;
    assert_eq!(retry.body["replayed"], true, "{}", retry.body);
    // in one batch: the second use of a key with another touchpoint is refused
    let batch = json!([
        {"customer_id": c, "idempotency_key": "b-1", "touchpoint": {"channel": {"kind": "web_form"}, "summary": "one"}},
        {"customer_id": c, "idempotency_key": "b-1", "touchpoint": {"channel": {"kind": "web_form"}, "summary": "two"}},
        {"customer_id": c, "idempotency_key": "b-1", "touchpoint": {"channel": {"kind": "web_form"}, "summary": "one"}}
    ]);
    let answer = send(&router, "POST", "/v1/touchpoints:batch", &[], Some(batch)).await;
    let statuses: Vec<i64> = answer.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, vec![201, 422, 200], "{}", answer.body);
    assert_eq!(stream_of(&s.settings, &c).await.len(), 3);
    // and the old owner, fenced, can no longer append
    let old = send(&s.router, "POST", &uri, &[], Some(json!({"touchpoint": {"channel": {"kind": "wechat", "direction": "outbound"}, "summary": "x"}}))).await;
    assert_eq!(old.status, StatusCode::SERVICE_UNAVAILABLE, "{}", old.body);
    assert_eq!(old.body["type"], "/problems/not-owner");
    assert_eq!(stream_of(&s.settings, &c).await.len(), 3);
    let _ = &s.app;
}

#[tokio::test]
async fn bad_input_gets_problem_details_naming_the_field() {
    let s = service("bad-input").await;
    let r = &s.router;
    let a = send(r, "POST", "/v1/customers", &[], Some(register_body())).await;
    let c = a.body["customer_id"].as_str().unwrap().to_owned();
    let unknown = Uuid::now_v7();
    // (method, uri, body (None: malformed JSON), headers, status, field)
    type Case<'a> = (
        &'a str,
        String,
        Option<Value>,
        &'a [(&'a str, &'a str)],
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        // malformed JSON
        (
            "POST",
            format!("/v1/customers/{c}/touchpoints"),
            None,
            &[],
            422,
            "touchpoint",
        ),
        // a wrong type deep inside
        (
            "POST",
            format!("/v1/customers/{c}/touchpoints"),
            Some(
                json!({"touchpoint": {"channel": {"kind": "phone_call", "direction": "sideways", "duration_seconds": 1, "wait_seconds": 0, "outcome": "answered"}, "summary": "x"}}),
            ),
            &[],
            422,
            "touchpoint.channel",
        ),
        // a rule of the domain
        (
            "POST",
            format!("/v1/customers/{c}/opportunities"),
            Some(
                json!({"source": "web", "title": "t", "value": {"amount": 1, "currency": "CNY"}, "probability": 140, "expected_close": "2026-12-31"}),
            ),
            &[],
            422,
            "probability",
        ),
        (
            "POST",
            format!("/v1/customers/{c}/orders"),
            Some(json!({"order_number": "SO-9", "total": {"amount": -5, "currency": "CNY"}})),
            &[],
            422,
            "total.amount",
        ),
        // an actor in the body is not the client's to set
        (
            "PUT",
            format!("/v1/customers/{c}/owner"),
            Some(json!({"to": "am-x", "actor": "ceo"})),
            &[],
            422,
            "actor",
        ),
        // an unknown customer
        (
            "PUT",
            format!("/v1/customers/{unknown}/owner"),
            Some(json!({"to": "am-x"})),
            &[],
            404,
            "",
        ),
        // an unknown entity
        (
            "PUT",
            format!("/v1/customers/{c}/opportunities/{unknown}/stage"),
            Some(json!({"to": "proposal"})),
            &[],
            404,
            "opportunity_id",
        ),
        // an invalid transition
        (
            "POST",
            format!("/v1/customers/{c}/churn/confirmation"),
            Some(json!({"reason": "x"})),
            &[],
            409,
            "",
        ),
        // U+0000 anywhere: PostgreSQL cannot store it, so the command side refuses it
        // (it used to be acknowledged, then dead-lettered by the projection)
        (
            "POST",
            "/v1/customers".to_owned(),
            Some(
                json!({"profile": {"kind": "company", "name": "a\u{0}b", "region": "华东", "industry": "software", "level": "key", "credit": 4, "satisfaction": 4}, "owner": "am-li"}),
            ),
            &[],
            422,
            "profile.name",
        ),
        (
            "POST",
            format!("/v1/customers/{c}/touchpoints"),
            Some(
                json!({"touchpoint": {"channel": {"kind": "web_form"}, "summary": "hello\u{0}world"}}),
            ),
            &[],
            422,
            "touchpoint.summary",
        ),
        (
            "PATCH",
            format!("/v1/customers/{c}"),
            Some(json!({"changes": {"registration": {"phone": "1\u{0}2"}}})),
            &[],
            422,
            "changes.registration.phone",
        ),
        // lengths per field
        (
            "PATCH",
            format!("/v1/customers/{c}"),
            Some(json!({"changes": {"name": "名".repeat(201)}})),
            &[],
            422,
            "changes.name",
        ),
        (
            "POST",
            format!("/v1/customers/{c}/touchpoints"),
            Some(
                json!({"touchpoint": {"channel": {"kind": "web_form"}, "summary": "x".repeat(10_001)}}),
            ),
            &[],
            422,
            "touchpoint.summary",
        ),
        // business time within its window: not year 9999, not year 0
        (
            "POST",
            format!("/v1/customers/{c}/orders"),
            Some(
                json!({"order_number": "SO-F", "total": {"amount": 5, "currency": "CNY"}, "occurred_at": "9999-12-31T00:00:00Z"}),
            ),
            &[],
            422,
            "occurred_at",
        ),
        (
            "POST",
            format!("/v1/customers/{c}/orders"),
            Some(
                json!({"order_number": "SO-Z", "total": {"amount": 5, "currency": "CNY"}, "occurred_at": "0000-01-01T00:00:00Z"}),
            ),
            &[],
            422,
            "occurred_at",
        ),
        // malformed path and header
        (
            "PUT",
            "/v1/customers/not-a-uuid/owner".to_owned(),
            Some(json!({"to": "x"})),
            &[],
            400,
            "customer_id",
        ),
        (
            "PUT",
            format!("/v1/customers/{c}/owner"),
            Some(json!({"to": "x"})),
            &[("if-match", "abc")],
            400,
            "If-Match",
        ),
    ];
    for (method, uri, body, headers, status, field) in cases {
        let a = match (&body, method) {
            (None, _) => {
                let request = Request::builder()
                    .method(method)
                    .uri(&uri)
                    .header("content-type", "application/json")
                    .header("authorization", common::bearer("admin", &["administrator"]))
                    .body(Body::from("{\"touchpoint\": "))
                    .unwrap();
                let response = r.clone().oneshot(request).await.unwrap();
                let status = response.status();
                let headers = response.headers().clone();
                let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap();
                Answer {
                    status,
                    headers,
                    body: serde_json::from_slice(&bytes).unwrap(),
                }
            }
            _ => send(r, method, &uri, headers, body.clone()).await,
        };
        let expected_status = if body.is_none() { 400 } else { status };
        assert_eq!(
            a.status.as_u16(),
            expected_status,
            "{method} {uri} {body:?}: {}",
            a.body
        );
        assert_eq!(a.headers["content-type"], "application/problem+json");
        assert_eq!(a.body["status"], expected_status);
        if body.is_some() && !field.is_empty() {
            assert_eq!(a.body["field"], field, "{method} {uri}: {}", a.body);
        }
    }
    // an oversized body is refused, and the service keeps serving
    let big = "x".repeat(2 * 1024 * 1024);
    let a = send(
        r,
        "POST",
        &format!("/v1/customers/{c}/touchpoints"),
        &[],
        Some(json!({"touchpoint": {"channel": {"kind": "web_form"}, "summary": big}})),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.headers["content-type"], "application/problem+json");
    let a = send(
        r,
        "PUT",
        &format!("/v1/customers/{c}/owner"),
        &[],
        Some(json!({"to": "am-still-serving"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        stream_of(&s.settings, &c).await.len(),
        2,
        "nothing but the two good commands"
    );
}

#[tokio::test]
async fn a_batch_answers_per_item() {
    let s = service("batch").await;
    let mut customers = Vec::new();
    for _ in 0..5 {
        let a = send(
            &s.router,
            "POST",
            "/v1/customers",
            &[],
            Some(register_body()),
        )
        .await;
        customers.push(a.body["customer_id"].as_str().unwrap().to_owned());
    }
    let mut items: Vec<Value> = Vec::new();
    for i in 0..200 {
        items.push(json!({
            "customer_id": customers[i % 5],
            "occurred_at": format!("2026-01-{:02}T08:00:00Z", 1 + i % 28),
            "idempotency_key": format!("batch-{i}"),
            "touchpoint": {"channel": {"kind": "email", "direction": "inbound", "subject": format!("邮件 {i}")}, "summary": "s"}
        }));
    }
    items.push(json!({"customer_id": Uuid::now_v7(), "touchpoint": {"channel": {"kind": "web_form"}, "summary": "unknown customer"}}));
    items.push(json!({"customer_id": customers[0], "touchpoint": {"channel": {"kind": "pigeon"}, "summary": "bad channel"}}));
    let a = send(
        &s.router,
        "POST",
        "/v1/touchpoints:batch",
        &[],
        Some(Value::Array(items.clone())),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["accepted"], 200);
    assert_eq!(a.body["rejected"], 2);
    let results = a.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 202);
    assert_eq!(results[200]["status"], 404);
    assert_eq!(results[201]["status"], 422);
    assert_eq!(results[201]["problem"]["field"], "touchpoint.channel.kind");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
    }
    // the same key twice in one batch (a retry racing the first try): appended once
    let twice = json!({"customer_id": customers[1], "idempotency_key": "dup-1",
        "touchpoint": {"channel": {"kind": "web_form"}, "summary": "twice"}});
    let a = send(
        &s.router,
        "POST",
        "/v1/touchpoints:batch",
        &[],
        Some(json!([twice.clone(), twice])),
    )
    .await;
    assert_eq!(a.body["accepted"], 2, "{}", a.body);
    assert_eq!(a.body["results"][0]["outcome"]["replayed"], false);
    assert_eq!(a.body["results"][1]["outcome"]["replayed"], true);
    assert_eq!(
        a.body["results"][0]["outcome"]["events"],
        a.body["results"][1]["outcome"]["events"]
    );
    // NDJSON, retried: nothing new
    let ndjson: String = items[..200].iter().map(|v| format!("{v}\n")).collect();
    let request = Request::builder()
        .method("POST")
        .uri("/v1/touchpoints:batch")
        .header("content-type", "application/x-ndjson")
        .header("x-api-key", common::ADAPTER_KEY)
        .body(Body::from(ndjson))
        .unwrap();
    let response = s.router.clone().oneshot(request).await.unwrap();
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["accepted"], 200);
    assert!(body["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["outcome"]["replayed"] == true));
    for (n, c) in customers.iter().enumerate() {
        let stream = stream_of(&s.settings, c).await;
        let expected: u64 = if n == 1 { 42 } else { 41 };
        assert_eq!(
            stream.len() as u64,
            expected,
            "registration + 40 touchpoints (+1 sent twice)"
        );
        assert_eq!(
            stream
                .iter()
                .map(|e| e.metadata.sequence)
                .collect::<Vec<_>>(),
            (1..=expected).collect::<Vec<_>>()
        );
        // the state in memory is the log's: streams changed once by a batch and streams
        // changed many times by one
        let id = CustomerId(Uuid::parse_str(c).unwrap());
        let state = s.app.streams.customer_state(&id).await.unwrap();
        assert_eq!(state.version, expected, "customer {n}");
    }
    // NDJSON with blank lines: `index` counts items, `line` is the line the error names
    let ndjson = format!("\n{}\n\n{{\"customer_id\": \n\n{}\n", items[0], items[1]);
    let request = Request::builder()
        .method("POST")
        .uri("/v1/touchpoints:batch")
        .header("content-type", "application/x-ndjson")
        .header("x-api-key", common::ADAPTER_KEY)
        .body(Body::from(ndjson))
        .unwrap();
    let response = s.router.clone().oneshot(request).await.unwrap();
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap(),
    )
    .unwrap();
    let results = body["results"].as_array().unwrap();
    let at: Vec<(i64, i64)> = results
        .iter()
        .map(|r| (r["index"].as_i64().unwrap(), r["line"].as_i64().unwrap()))
        .collect();
    assert_eq!(at, vec![(0, 2), (1, 4), (2, 6)], "{body}");
    assert_eq!(results[1]["status"], 400);
    let detail = results[1]["problem"]["detail"].as_str().unwrap();
    assert!(detail.starts_with("item 1 (line 4)"), "{detail}");
}

#[tokio::test]
async fn operational_endpoints() {
    let s = service("ops").await;
    assert_eq!(
        send(&s.router, "GET", "/healthz", &[], None).await.status,
        StatusCode::OK
    );
    let ready = send(&s.router, "GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["partitions"], json!([0, 1, 2]));
    send(
        &s.router,
        "POST",
        "/v1/customers",
        &[],
        Some(register_body()),
    )
    .await;
    let request = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let response = s.router.clone().oneshot(request).await.unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("crm_commands_total{command=\"register_customer\",outcome=\"appended\"} 1"),
        "{text}"
    );
    assert!(text.contains("crm_command_duration_seconds_bucket"));
    assert!(text.contains("crm_owned_partitions 3"));
    let openapi = send(&s.router, "GET", "/openapi.json", &[], None).await;
    assert_eq!(openapi.body["openapi"], "3.1.0");
    let paths = openapi.body["paths"].as_object().unwrap();
    let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert!(operations >= 28 + 1 + 3, "{operations}");
    assert!(
        paths["/v1/customers/{customer_id}/opportunities/{opportunity_id}/stage"]["put"]
            ["requestBody"]
            .is_object()
    );
    // no dangling references
    let text = openapi.body.to_string();
    for r in text.split("\"$ref\":\"").skip(1) {
        let name = r
            .split('"')
            .next()
            .unwrap()
            .trim_start_matches("#/components/schemas/");
        assert!(
            openapi.body["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
    s.app.streams.revoke(&[0, 1, 2]).await;
    assert_eq!(
        send(&s.router, "GET", "/readyz", &[], None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// Answers are kept for the idempotency window: within it a retry gets the first answer;
/// after it the key is forgotten (so memory stays bounded by one window of identified
/// commands), both by the owner as it goes and by a new owner rebuilding from the log.
#[tokio::test]
async fn an_idempotency_key_is_kept_for_its_window_then_forgotten() {
    let s = service("idempotency-window").await;
    s.app
        .streams
        .set_idempotency_window(std::time::Duration::from_secs(1));
    let a = send(
        &s.router,
        "POST",
        "/v1/customers",
        &[],
        Some(register_body()),
    )
    .await;
    let c = a.body["customer_id"].as_str().unwrap().to_owned();
    let uri = format!("/v1/customers/{c}/touchpoints");
    let body = json!({"touchpoint": {"channel": {"kind": "wechat", "direction": "inbound"}, "summary": "你好"}});
    let key = [("idempotency-key", "window-1")];
    let first = send(&s.router, "POST", &uri, &key, Some(body.clone())).await;
    assert_eq!(first.body["replayed"], false);
    let within = send(&s.router, "POST", &uri, &key, Some(body.clone())).await;
    assert_eq!(within.body["replayed"], true, "a retry within the window");

    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    // any append to the partition forgets what is past the window
    let other = send(&s.router, "POST", &uri, &[], Some(body.clone())).await;
    assert_eq!(other.status, StatusCode::OK);
    let after = send(&s.router, "POST", &uri, &key, Some(body.clone())).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.body["replayed"], false, "forgotten after the window");
    assert_ne!(after.body["events"], first.body["events"]);
    assert_eq!(stream_of(&s.settings, &c).await.len(), 4);

    // a new owner rebuilding from the log keeps only the answers within the window
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let again =
        owner_of_every_partition(&s.settings, Some(std::time::Duration::from_secs(1))).await;
    let router = command_service::http::router(again, 1024 * 1024);
    let rebuilt = send(&router, "POST", &uri, &key, Some(body)).await;
    assert_eq!(rebuilt.body["replayed"], false, "{}", rebuilt.body);
    assert_eq!(stream_of(&s.settings, &c).await.len(), 5);
}
