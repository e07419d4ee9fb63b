//! The projection over the embedded log (the single-process default of `crm up`): the same
//! batch logic as on Kafka, fed by a tailer of the embedded partitions that starts at the
//! PostgreSQL checkpoints and is woken by every append. Poison records go to the embedded
//! `dead-letter` log with the reason and the partition goes on; events appended while it
//! runs are applied; a restart applies nothing twice; a replay into a new version ends equal
//! to the live one and switches over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use domain::*;
use infra::kafka::{DLQ_REASON, DLQ_SOURCE_OFFSET};
use infra::log::CustomerLog;
use projection_service::*;

const PARTITIONS: i32 = 4;

async fn count(pool: &sqlx::PgPool, schema: &str, table: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>(&format!("SELECT count(*) FROM {schema}.{table}"))
        .fetch_one(pool)
        .await
        .map(|(n,)| n)
        .unwrap_or(-1)
}

/// Appends events as command-service does: each through its partition's writer.
async fn append(topics: &EmbeddedTopics, events: &[RecordedEvent]) -> Vec<infra::Position> {
    let mut positions = Vec::new();
    for event in events {
        let record = event.to_kafka().unwrap();
        let p = infra::kafka::partition_for(&record.key, PARTITIONS);
        let writer = topics.customer_events.open_writer(p).await.unwrap();
        positions.extend(writer.append(&[record]).await.unwrap());
    }
    positions
}

fn options() -> RunOptions {
    let mut options = RunOptions::new("rm");
    options.batch = BatchOptions {
        max_records: 100,
        max_wait: Duration::from_millis(20),
        ..BatchOptions::default()
    };
    options.version_check_interval = Duration::from_millis(200);
    options.jobs.sweep_interval = Duration::from_secs(3600);
    options.jobs.rfm_interval = Duration::from_secs(3600);
    options.jobs.rfm_check_interval = Duration::from_secs(3600);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_log_is_projected_with_dead_letters_restarts_and_replays() {
    let dir = std::env::temp_dir().join(format!("crm-proj-embedded-{}", uuid::Uuid::now_v7()));
    let topics = EmbeddedTopics::open(&dir, PARTITIONS).unwrap();
    let db = TestDb::new().await;
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
    append(&topics, &first).await;
    // a poison record on a's partition, then more of a's events after it
    let key = a.to_string();
    let a_partition = infra::kafka::partition_for(key.as_bytes(), PARTITIONS);
    let writer = topics
        .customer_events
        .open_writer(a_partition)
        .await
        .unwrap();
    let poison = writer
        .append(&[KafkaRecord {
            key: key.clone().into_bytes(),
            headers: vec![("ce_type", b"crm.customer.teleported.v1".to_vec())],
            value: b"\x00 not an event".to_vec(),
        }])
        .await
        .unwrap()[0]
        .clone();
    let second = world.exec(a, day(3), "am-li", touch(2, email("跟进"), "follow-up"));
    append(&topics, &second).await;

    let service = ProjectionService::start_on(
        db.pool.clone(),
        EventSource::Embedded(topics.clone()),
        options(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let pool = db.pool.clone();
    let n = (first.len() + second.len()) as i64;
    eventually("every event projected", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move { count(&pool, "rm_v1", "audit_trail").await == n }
    })
    .await;
    eventually("ready", Duration::from_secs(10), || async {
        service.status().ready
    })
    .await;

    // the poison record is in the dead-letter log, with the reason and where it came from
    let letters: Vec<_> = (0..PARTITIONS)
        .flat_map(|p| topics.dead_letters.read(p, 0).unwrap())
        .collect();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.key.as_deref(), Some(key.as_bytes()));
    assert!(String::from_utf8_lossy(letter.header(DLQ_REASON).unwrap()).contains("undecodable"));
    assert_eq!(
        letter.header(DLQ_SOURCE_OFFSET),
        Some(poison.offset.to_string().as_bytes())
    );

    // appended while it runs: woken by the append, applied
    let live = world.exec(b, day(4), "am-wang", order("SO-9", 9000));
    let at = append(&topics, &live).await;
    let pool2 = db.pool.clone();
    eventually("the live append projected", Duration::from_secs(10), || {
        let pool = pool2.clone();
        let at = at[0].clone();
        async move {
            sqlx::query_as::<_, (i64,)>(
                r#"SELECT "offset" FROM projection.checkpoints WHERE projection = 'rm' AND version = 1
                    AND topic = $1 AND "partition" = $2"#,
            )
            .bind(&at.topic)
            .bind(at.partition)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .is_some_and(|(o,)| o >= at.offset)
        }
    })
    .await;
    let rm = ReadModels::new(db.pool.clone(), &ProjectionVersion::new("rm", 1).unwrap());
    let view = rm.customer_360(b.as_uuid()).await.unwrap().unwrap();
    assert_eq!(view.order_count, 1);
    service.shutdown().await;

    // a restart (a new log object, as a new process) applies nothing twice, dead-letters
    // nothing again
    let before = snapshot(&db.pool, "rm_v1").await;
    let topics = EmbeddedTopics::open(&dir, PARTITIONS).unwrap();
    let service = ProjectionService::start_on(
        db.pool.clone(),
        EventSource::Embedded(topics.clone()),
        options(),
        Arc::new(SystemClock),
    )
    .unwrap();
    eventually("ready again", Duration::from_secs(10), || async {
        service.status().ready
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_same(
        &before,
        &snapshot(&db.pool, "rm_v1").await,
        "after a restart",
    );
    let letters: usize = (0..PARTITIONS)
        .map(|p| topics.dead_letters.read(p, 0).unwrap().len())
        .sum();
    assert_eq!(letters, 1);
    // the dead-letter count is the version's, kept with the checkpoints: not reset by a restart
    assert_eq!(service.status().consumer.dead_letters, 1);

    // a replay into version 2 from offset zero equals version 1 and switches over; the
    // service follows it
    let outcome = replay_into(
        &db.pool,
        EventSource::Embedded(topics.clone()),
        2,
        options().batch,
        true,
    )
    .await;
    assert!(outcome.activated);
    assert_eq!(outcome.events_applied as i64, n + 1);
    assert_eq!(outcome.dead_letters, 1);
    // RFM runs and the sweep happen at replay time: compare the projected facts only
    let v1 = projected_facts(&db.pool, "rm_v1").await;
    let v2 = projected_facts(&db.pool, "rm_v2").await;
    assert_same(&v1, &v2, "replay");
    eventually(
        "the service switched to v2",
        Duration::from_secs(10),
        || async { service.status().version == Some(2) },
    )
    .await;
    service.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `/readyz` after a restart: not ready while the projection re-reads what it missed, even
/// once it has read to the end of every partition with records still pending (the defect: a
/// partition at its end counted as lag 0, so it said ready 1.6 s after a restart with 450
/// events still to apply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_projection_is_ready_only_once_it_has_applied_the_backlog() {
    let dir = std::env::temp_dir().join(format!("crm-proj-ready-{}", uuid::Uuid::now_v7()));
    let topics = EmbeddedTopics::open(&dir, PARTITIONS).unwrap();
    let db = TestDb::new().await;
    let mut world = World::new(PARTITIONS);
    let customers: Vec<CustomerId> = (1..=8).map(cid).collect();
    let mut events = Vec::new();
    for (i, c) in customers.iter().enumerate() {
        events.extend(world.exec(
            *c,
            day(0),
            "am-li",
            register(CustomerLevel::Key, &format!("C{i}"), "华东", 5, 4, "am-li"),
        ));
    }
    for n in 0..3000u32 {
        let c = customers[n as usize % customers.len()];
        events.extend(world.exec(
            c,
            day(1),
            "am-li",
            touch(n as u128 + 10, call(60), "backlog"),
        ));
    }
    // one append per partition, as a batch of command-service would
    let mut by_partition: std::collections::BTreeMap<i32, Vec<KafkaRecord>> = Default::default();
    for e in &events {
        let record = e.to_kafka().unwrap();
        let p = infra::kafka::partition_for(&record.key, PARTITIONS);
        by_partition.entry(p).or_default().push(record);
    }
    for (p, records) in &by_partition {
        let writer = topics.customer_events.open_writer(*p).await.unwrap();
        writer.append(records).await.unwrap();
    }
    let ends: std::collections::BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| (p, topics.customer_events.end_offset(p).unwrap()))
        .collect();

    let mut slow = options();
    // small batches, so that reading reaches the ends long before applying does
    slow.batch = BatchOptions {
        max_records: 50,
        max_wait: Duration::from_millis(20),
        ..BatchOptions::default()
    };
    let service = ProjectionService::start_on(
        db.pool.clone(),
        EventSource::Embedded(topics.clone()),
        slow,
        Arc::new(SystemClock),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut polls_not_ready = 0u32;
    loop {
        let status = service.status();
        if status.ready {
            for (p, end) in &ends {
                let progress = status.consumer.partitions.get(p).unwrap();
                assert_eq!(
                    progress.checkpoint,
                    end - 1,
                    "ready while partition {p} is at {} of {end}: {status:?}",
                    progress.checkpoint
                );
            }
            break;
        }
        polls_not_ready += 1;
        assert!(Instant::now() < deadline, "never ready: {status:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(polls_not_ready > 0);
    assert_eq!(
        count(&db.pool, "rm_v1", "audit_trail").await,
        events.len() as i64
    );
    service.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A history of `customers` customers: registered, touched, an opportunity moved through
/// stages, and an order each.
fn history(world: &mut World, customers: u128) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    for n in 1..=customers {
        let c = cid(n);
        let owner = if n % 2 == 0 { "am-li" } else { "am-wang" };
        events.extend(world.exec(
            c,
            day(0),
            owner,
            register(CustomerLevel::Large, &format!("C{n}"), "华东", 4, 4, owner),
        ));
        events.extend(world.exec(c, day(1), owner, touch(n * 10, call(60), "首次联系")));
        events.extend(world.exec(c, day(2), owner, open_opp(n, 10_000, 20, date(2030, 1, 1))));
        events.extend(world.exec(c, day(3), owner, stage(n, Stage::Proposal, None, Some(40))));
        events.extend(world.exec(c, day(4), owner, order(&format!("SO-{n}"), 1000 + n as i64)));
    }
    events
}

/// Waits until version 1's audit trail holds `events` events.
async fn wait_applied(pool: &sqlx::PgPool, events: usize) {
    eventually("every event applied", Duration::from_secs(60), || async {
        count(pool, "rm_v1", "audit_trail").await == events as i64
    })
    .await;
}

/// Rebuilds version 2 from offset zero (not activated) and asserts version 1 equals it.
async fn assert_equals_a_full_replay(db: &TestDb, topics: &EmbeddedTopics, what: &str) {
    let outcome = replay_into(
        &db.pool,
        EventSource::Embedded(topics.clone()),
        2,
        options().batch,
        false,
    )
    .await;
    assert!(outcome.events_applied > 0);
    assert_same(
        &projected_facts(&db.pool, "rm_v1").await,
        &projected_facts(&db.pool, "rm_v2").await,
        what,
    );
}

/// `crm replay --read-model`: one read model rebuilt from offset zero while the projection
/// runs and events keep arriving is switched in with no event lost or applied twice (the
/// live version then equals a full replay), the other read models never stop, and what the
/// rebuild left behind is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_rebuilt_while_events_arrive_is_switched_in_without_a_gap() {
    let dir = std::env::temp_dir().join(format!("crm-proj-rebuild-{}", uuid::Uuid::now_v7()));
    let topics = EmbeddedTopics::open(&dir, PARTITIONS).unwrap();
    let db = TestDb::new().await;
    let mut world = World::new(PARTITIONS);
    let first = history(&mut world, 60);
    append(&topics, &first).await;
    let service = ProjectionService::start_on(
        db.pool.clone(),
        EventSource::Embedded(topics.clone()),
        options(),
        Arc::new(SystemClock),
    )
    .unwrap();
    wait_applied(&db.pool, first.len()).await;

    // touchpoints keep arriving, before, during and after the switch
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (topics, stop) = (topics.clone(), stop.clone());
        async move {
            let mut appended = 0usize;
            let mut i = 0u128;
            while !stop.load(std::sync::atomic::Ordering::Acquire) || i < 100 {
                i += 1;
                let c = cid(1 + i % 60);
                let events = world.exec(c, day(5), "am-li", touch(10_000 + i, call(30), "跟进"));
                appended += events.len();
                append(&topics, &events).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            appended
        }
    });
    for read_model in ["timeline", "customers"] {
        // the live rows go: only the rebuilt ones can bring them back
        sqlx::query(&format!("DELETE FROM rm_v1.{read_model}"))
            .execute(&db.pool)
            .await
            .unwrap();
        let outcome = rebuild_read_model(
            db.pool.clone(),
            EventSource::Embedded(topics.clone()),
            RebuildOptions {
                batch: options().batch,
                ..RebuildOptions::new("rm", read_model)
            },
            Metrics::new().unwrap(),
            |_| {},
        )
        .await
        .unwrap();
        eprintln!("{outcome:?}");
        assert_eq!(outcome.read_model, read_model);
        assert!(outcome.records as usize >= first.len(), "{outcome:?}");
        assert!(service.status().ready, "{:?}", service.status());
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let appended = writer.await.unwrap();
    wait_applied(&db.pool, first.len() + appended).await;
    let timeline = count(&db.pool, "rm_v1", "timeline").await;
    assert!(timeline >= (60 + 100) as i64, "timeline rows: {timeline}");
    for schema in ["rm_v1_rebuild", "rm_v1_retired"] {
        let (left,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert!(!left, "{schema} is left behind");
    }
    service.shutdown().await;
    assert_equals_a_full_replay(&db, &topics, "after rebuilding two read models under load").await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A read model that has applied nothing of the log (one added to a running deployment) is
/// caught up from offset zero when the projection starts, while the others skip what they
/// have; and an unknown read model, or one that cannot be rebuilt alone, is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_without_checkpoints_catches_up_from_the_beginning() {
    let dir = std::env::temp_dir().join(format!("crm-proj-behind-{}", uuid::Uuid::now_v7()));
    let topics = EmbeddedTopics::open(&dir, PARTITIONS).unwrap();
    let db = TestDb::new().await;
    let mut world = World::new(PARTITIONS);
    let events = history(&mut world, 30);
    append(&topics, &events).await;
    let service = ProjectionService::start_on(
        db.pool.clone(),
        EventSource::Embedded(topics.clone()),
        options(),
        Arc::new(SystemClock),
    )
    .unwrap();
    wait_applied(&db.pool, events.len()).await;
    service.shutdown().await;
    let before = snapshot(&db.pool, "rm_v1").await;

    // the pipeline as a read model new to this version: no rows, no checkpoints
    for table in read_models::tables_of("pipeline") {
        sqlx::query(&format!("DELETE FROM rm_v1.{table}"))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    sqlx::query("DELETE FROM projection.read_model_checkpoints WHERE read_model = 'pipeline'")
        .execute(&db.pool)
        .await
        .unwrap();
    let service = ProjectionService::start_on(
        db.pool.clone(),
        EventSource::Embedded(topics.clone()),
        options(),
        Arc::new(SystemClock),
    )
    .unwrap();
    eventually(
        "the pipeline caught up",
        Duration::from_secs(60),
        || async { count(&db.pool, "rm_v1", "opportunities").await == 30 },
    )
    .await;
    eventually("the projection ready", Duration::from_secs(30), || async {
        service.status().ready
    })
    .await;
    service.shutdown().await;
    assert_same(
        &before,
        &snapshot(&db.pool, "rm_v1").await,
        "after catching up one read model",
    );
    // the others applied nothing twice: one audit-trail row per event
    assert_eq!(
        count(&db.pool, "rm_v1", "audit_trail").await,
        events.len() as i64
    );

    for (name, refused) in [
        ("pipelines", "no read model is named"),
        ("stage_alerts", "cannot be rebuilt alone"),
    ] {
        let e = rebuild_read_model(
            db.pool.clone(),
            EventSource::Embedded(topics.clone()),
            RebuildOptions::new("rm", name),
            Metrics::new().unwrap(),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains(refused), "{name}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
