//! Keyset pagination while events keep arriving between pages (nothing skipped, nothing
//! repeated), and read-your-writes with `CRM-Min-Position` (waits for the checkpoint, or 503
//! with Retry-After).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use domain::*;
use serde_json::Value;

fn reg(name: &str) -> Command {
    register(CustomerLevel::Ordinary, name, "华东", 3, 3, "am-li")
}

/// Pages through `uri` with `limit`, calling `between` after every page.
async fn paginate_with<F, Fut>(h: &Harness, uri: &str, limit: usize, mut between: F) -> Vec<Value>
where
    F: FnMut(usize, Value) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let sep = if uri.contains('?') { '&' } else { '?' };
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for n in 0.. {
        let page_uri = match &cursor {
            Some(c) => format!("{uri}{sep}limit={limit}&cursor={c}"),
            None => format!("{uri}{sep}limit={limit}"),
        };
        let page = h.json(&page_uri).await;
        let got = page["items"].as_array().unwrap().clone();
        let last = got.last().cloned().unwrap_or(Value::Null);
        items.extend(got);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        between(n, last).await;
    }
    items
}

#[tokio::test]
async fn customer_pages_neither_skip_nor_repeat_while_customers_arrive() {
    let h = Harness::new(Duration::from_millis(100)).await;
    let mut w = World::new(4);
    for i in 0..30u128 {
        // names in an order unrelated to ids or registration
        w.exec(
            cid(i),
            day(i as i64),
            "am-li",
            reg(&format!("M{:02}", (i * 7) % 30)),
        );
    }
    h.apply(&w.log).await;
    let originals: BTreeSet<String> = w.states.keys().map(|c| c.as_uuid().to_string()).collect();

    let world = std::sync::Arc::new(tokio::sync::Mutex::new(w));
    let mut inserted_after = BTreeSet::new();
    let mut inserted_before = BTreeSet::new();
    let items = {
        let world = world.clone();
        let h = &h;
        let after = &mut inserted_after;
        let before = &mut inserted_before;
        paginate_with(h, "/v1/customers?sort=name", 4, move |n, last| {
            let world = world.clone();
            let last_name = last["name"].as_str().unwrap().to_owned();
            // one customer sorting before the page just read, one after it, each time
            let early = cid(1000 + n as u128);
            let late = cid(2000 + n as u128);
            before.insert(early.as_uuid().to_string());
            after.insert(late.as_uuid().to_string());
            async move {
                let mut w = world.lock().await;
                let from = w.log.len();
                w.exec(early, day(100), "am-li", reg(&format!("A{n:02}")));
                w.exec(late, day(100), "am-li", reg(&format!("{last_name}x{n:02}")));
                h.apply(&w.log[from..]).await;
            }
        })
        .await
    };
    let got: Vec<String> = ids(&items, "customer_id");
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "a customer was repeated");
    assert!(
        originals.is_subset(&unique),
        "a customer that existed throughout was skipped"
    );
    assert!(
        inserted_after.is_subset(&unique),
        "customers inserted after the cursor are seen"
    );
    assert!(
        inserted_before.is_disjoint(&unique),
        "customers inserted before the cursor are not"
    );
    // and the whole answer is in order
    let names: Vec<String> = items
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    let (sorted,): (Vec<String>,) =
        sqlx::query_as("SELECT array_agg(n ORDER BY n) FROM unnest($1::text[]) n")
            .bind(&names)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(names, sorted);

    // descending by registration: customers registered later sort before the cursor
    let w = world.lock().await;
    let everyone: BTreeSet<String> = w.states.keys().map(|c| c.as_uuid().to_string()).collect();
    drop(w);
    let world2 = world.clone();
    let h2 = &h;
    let items = paginate_with(&h, "/v1/customers?sort=-registered_at", 5, move |n, _| {
        let world = world2.clone();
        async move {
            let mut w = world.lock().await;
            let from = w.log.len();
            w.exec(
                cid(3000 + n as u128),
                day(500 + n as i64),
                "am-li",
                reg(&format!("N{n:02}")),
            );
            h2.apply(&w.log[from..]).await;
        }
    })
    .await;
    let got: Vec<String> = ids(&items, "customer_id");
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len());
    assert_eq!(
        unique, everyone,
        "exactly the customers registered before the first page"
    );
}

#[tokio::test]
async fn audit_and_timeline_pages_hold_while_events_arrive() {
    let h = Harness::new(Duration::from_millis(100)).await;
    let mut w = World::new(2);
    w.exec(cid(1), day(0), "am-li", reg("Acme"));
    for i in 0..20u128 {
        w.exec(
            cid(1),
            day(1 + i as i64),
            "am-li",
            touch(i, call(30), &format!("call {i}")),
        );
    }
    h.apply(&w.log).await;
    let originals: Vec<String> = w
        .log
        .iter()
        .map(|(_, e)| e.metadata.id.to_string())
        .collect();
    let world = std::sync::Arc::new(tokio::sync::Mutex::new(w));

    // audit, by recorded time: new events are recorded later, so they are all seen
    let items = {
        let world = world.clone();
        let h = &h;
        paginate_with(h, "/v1/audit", 3, move |n, _| {
            let world = world.clone();
            let n = n as u128;
            async move {
                let mut w = world.lock().await;
                let from = w.log.len();
                w.exec(
                    cid(1),
                    day(100 + n as i64),
                    "am-li",
                    touch(100 + n, call(1), "more"),
                );
                h.apply(&w.log[from..]).await;
            }
        })
        .await
    };
    let got = ids(&items, "event_id");
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "an event was repeated");
    let w = world.lock().await;
    let all: Vec<String> = w
        .log
        .iter()
        .map(|(_, e)| e.metadata.id.to_string())
        .collect();
    drop(w);
    // every event, the ones added between pages too, once and in recorded order
    assert_eq!(got, all);
    assert!(got.len() > originals.len());

    // timeline: a late event (business time before the cursor) is not seen, a new one after is
    let c = cid(1).as_uuid();
    let world2 = world.clone();
    let h2 = &h;
    let late_ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let late_ids2 = late_ids.clone();
    let items = paginate_with(
        &h,
        &format!("/v1/customers/{c}/timeline"),
        4,
        move |n, _| {
            let world = world2.clone();
            let late_ids = late_ids2.clone();
            async move {
                let mut w = world.lock().await;
                let from = w.log.len();
                let late = w.exec_recorded(
                    cid(1),
                    day(0),
                    day(900),
                    "mail-sync",
                    touch(500 + n as u128, email("old"), "late"),
                );
                late_ids
                    .lock()
                    .unwrap()
                    .push(late[0].metadata.id.to_string());
                h2.apply(&w.log[from..]).await;
            }
        },
    )
    .await;
    let got = ids(&items, "event_id");
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len());
    for id in originals {
        assert!(unique.contains(&id), "{id} skipped");
    }
    let late = late_ids.lock().unwrap().clone();
    assert!(
        late.iter().all(|id| !unique.contains(id)),
        "late events land before the cursor"
    );
}

#[tokio::test]
async fn min_position_waits_until_the_checkpoint_reaches_it() {
    let h = std::sync::Arc::new(Harness::new(Duration::from_millis(5000)).await);
    let mut w = World::new(2);
    w.exec(cid(1), day(0), "am-li", reg("Acme"));
    w.exec(cid(2), day(0), "am-li", reg("Beta"));
    h.apply(&w.log).await;
    let from = w.log.len();
    w.exec(
        cid(1),
        day(1),
        "am-li",
        touch(1, call(30), "written, not yet projected"),
    );
    let (pos, _) = w.log.last().unwrap().clone();
    let header = format!("{}:{}:{}", pos.topic, pos.partition, pos.offset);
    let uri = format!("/v1/customers/{}/timeline", cid(1).as_uuid());

    // already reached: answers at once
    let reached = format!("{}:{}:{}", pos.topic, pos.partition, pos.offset - 1);
    let started = Instant::now();
    let a = h.get_with(&uri, &[("crm-min-position", &reached)]).await;
    assert_eq!(a.status, 200);
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(a.json()["items"].as_array().unwrap().len(), 1);

    // not yet: the projector applies the event 400 ms later, during the wait
    let rest = w.log[from..].to_vec();
    let projector = h.clone();
    let apply = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        projector.apply(&rest).await;
    });
    let started = Instant::now();
    let a = h.get_with(&uri, &[("crm-min-position", &header)]).await;
    let waited = started.elapsed();
    apply.await.unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert!(
        waited >= Duration::from_millis(350),
        "answered after {waited:?}, before the write"
    );
    let items = a.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2, "the answer includes the write");
    assert_eq!(items[1]["summary"], "written, not yet projected");
    // several positions: all must be reached
    let other = format!("{}:{}:0", pos.topic, 1 - pos.partition);
    let a = h
        .get_with(&uri, &[("crm-min-position", &format!("{header}, {other}"))])
        .await;
    assert_eq!(a.status, 200);
    let metrics = String::from_utf8(h.get("/metrics").await.body).unwrap();
    assert!(
        metrics.contains("crm_query_position_waits_total{outcome=\"reached\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn min_position_not_reached_in_time_is_503_with_retry_after() {
    let h = Harness::new(Duration::from_millis(300)).await;
    let mut w = World::new(2);
    w.exec(cid(1), day(0), "am-li", reg("Acme"));
    h.apply(&w.log).await;
    let (pos, _) = w.log.last().unwrap().clone();
    for ahead in [
        format!("{}:{}:{}", pos.topic, pos.partition, pos.offset + 1),
        format!("{}:{}:0", pos.topic, pos.partition + 5),
        format!("other-topic:{}:0", pos.partition),
        format!(
            "{}:{}:{}, {}:{}:{}",
            pos.topic,
            pos.partition,
            pos.offset,
            pos.topic,
            pos.partition,
            pos.offset + 1
        ),
    ] {
        let started = Instant::now();
        let a = h
            .get_with("/v1/customers", &[("crm-min-position", &ahead)])
            .await;
        let waited = started.elapsed();
        a.assert_problem(503, "CRM-Min-Position");
        assert_eq!(a.header("retry-after").as_deref(), Some("1"));
        assert!(
            waited >= Duration::from_millis(250),
            "{ahead}: gave up after {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(2000),
            "{ahead}: waited {waited:?}"
        );
        assert!(!a.json()["pending"].as_array().unwrap().is_empty());
    }
    for bad in ["nonsense", "t:1", "t:x:1", "t:1:-5", ":1:1"] {
        h.get_with("/v1/customers", &[("crm-min-position", bad)])
            .await
            .assert_problem(400, "CRM-Min-Position");
    }
}
