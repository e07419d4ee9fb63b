//! Faults on the Kafka path, checked against what command-service acknowledged: commands go
//! through command-service's HTTP routes to a Kafka-protocol broker while projection-service
//! (its binary) projects them into PostgreSQL. In one test the projection's PostgreSQL server
//! (a server of the test's own) crashes in the middle of the load (every backend killed, no
//! checkpoint) and comes back, and later projection-service is SIGKILLed and started again; in
//! the other the broker is SIGKILLed and restarted, with command-service in its consumer group
//! as its binary runs it. In the end every acknowledged event is in the read models exactly
//! once: the audit trail holds exactly the acknowledged event ids, and the counters a double
//! apply would inflate (touchpoints per customer, order count and total) equal a reference
//! summed from the acknowledged commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use common::*;
use crm_tests::postgres::PrivatePostgres;
use crm_tests::{unique_prefix, KafkaBroker};
use infra::kafka::{provision_topics, KafkaSettings, PartitionOwnership};
use infra::log::KafkaCustomerLog;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use tower::ServiceExt;

const PARTITIONS: i32 = 3;
const CUSTOMERS: usize = 24;
const COMMANDS: usize = 600;

/// What command-service acknowledged, per customer.
#[derive(Debug, Default)]
struct Acknowledged {
    event_ids: BTreeSet<String>,
    touchpoints: BTreeMap<String, i64>,
    orders: BTreeMap<String, (i64, i64)>,
}

/// Registers the customers, then sends touchpoints and orders round-robin, a little apart so
/// that the load spans the faults. Every command must be acknowledged in the end: a client
/// retries a 503 with the same idempotency key, for up to a minute. `progress` counts the
/// commands acknowledged so far.
async fn drive(router: axum::Router, progress: Arc<AtomicUsize>) -> Acknowledged {
    let customers: Vec<String> = (0..CUSTOMERS)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let mut ack = Acknowledged::default();
    for n in 0..CUSTOMERS + COMMANDS {
        let c = &customers[n % CUSTOMERS];
        let (path, body) = if n < CUSTOMERS {
            (
                "/v1/customers".to_owned(),
                json!({"customer_id": c, "owner": "am-li",
                       "profile": {"kind": "company", "name": format!("客户 {n}"), "region": "华东",
                                   "industry": "retail", "level": "ordinary", "credit": 3, "satisfaction": 3}}),
            )
        } else if n % 3 == 0 {
            let amount = 1000 + n as i64;
            (
                format!("/v1/customers/{c}/orders"),
                json!({"order_number": format!("SO-{n}"),
                       "lines": [{"product": "纸", "quantity": 1, "unit_price": amount}],
                       "total": {"amount": amount, "currency": "CNY"}}),
            )
        } else {
            (
                format!("/v1/customers/{c}/touchpoints"),
                json!({"touchpoint": {"channel": {"kind": "web_form"}, "summary": format!("visit {n}")}}),
            )
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let answer = loop {
            let request = Request::builder()
                .method("POST")
                .uri(&path)
                .header("content-type", "application/json")
                .header("idempotency-key", format!("fault-{n}"))
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status.is_success() {
                break answer;
            }
            assert!(
                status.as_u16() == 503 && Instant::now() < deadline,
                "{status} for {path}: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        progress.fetch_add(1, Ordering::Relaxed);
        for e in answer["events"].as_array().unwrap() {
            ack.event_ids.insert(e["id"].as_str().unwrap().to_owned());
        }
        if path.ends_with("/orders") {
            let o = ack.orders.entry(c.clone()).or_default();
            o.0 += 1;
            o.1 += body["total"]["amount"].as_i64().unwrap();
        } else if path.ends_with("/touchpoints") {
            *ack.touchpoints.entry(c.clone()).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    ack
}

/// Records applied by the live version so far (the sum of its checkpoints + 1); 0 while the
/// database cannot be reached.
async fn applied(url: &str) -> i64 {
    let Ok(mut c) = sqlx::PgConnection::connect(url).await else {
        return 0;
    };
    sqlx::query_as::<_, (Option<i64>,)>(
        r#"SELECT sum("offset" + 1)::bigint FROM projection.checkpoints
            WHERE projection = 'rm' AND version = 1"#,
    )
    .fetch_one(&mut c)
    .await
    .ok()
    .and_then(|(n,)| n)
    .unwrap_or(0)
}

async fn rows<T>(pool: &PgPool, sql: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(sql).fetch_all(pool).await.unwrap()
}

/// Waits (up to two minutes) until the audit trail holds every acknowledged event, then
/// checks that it holds exactly those, and that the counters a double apply would inflate
/// equal the reference summed from the acknowledged commands.
async fn assert_read_models_hold(url: &str, ack: &Acknowledged, log: &std::path::Path) {
    let total = ack.event_ids.len();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let found: BTreeSet<String> = loop {
        let ids: Vec<(uuid::Uuid,)> = sqlx::query_as("SELECT event_id FROM rm_v1.audit_trail")
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
        let ids: BTreeSet<String> = ids.into_iter().map(|(id,)| id.to_string()).collect();
        if ids.len() >= total || Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing = ack.event_ids.difference(&found).count();
    let unknown = found.difference(&ack.event_ids).count();
    eprintln!(
        "acknowledged {total}, found {}, missing {missing}, never acknowledged {unknown}",
        found.len()
    );
    assert_eq!(
        (missing, unknown),
        (0, 0),
        "the audit trail holds exactly the acknowledged events (service log: {})",
        log.display()
    );
    let touchpoints: BTreeMap<String, i64> = rows::<(uuid::Uuid, i64)>(
        &pool,
        "SELECT customer_id, sum(touchpoints)::bigint FROM rm_v1.touchpoint_stats GROUP BY customer_id",
    )
    .await
    .into_iter()
    .map(|(c, n)| (c.to_string(), n))
    .collect();
    assert_eq!(touchpoints, ack.touchpoints, "touchpoints per customer");
    let orders: BTreeMap<String, (i64, i64)> = rows::<(uuid::Uuid, i64, i64)>(
        &pool,
        "SELECT customer_id, order_count, order_total FROM rm_v1.customers WHERE order_count > 0",
    )
    .await
    .into_iter()
    .map(|(c, n, t)| (c.to_string(), (n, t)))
    .collect();
    assert_eq!(orders, ack.orders, "order count and total per customer");
    let timeline: Vec<(i64,)> = rows(&pool, "SELECT count(*) FROM rm_v1.timeline").await;
    assert_eq!(timeline[0].0, total as i64, "one timeline entry per event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_and_a_sigkill_mid_load_lose_and_double_nothing() {
    let broker = KafkaBroker::start();
    let settings = KafkaSettings {
        partitions: PARTITIONS,
        operation_timeout_ms: 15_000,
        ..KafkaSettings::new(broker.brokers(), unique_prefix("faults"))
    };
    provision_topics(&settings).await.unwrap();
    let pg = PrivatePostgres::start();
    {
        let mut admin = sqlx::PgConnection::connect(&pg.url("postgres"))
            .await
            .unwrap();
        sqlx::query("CREATE DATABASE crm")
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let url = pg.url("crm");

    let app = command_app(
        "/fault-test",
        Arc::new(KafkaCustomerLog {
            settings: settings.clone(),
        }),
    );
    app.streams
        .assign(&(0..PARTITIONS).collect::<Vec<_>>())
        .await
        .unwrap();
    let router = command_service::http::router(app, 16 * 1024 * 1024);

    let log = std::env::temp_dir().join(format!(
        "projection-faults-{}.log",
        settings.topic_prefix.trim_end_matches('.')
    ));
    eprintln!("service log: {}", log.display());
    let run_args = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--sweep-interval",
        "1h",
        "--rfm-check-interval",
        "1h",
    ];
    let mut service = ProjectionProcess::spawn(&settings, &url, &log, &run_args);
    let load = tokio::spawn(drive(router, Arc::new(AtomicUsize::new(0))));

    // 1. PostgreSQL crashes once the service is applying, and comes back three seconds later
    eventually("the service applying", Duration::from_secs(60), || async {
        applied(&url).await > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.crash();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.restart();
    let at_crash = applied(&url).await;
    eprintln!(
        "database down {:?}; {at_crash} records applied when it came back",
        down.elapsed()
    );
    eventually(
        "the service applying after the database came back",
        Duration::from_secs(60),
        || async { applied(&url).await > at_crash },
    )
    .await;
    assert!(
        service.is_running(),
        "projection-service exited when the database went away (see {})",
        log.display()
    );

    // 2. projection-service is SIGKILLed in the middle of the load and started again
    tokio::time::sleep(Duration::from_millis(400)).await;
    service.kill();
    let at_kill = applied(&url).await;
    service = ProjectionProcess::spawn(&settings, &url, &log, &run_args);
    let ack = load.await.unwrap();
    let total = ack.event_ids.len();
    eprintln!("{total} events acknowledged; {at_kill} records applied at the SIGKILL");
    assert!(
        (at_crash as usize) < total && (at_kill as usize) < total,
        "the faults came after the load: crash at {at_crash}, kill at {at_kill} of {total}"
    );

    // 3. everything acknowledged is in the read models, once
    assert_read_models_hold(&url, &ack, &log).await;
    assert!(service.is_running());
    drop(service);
    let _ = std::fs::remove_file(&log);
}

/// The broker is SIGKILLed in the middle of a load (its persistent engine kept) and restarted
/// two seconds later, with command-service in a consumer group as its binary runs it (so that
/// a partition whose writer died is taken back) and projection-service following the log:
/// clients retry through the outage with their idempotency keys, every command is acknowledged
/// in the end, and the read models hold each acknowledged event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_load_loses_and_doubles_nothing_in_the_read_models() {
    let dir = std::env::temp_dir().join(unique_prefix("faults-broker"));
    let mut broker = KafkaBroker::start_persistent(&dir);
    let settings = KafkaSettings {
        partitions: PARTITIONS,
        operation_timeout_ms: 15_000,
        session_timeout_ms: 6_000,
        ..KafkaSettings::new(broker.brokers(), unique_prefix("faults-broker"))
    };
    provision_topics(&settings).await.unwrap();
    let db = TestDb::new().await;

    let app = command_app(
        "/fault-test",
        Arc::new(KafkaCustomerLog {
            settings: settings.clone(),
        }),
    );
    let (ownership, changes) = PartitionOwnership::start(&settings).unwrap();
    let inbound =
        command_service::inbound::InboundReaders::new(app.clone(), settings.clone()).unwrap();
    tokio::spawn(command_service::follow_ownership(
        app.clone(),
        inbound,
        changes,
        ownership.view(),
    ));
    {
        let app = app.clone();
        eventually(
            "command-service owning every partition",
            Duration::from_secs(60),
            || {
                let app = app.clone();
                async move { app.streams.owned_partitions().await.len() == PARTITIONS as usize }
            },
        )
        .await;
    }
    let router = command_service::http::router(app.clone(), 16 * 1024 * 1024);

    let log = std::env::temp_dir().join(format!(
        "projection-faults-{}.log",
        settings.topic_prefix.trim_end_matches('.')
    ));
    eprintln!("service log: {}", log.display());
    let run_args = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--sweep-interval",
        "1h",
        "--rfm-check-interval",
        "1h",
    ];
    let mut service = ProjectionProcess::spawn(&settings, &db.url(), &log, &run_args);
    let progress = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(drive(router, progress.clone()));

    {
        let progress = progress.clone();
        eventually(
            "a third of the load acknowledged",
            Duration::from_secs(120),
            || {
                let progress = progress.clone();
                async move { progress.load(Ordering::Relaxed) >= (CUSTOMERS + COMMANDS) / 3 }
            },
        )
        .await;
    }
    broker.kill();
    let at_kill = progress.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart();
    eprintln!("broker killed after {at_kill} commands acknowledged, restarted 2 s later");
    let ack = load.await.unwrap();
    eprintln!(
        "{} commands, {} events acknowledged",
        CUSTOMERS + COMMANDS,
        ack.event_ids.len()
    );
    assert_read_models_hold(&db.url(), &ack, &log).await;
    assert!(
        service.is_running(),
        "projection-service survived the broker restart"
    );
    drop(service);
    ownership.shutdown().await;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}
