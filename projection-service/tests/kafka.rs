//! The projection-service against a real Kafka-protocol broker (Tansu from the test bed, or
//! `CRM_TEST_KAFKA_BROKERS`) and a real PostgreSQL: events appended to the topic are
//! projected; poison records go to the dead-letter topic and the partition goes on; the
//! service binary killed with SIGKILL at random moments under load ends equal to a rebuild
//! from offset zero; a replay while events keep arriving ends equal to the live version and
//! switches over; the alert sweep under a controlled clock publishes alerts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use common::*;
use crm_tests::{unique_prefix, KafkaBroker};
use domain::policy::rfm::RfmWindow;
use domain::*;
use infra::kafka::{
    partition_for, provision_topics, read_partition, KafkaSettings, StoredRecord, DLQ_REASON,
    DLQ_SOURCE_OFFSET,
};
use projection_service::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PARTITIONS: i32 = 4;

fn settings(broker: &KafkaBroker, test: &str) -> KafkaSettings {
    KafkaSettings {
        partitions: PARTITIONS,
        operation_timeout_ms: 15_000,
        ..KafkaSettings::new(broker.brokers(), unique_prefix(test))
    }
}

fn fast_batches() -> BatchOptions {
    BatchOptions {
        max_records: 100,
        max_wait: Duration::from_millis(50),
        ..BatchOptions::default()
    }
}

fn run_options(version: Option<i32>) -> RunOptions {
    let mut options = RunOptions::new("rm");
    options.version = version;
    options.batch = fast_batches();
    options.version_check_interval = Duration::from_millis(300);
    options.jobs.sweep_interval = Duration::from_secs(3600);
    options.jobs.rfm_interval = Duration::from_secs(3600);
    options.jobs.rfm_check_interval = Duration::from_secs(3600);
    options
}

/// A plain (non-transactional) producer that puts each record on its key's partition, as
/// the command-service's writers do.
struct Producer {
    producer: FutureProducer,
    topic: String,
}

impl Producer {
    fn new(s: &KafkaSettings) -> Self {
        Producer {
            producer: s.producer_config().create().unwrap(),
            topic: s.topics().customer_events(),
        }
    }

    async fn raw(
        &self,
        key: &[u8],
        headers: &[(&str, Vec<u8>)],
        value: Option<&[u8]>,
    ) -> (i32, i64) {
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            })
        });
        let mut record = FutureRecord::to(&self.topic)
            .partition(partition_for(key, PARTITIONS))
            .key(key)
            .headers(headers);
        if let Some(value) = value {
            record = record.payload(value);
        }
        let delivery = self
            .producer
            .send(record, Duration::from_secs(15))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        (delivery.partition, delivery.offset)
    }

    /// Appends the events in order (all enqueued, then acknowledged); their positions.
    async fn events(&self, events: &[RecordedEvent]) -> Vec<(i32, i64)> {
        let mut deliveries = Vec::new();
        for event in events {
            let record = event.to_kafka().unwrap();
            let headers = record
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |h, (k, v)| {
                    h.insert(Header {
                        key: k,
                        value: Some(v.as_slice()),
                    })
                });
            let mut future_record = FutureRecord::to(&self.topic)
                .partition(partition_for(&record.key, PARTITIONS))
                .key(record.key.as_slice())
                .payload(record.value.as_slice())
                .headers(headers);
            loop {
                match self.producer.send_result(future_record) {
                    Ok(d) => {
                        deliveries.push(d);
                        break;
                    }
                    Err((_, r)) => {
                        future_record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
        let mut positions = Vec::new();
        for d in deliveries {
            let d = d.await.unwrap().map_err(|(e, _)| e).unwrap();
            positions.push((d.partition, d.offset));
        }
        positions
    }
}

/// `count` customers from `first` on, 12 events each, interleaved across customers:
/// registration, four touchpoints, two orders, an opportunity from open to won.
fn load(world: &mut World, first: u128, count: u128) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    for step in 0u128..12 {
        for k in first..first + count {
            let opp = k * 100 + 50;
            let cmd = match step {
                0 => register(
                    CustomerLevel::Ordinary,
                    &format!("C{k}"),
                    "华东",
                    3,
                    3,
                    "am-li",
                ),
                1..=4 => touch(
                    k * 100 + step,
                    if step % 2 == 0 { call(60) } else { email("hi") },
                    "touch",
                ),
                5 => order(&format!("SO-{k}-1"), 1000 + k as i64),
                6 => open_opp(opp, 10_000, 20, date(2025, 6, 30)),
                7 => stage(opp, Stage::Proposal, None, None),
                8 => order(&format!("SO-{k}-2"), 2000),
                9 => stage(opp, Stage::Evaluation, None, None),
                10 => stage(opp, Stage::Negotiation, None, None),
                _ => win(opp, None),
            };
            out.extend(world.exec(cid(k), day(step as i64), "am-li", cmd));
        }
    }
    out
}

/// The end (high watermark) of every partition of a topic.
async fn ends(s: &KafkaSettings, topic: &str) -> BTreeMap<i32, i64> {
    let s = s.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = s.reader_config().create().unwrap();
        (0..PARTITIONS)
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap();
                (p, high)
            })
            .collect()
    })
    .await
    .unwrap()
}

async fn checkpoints(pool: &sqlx::PgPool, version: i32) -> BTreeMap<i32, i64> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        r#"SELECT "partition", "offset" FROM projection.checkpoints
            WHERE projection = 'rm' AND version = $1"#,
    )
    .bind(version)
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.into_iter().collect()
}

/// Every partition of the customer-events topic applied to its end by `version`.
async fn caught_up(pool: &sqlx::PgPool, s: &KafkaSettings, version: i32) -> bool {
    let ends = ends(s, &s.topics().customer_events()).await;
    let cps = checkpoints(pool, version).await;
    ends.iter()
        .all(|(p, end)| *end == 0 || cps.get(p).copied().unwrap_or(-1) + 1 >= *end)
}

async fn count(pool: &sqlx::PgPool, schema: &str, table: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>(&format!("SELECT count(*) FROM {schema}.{table}"))
        .fetch_one(pool)
        .await
        .map(|(n,)| n)
        .unwrap_or(-1)
}

/// Every record of every partition of a topic.
async fn read_topic(s: &KafkaSettings, topic: &str) -> Vec<StoredRecord> {
    let mut all = Vec::new();
    for p in 0..PARTITIONS {
        all.extend(read_partition(s, topic, p, 0).await.unwrap());
    }
    all
}

fn header(record: &StoredRecord, name: &str) -> String {
    String::from_utf8_lossy(record.header(name).unwrap_or_default()).into_owned()
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn serve(service: &ProjectionService) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = service.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// Both versions' tables, with RFM recomputed as of the same instant. `rfm_runs` is left
/// out: it records how many order batches the recompute saw, which depends on batching.
async fn compare_versions(pool: &sqlx::PgPool, a: i32, b: i32) {
    let as_of = day(60);
    for v in [a, b] {
        let (projector, _) =
            Projector::open(pool.clone(), ProjectionVersion::new("rm", v).unwrap())
                .await
                .unwrap();
        projector
            .recompute_rfm(as_of, RfmWindow::default())
            .await
            .unwrap();
    }
    let mut left = snapshot(pool, &format!("rm_v{a}")).await;
    let mut right = snapshot(pool, &format!("rm_v{b}")).await;
    left.remove("rfm_runs");
    right.remove("rfm_runs");
    assert!(
        left.get("audit_trail").is_some_and(|t| !t.is_empty()),
        "nothing was projected"
    );
    assert_same(&left, &right, &format!("rm_v{a} vs rm_v{b}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_projected_and_poison_goes_to_the_dead_letter_topic() {
    let broker = KafkaBroker::start();
    let s = settings(&broker, "e2e");
    provision_topics(&s).await.unwrap();
    let db = TestDb::new().await;
    let producer = Producer::new(&s);
    let mut world = World::new(PARTITIONS);
    let (a, b) = (cid(1), cid(2));

    let mut first = Vec::new();
    first.extend(world.exec(
        a,
        day(0),
        "am-li",
        register(CustomerLevel::Key, "Acme", "华东", 5, 4, "am-li"),
    ));
    first.extend(world.exec(a, day(1), "am-li", touch(1, call(120), "询价")));
    first.extend(world.exec(
        b,
        day(1),
        "am-wang",
        register(CustomerLevel::Large, "Beta", "华东", 4, 4, "am-wang"),
    ));
    first.extend(world.exec(a, day(2), "am-li", order("SO-1", 5000)));
    first.extend(world.exec(b, day(2), "am-wang", touch(2, email("报价"), "quote")));
    let mut positions = producer.events(&first).await;

    // three poison records on a's partition: garbage, an unknown type, a body that fails its schema
    let key = a.to_string();
    let template = first[1].to_kafka().unwrap();
    let original: Vec<(&str, Vec<u8>)> = template.headers.clone();
    let unknown_type: Vec<(&str, Vec<u8>)> = template
        .headers
        .iter()
        .map(|(k, v)| {
            if *k == "ce_type" {
                (*k, b"crm.customer.teleported.v1".to_vec())
            } else {
                (*k, v.clone())
            }
        })
        .collect();
    let garbage = producer
        .raw(key.as_bytes(), &[], Some(b"\x00\x01 not an event"))
        .await;
    let unknown = producer
        .raw(
            key.as_bytes(),
            &unknown_type,
            Some(template.value.as_slice()),
        )
        .await;
    let bad_schema = producer
        .raw(key.as_bytes(), &original, Some(br#"{"customer_id": 42}"#))
        .await;
    // and an event that decodes but cannot be applied: a duplicate of an earlier one (as a
    // non-idempotent producer's retry would append it)
    let duplicate = producer.events(&first[1..2]).await[0];
    let poison = [garbage, unknown, bad_schema];

    // and events after them on the same partition
    let mut later = world.exec(a, day(3), "am-li", touch(3, email("跟进"), "follow-up"));
    later.extend(world.exec(a, day(4), "am-li", order("SO-2", 7000)));
    positions.extend(producer.events(&later).await);
    let events: Vec<RecordedEvent> = first.iter().chain(&later).cloned().collect();
    let a_partition = partition_for(key.as_bytes(), PARTITIONS);
    let last_of_a = positions
        .iter()
        .filter(|(p, _)| *p == a_partition)
        .map(|(_, o)| *o)
        .max()
        .unwrap();
    assert!(poison
        .iter()
        .all(|(p, o)| *p == a_partition && *o < last_of_a));

    let service = ProjectionService::start(
        db.pool.clone(),
        s.clone(),
        run_options(None),
        Arc::new(SystemClock),
    )
    .unwrap();
    let addr = serve(&service).await;
    let pool = db.pool.clone();
    let n = events.len() as i64;
    eventually("every event projected", Duration::from_secs(40), || {
        let pool = pool.clone();
        async move {
            count(&pool, "rm_v1", "audit_trail").await == n
                && checkpoints(&pool, 1).await.get(&a_partition) == Some(&last_of_a)
        }
    })
    .await;

    // the 360 view and the audit trail show them
    let rm = ReadModels::new(db.pool.clone(), &ProjectionVersion::new("rm", 1).unwrap());
    let view = rm.customer_360(a.as_uuid()).await.unwrap().unwrap();
    assert_eq!(view.name, "Acme");
    assert_eq!((view.order_count, view.order_total), (2, 12_000));
    assert_eq!(view.last_sequence, 5);
    assert_eq!(
        view.touchpoints
            .0
            .iter()
            .map(|t| t.touchpoints)
            .sum::<i64>(),
        2
    );
    let trail = rm.audit_trail(Some(a.as_uuid())).await.unwrap();
    assert_eq!(
        trail.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let a_positions: Vec<i64> = events
        .iter()
        .zip(&positions)
        .filter(|(e, _)| e.metadata.customer_id == a)
        .map(|(_, (_, o))| *o)
        .collect();
    assert_eq!(
        trail.iter().map(|e| e.offset).collect::<Vec<_>>(),
        a_positions
    );
    assert!(trail
        .iter()
        .all(|e| e.partition == a_partition && e.topic == s.topics().customer_events()));
    assert_eq!(
        rm.customer_360(b.as_uuid())
            .await
            .unwrap()
            .unwrap()
            .last_sequence,
        2
    );

    // the poison is on the dead-letter topic, with its reason and where it came from
    let letters = read_topic(&s, &s.topics().dead_letter()).await;
    assert_eq!(letters.len(), 4, "{letters:?}");
    let mut sources: Vec<i64> = letters
        .iter()
        .map(|l| header(l, DLQ_SOURCE_OFFSET).parse().unwrap())
        .collect();
    sources.sort();
    let mut expected: Vec<i64> = poison.iter().map(|(_, o)| *o).collect();
    expected.push(duplicate.1);
    assert_eq!(sources, expected);
    let (refused, letters): (Vec<StoredRecord>, Vec<StoredRecord>) = letters
        .into_iter()
        .partition(|l| header(l, DLQ_SOURCE_OFFSET) == duplicate.1.to_string());
    let reason = header(&refused[0], DLQ_REASON);
    assert!(
        reason.starts_with("duplicate of an applied event: "),
        "{reason}"
    );
    for letter in &letters {
        let reason = header(letter, DLQ_REASON);
        assert!(reason.starts_with("undecodable event: "), "{reason}");
        assert_eq!(letter.key.as_deref(), Some(key.as_bytes()));
    }
    let unknown_letter = letters
        .iter()
        .find(|l| header(l, DLQ_SOURCE_OFFSET) == unknown.1.to_string())
        .unwrap();
    assert!(
        header(unknown_letter, DLQ_REASON).contains("teleported"),
        "{}",
        header(unknown_letter, DLQ_REASON)
    );

    // operations
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    eventually("ready", Duration::from_secs(10), || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("projection_dead_letters_total{kind=\"decode\"} 3")
            && metrics.contains("projection_dead_letters_total{kind=\"duplicate\"} 1")
            && metrics.contains("projection_dead_letters 4"),
        "{metrics}"
    );
    assert!(metrics.contains("projection_partition_lag"), "{metrics}");
    assert!(
        metrics.contains("projection_batch_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("projection_events_applied_total {}", events.len())));

    // a restart goes on from the checkpoints: nothing applied twice, nothing dead-lettered twice
    service.shutdown().await;
    let more = world.exec(b, day(5), "am-wang", order("SO-3", 900));
    producer.events(&more).await;
    let service = ProjectionService::start(
        db.pool.clone(),
        s.clone(),
        run_options(None),
        Arc::new(SystemClock),
    )
    .unwrap();
    let pool = db.pool.clone();
    eventually("the new event projected", Duration::from_secs(40), || {
        let pool = pool.clone();
        async move { count(&pool, "rm_v1", "audit_trail").await == n + 1 }
    })
    .await;
    assert_eq!(service.metrics().events_applied.get(), 1);
    assert_eq!(read_topic(&s, &s.topics().dead_letter()).await.len(), 4);
    // the dead-letter count is the version's, kept in PostgreSQL: a restart does not reset it
    assert_eq!(service.status().consumer.dead_letters, 4);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_publishes_alerts_under_a_controlled_clock() {
    let broker = KafkaBroker::start();
    let s = settings(&broker, "sweep");
    provision_topics(&s).await.unwrap();
    let db = TestDb::new().await;
    let producer = Producer::new(&s);
    let mut world = World::new(PARTITIONS);
    let c = cid(7);
    let mut events = world.exec(
        c,
        day(0),
        "am",
        register(CustomerLevel::Key, "Acme", "华东", 4, 4, "am"),
    );
    events.extend(world.exec(
        c,
        day(0),
        "dir",
        open_opp(1, 100_000, 30, date(2025, 6, 30)),
    ));
    producer.events(&events).await;

    let clock = ManualClock::new(day(1));
    let mut options = run_options(None);
    options.jobs.sweep_interval = Duration::from_millis(100);
    let service =
        ProjectionService::start(db.pool.clone(), s.clone(), options, Arc::new(clock.clone()))
            .unwrap();
    let pool = db.pool.clone();
    eventually("the opportunity projected", Duration::from_secs(40), || {
        let pool = pool.clone();
        async move { count(&pool, "rm_v1", "opportunities").await == 1 }
    })
    .await;
    let alerts_topic = s.topics().alerts();
    let partition = partition_for(c.to_string().as_bytes(), PARTITIONS);
    let alerts = || {
        let s = s.clone();
        let topic = alerts_topic.clone();
        async move { read_partition(&s, &topic, partition, 0).await.unwrap() }
    };

    // not stuck yet: sweeps run and publish nothing
    let sweeps = service.metrics().jobs.with_label_values(&["sweep"]).get();
    eventually("three sweeps", Duration::from_secs(10), || async {
        service.metrics().jobs.with_label_values(&["sweep"]).get() >= sweeps + 3
    })
    .await;
    assert!(alerts().await.is_empty());

    // exactly at the threshold (qualification: 14 days): still nothing; one second later: opened
    clock.set(day(14));
    let sweeps = service.metrics().jobs.with_label_values(&["sweep"]).get();
    eventually("two sweeps", Duration::from_secs(10), || async {
        service.metrics().jobs.with_label_values(&["sweep"]).get() >= sweeps + 2
    })
    .await;
    assert!(alerts().await.is_empty());
    clock.set(day(14) + TimeDelta::seconds(1));
    eventually("the alert published", Duration::from_secs(15), || async {
        alerts().await.len() == 1
    })
    .await;
    let opened = &alerts().await[0];
    assert_eq!(header(opened, "ce_type"), "crm.alert.opened.v1");
    assert_eq!(header(opened, "ce_subject"), c.to_string());
    assert_eq!(header(opened, "ce_specversion"), "1.0");
    assert_eq!(header(opened, "content-type"), "application/json");
    assert_eq!(opened.key.as_deref(), Some(c.to_string().as_bytes()));
    let body: serde_json::Value = serde_json::from_slice(opened.value.as_deref().unwrap()).unwrap();
    assert_eq!(body["change"], "opened");
    assert_eq!(body["opportunity_id"], id(1).to_string());
    assert_eq!(body["stage"], "qualification");
    assert_eq!(body["threshold_days"], 14);
    let alert_id = body["alert_id"].as_str().unwrap().to_owned();
    assert_eq!(header(opened, "ce_id"), format!("{alert_id}:opened"));

    // a stage change closes it (at the event's business time), published at once
    producer
        .events(&world.exec(c, day(15), "am", stage(1, Stage::Proposal, None, None)))
        .await;
    eventually("the closing published", Duration::from_secs(15), || async {
        alerts().await.len() == 2
    })
    .await;
    let closed = &alerts().await[1];
    assert_eq!(header(closed, "ce_type"), "crm.alert.closed.v1");
    let body: serde_json::Value = serde_json::from_slice(closed.value.as_deref().unwrap()).unwrap();
    assert_eq!(body["alert_id"], alert_id.as_str());
    assert_eq!(body["closed_by"], "stage_changed");
    assert_eq!(
        body["closed_at"]
            .as_str()
            .map(|t| t.parse::<chrono::DateTime<chrono::Utc>>().unwrap()),
        Some(day(15))
    );

    // proposal allows 21 days from day 15: nothing at day 36, an alert one second after
    clock.set(day(36));
    let sweeps = service.metrics().jobs.with_label_values(&["sweep"]).get();
    eventually("two sweeps", Duration::from_secs(10), || async {
        service.metrics().jobs.with_label_values(&["sweep"]).get() >= sweeps + 2
    })
    .await;
    assert_eq!(alerts().await.len(), 2);
    clock.set(day(36) + TimeDelta::seconds(1));
    eventually(
        "the second alert published",
        Duration::from_secs(15),
        || async { alerts().await.len() == 3 },
    )
    .await;
    let again = &alerts().await[2];
    let body: serde_json::Value = serde_json::from_slice(again.value.as_deref().unwrap()).unwrap();
    assert_eq!(
        (body["change"].as_str(), body["stage"].as_str()),
        (Some("opened"), Some("proposal"))
    );
    assert_eq!(
        service
            .metrics()
            .alerts_published
            .with_label_values(&["opened"])
            .get(),
        2
    );
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_while_events_arrive_ends_equal_to_the_live_version_and_switches_over() {
    let broker = KafkaBroker::start();
    let s = settings(&broker, "replay");
    provision_topics(&s).await.unwrap();
    let db = TestDb::new().await;
    let producer = Arc::new(Producer::new(&s));
    let mut world = World::new(PARTITIONS);
    let initial = load(&mut world, 1, 100);
    producer.events(&initial).await;
    let arriving = load(&mut world, 1001, 150);
    let total = initial.len() + arriving.len();

    // version 1 is live; one instance pinned to it, one following whichever version is live
    // (both share v1's partitions through its consumer group until the switch-over)
    Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 1).unwrap())
        .await
        .unwrap();
    let pinned = ProjectionService::start(
        db.pool.clone(),
        s.clone(),
        run_options(Some(1)),
        Arc::new(FixedClock(day(1))),
    )
    .unwrap();
    let follower = ProjectionService::start(
        db.pool.clone(),
        s.clone(),
        run_options(None),
        Arc::new(FixedClock(day(1))),
    )
    .unwrap();

    // events keep arriving, in small chunks, for a few seconds
    let produced = Arc::new(AtomicUsize::new(initial.len()));
    let feeder = {
        let producer = producer.clone();
        let produced = produced.clone();
        tokio::spawn(async move {
            for chunk in arriving.chunks(30) {
                producer.events(chunk).await;
                produced.fetch_add(chunk.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let at_start = produced.load(Ordering::SeqCst);
    let mut progress: Vec<ReplayProgress> = Vec::new();
    let outcome = replay(
        db.pool.clone(),
        s.clone(),
        ReplayOptions {
            projection: "rm".into(),
            version: 2,
            batch: BatchOptions {
                max_records: 200,
                max_wait: Duration::from_millis(50),
                ..BatchOptions::default()
            },
            activate: true,
            catch_up_lag: 100,
            jobs: JobOptions::default(),
        },
        Arc::new(FixedClock(day(1))),
        Metrics::new().unwrap(),
        |p| progress.push(p.clone()),
    )
    .await
    .unwrap();
    let at_switch = produced.load(Ordering::SeqCst);
    eprintln!(
        "replay: {} records in {:?}; produced {at_start} at its start, {at_switch} at the switch, {total} in all",
        outcome.records, outcome.elapsed
    );
    assert!(outcome.activated);
    assert!(
        outcome.records as usize > at_start,
        "the replay read events that arrived while it ran"
    );
    let last = progress.last().unwrap();
    assert!(
        last.caught_up && last.records_done == outcome.records,
        "{last:?}"
    );
    assert_eq!(
        live_version(&db.pool, "rm").await.unwrap(),
        Some(ProjectionVersion::new("rm", 2).unwrap())
    );

    feeder.await.unwrap();
    let pool = db.pool.clone();
    eventually(
        "the follower switched to v2",
        Duration::from_secs(20),
        || async { follower.status().version == Some(2) },
    )
    .await;
    eventually(
        "v1 and v2 at the end of the log",
        Duration::from_secs(60),
        || {
            let pool = pool.clone();
            let s = s.clone();
            async move { caught_up(&pool, &s, 1).await && caught_up(&pool, &s, 2).await }
        },
    )
    .await;
    follower.shutdown().await;
    pinned.shutdown().await;
    assert_eq!(count(&db.pool, "rm_v2", "audit_trail").await, total as i64);
    compare_versions(&db.pool, 1, 2).await;
    let statuses: Vec<(i32, VersionStatus)> = list_versions(&db.pool, Some("rm"))
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.version.version(), v.status))
        .collect();
    assert_eq!(
        statuses,
        vec![(1, VersionStatus::Retired), (2, VersionStatus::Live)]
    );
    // the old version can go
    drop_version(&db.pool, &ProjectionVersion::new("rm", 1).unwrap())
        .await
        .unwrap();
}

/// A tiny PRNG (xorshift), seeded from the clock; the seed is printed for reruns.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("CRM_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
                    | 1
            });
        eprintln!("crash test seed: CRM_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Records applied by version 1 so far (the sum of its checkpoints + 1).
async fn applied(pool: &sqlx::PgPool) -> i64 {
    checkpoints(pool, 1).await.values().map(|o| o + 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_changes_nothing() {
    let broker = KafkaBroker::start();
    let s = settings(&broker, "crash");
    provision_topics(&s).await.unwrap();
    let db = TestDb::new().await;
    let producer = Arc::new(Producer::new(&s));
    let mut world = World::new(PARTITIONS);
    let events = load(&mut world, 1, 250);
    let total = events.len();
    let log = std::env::temp_dir().join(format!(
        "projection-crash-{}.log",
        s.topic_prefix.trim_end_matches('.')
    ));
    eprintln!("service log: {}", log.display());
    let run_args = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--sweep-interval",
        "1h",
        "--rfm-check-interval",
        "1s",
        "--now",
        "2025-01-07T00:00:00Z",
    ];

    let feeder = {
        let producer = producer.clone();
        tokio::spawn(async move {
            for chunk in events.chunks(100) {
                producer.events(chunk).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let mut rng = Rng::new();
    let mut child = ProjectionProcess::spawn(&s, &db.url(), &log, &run_args);
    let mut at_kills = Vec::new();
    let mut done_before = 0;
    for _ in 0..4 {
        // kill at a random moment once the (re)started service is applying batches
        let pool = db.pool.clone();
        eventually("the service applying", Duration::from_secs(40), || {
            let pool = pool.clone();
            async move { applied(&pool).await > done_before }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50 + rng.below(1200))).await;
        child.kill(); // SIGKILL
        done_before = applied(&db.pool).await;
        at_kills.push(done_before);
        child = ProjectionProcess::spawn(&s, &db.url(), &log, &run_args);
    }
    eprintln!("records checkpointed at each SIGKILL: {at_kills:?} of {total}");
    assert!(
        at_kills.iter().any(|d| *d > 0 && (*d as usize) < total),
        "no kill hit the service in the middle of the load: {at_kills:?}"
    );
    feeder.await.unwrap();
    let pool = db.pool.clone();
    eventually(
        "the service at the end of the log",
        Duration::from_secs(60),
        || {
            let pool = pool.clone();
            let s = s.clone();
            async move { caught_up(&pool, &s, 1).await }
        },
    )
    .await;
    child.kill();

    // a rebuild from offset zero into a fresh version, with the binary's replay
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_projection-service"))
        .args(["replay", "--version", "2", "--no-activate"])
        .args(["--kafka-brokers", s.brokers.as_str()])
        .args(["--topic-prefix", s.topic_prefix.as_str()])
        .args(["--partitions", &PARTITIONS.to_string()])
        .args(["--database-url", &db.url()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{}{stderr}", String::from_utf8_lossy(&output.stdout));
    assert!(output.status.success(), "replay failed: {stderr}");
    assert!(stderr.contains("events/s"), "no progress line: {stderr}");
    assert!(stderr.contains("left building"), "{stderr}");

    // nothing missing, nothing counted twice
    assert_eq!(count(&db.pool, "rm_v1", "audit_trail").await, total as i64);
    let orders: (i64, i64) = sqlx::query_as(
        "SELECT sum(order_count)::bigint, sum(order_total)::bigint FROM rm_v1.customers",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let expected_total: i64 = (1..=250i64).map(|k| 1000 + k + 2000).sum();
    assert_eq!(orders, (500, expected_total));
    compare_versions(&db.pool, 1, 2).await;
    assert_eq!(
        live_version(&db.pool, "rm").await.unwrap(),
        Some(ProjectionVersion::new("rm", 1).unwrap())
    );
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_events_on_the_topic_are_projected_not_dead_lettered() {
    let broker = KafkaBroker::start();
    let s = settings(&broker, "teams");
    provision_topics(&s).await.unwrap();
    let db = TestDb::new().await;
    let producer = Producer::new(&s);

    // the organisation stream, on its key's partition as the command-service appends it,
    // around a customer's events
    let mut org = Org::new();
    org.exec(
        day(0),
        "admin-ma",
        CreateTeam {
            team_id: team(1),
            name: "华东销售".into(),
        }
        .into(),
    );
    org.exec(
        day(0),
        "admin-ma",
        AssignTeamDirector {
            team_id: team(1),
            director: UserId::new("dir-zhou"),
        }
        .into(),
    );
    let mut world = World::new(PARTITIONS);
    let customer = world.exec(
        cid(1),
        day(1),
        "am-li",
        register(CustomerLevel::Key, "Acme", "华东", 5, 4, "am-li"),
    );
    for member in ["am-li", "am-wang"] {
        org.exec(
            day(2),
            "dir-zhou",
            AddTeamMember {
                team_id: team(1),
                member: UserId::new(member),
            }
            .into(),
        );
    }
    let mut org_positions = Vec::new();
    for (_, rec) in &org.log {
        let record = rec.to_kafka().unwrap();
        assert_eq!(record.key, domain::envelope::ORGANISATION_KEY.as_bytes());
        org_positions.push(
            producer
                .raw(&record.key, &record.headers, Some(record.value.as_slice()))
                .await,
        );
    }
    producer.events(&customer).await;

    let service = ProjectionService::start(
        db.pool.clone(),
        s.clone(),
        run_options(None),
        Arc::new(SystemClock),
    )
    .unwrap();
    let pool = db.pool.clone();
    let settings = s.clone();
    eventually("every record applied", Duration::from_secs(40), || {
        let (pool, settings) = (pool.clone(), settings.clone());
        async move { caught_up(&pool, &settings, 1).await }
    })
    .await;

    let rm = ReadModels::new(db.pool.clone(), &ProjectionVersion::new("rm", 1).unwrap());
    let teams = rm.teams().await.unwrap();
    assert_eq!(teams.len(), 1);
    assert_eq!(teams[0].name, "华东销售");
    assert_eq!(teams[0].director.as_deref(), Some("dir-zhou"));
    assert_eq!(teams[0].members, ["am-li", "am-wang"]);
    assert!(rm.customer_360(cid(1).as_uuid()).await.unwrap().is_some());
    let trail = rm.audit_trail(Some(ORGANISATION_STREAM_ID)).await.unwrap();
    assert_eq!(
        trail
            .iter()
            .map(|e| (e.partition, e.offset))
            .collect::<Vec<_>>(),
        org_positions
    );
    assert!(
        read_topic(&s, &s.topics().dead_letter()).await.is_empty(),
        "no team event is dead-lettered"
    );
    assert_eq!(
        service.metrics().events_applied.get(),
        (org.log.len() + customer.len()) as u64
    );
    service.shutdown().await;
}
