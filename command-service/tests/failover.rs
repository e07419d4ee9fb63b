#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Two command-service processes on one broker: partitions move between them when one stops,
//! is killed, or hangs; the old owner can append nothing more, and every acknowledged command
//! is in the log exactly once.

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crm_tests::{unique_prefix, KafkaBroker};
use domain::RecordedEvent;
use infra::kafka::{read_partition, KafkaSettings};
use serde_json::{json, Value};

const PARTITIONS: i32 = 4;

struct Instance {
    child: Child,
    base: String,
}

impl Instance {
    fn spawn(brokers: &str, prefix: &str) -> Instance {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("{prefix}{port}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_command-service"))
            .env("KAFKA_BROKERS", brokers)
            .env("CRM_TOPIC_PREFIX", prefix)
            .env("CRM_PARTITIONS", PARTITIONS.to_string())
            .env("CRM_COMMAND_LISTEN", format!("127.0.0.1:{port}"))
            .env("CRM_KAFKA_SESSION_TIMEOUT_MS", "6000")
            // about fail-over, not identity (command-service/tests/access.rs is)
            .env("CRM_AUTH_DISABLED", "true")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Instance {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn partitions(&self, client: &reqwest::Client) -> Option<Vec<i32>> {
        let r = client
            .get(format!("{}/readyz", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: Value = r.json().await.ok()?;
        serde_json::from_value(v["partitions"].clone()).ok()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the instances together own every partition, each owning the given share.
async fn wait_for_owners(client: &reqwest::Client, instances: &[&Instance], all_on_each: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut owned = Vec::new();
        for i in instances {
            owned.push(i.partitions(client).await.unwrap_or_default());
        }
        let union: BTreeSet<i32> = owned.iter().flatten().copied().collect();
        let disjoint = owned.iter().map(Vec::len).sum::<usize>() == union.len();
        let done = union.len() == PARTITIONS as usize
            && disjoint
            && (!all_on_each || owned.iter().all(|o| o.len() == PARTITIONS as usize))
            && owned.iter().all(|o| !o.is_empty());
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions never settled: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn register(n: usize) -> Value {
    json!({"profile": {"kind": "company", "name": format!("客户 {n}"), "region": "华北", "industry": "retail",
           "level": "ordinary", "credit": 3, "satisfaction": 3}, "owner": "am-li"})
}

/// Sends a command to `first`, then to the others, until one acknowledges it or the deadline
/// passes. Returns whether it was acknowledged.
async fn deliver(
    client: &reqwest::Client,
    order: &[&str],
    path: &str,
    key: &str,
    body: &Value,
) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(45);
    while Instant::now() < deadline {
        for base in order {
            let sent = client
                .post(format!("{base}{path}"))
                .header("idempotency-key", key)
                .json(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            if let Ok(r) = sent {
                if r.status().is_success() {
                    return r.json().await.ok();
                }
                assert!(
                    r.status().as_u16() == 503,
                    "{path}: unexpected {}",
                    r.status()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

async fn log(settings: &KafkaSettings) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    for p in 0..PARTITIONS {
        for r in read_partition(settings, &settings.topics().customer_events(), p, 0)
            .await
            .unwrap()
        {
            events.push(r.decode().unwrap());
        }
    }
    events
}

fn check_exactly_once(events: &[RecordedEvent], acknowledged: &[String]) {
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for e in events {
        if let Some(k) = &e.metadata.command_id {
            *by_key.entry(k.as_str()).or_default() += 1;
        }
    }
    for k in acknowledged {
        assert_eq!(
            by_key.get(k.as_str()),
            Some(&1),
            "acknowledged command {k} must be in the log exactly once"
        );
    }
    assert!(
        by_key.values().all(|&n| n == 1),
        "no command appended twice"
    );
    let mut per_customer: HashMap<_, Vec<u64>> = HashMap::new();
    for e in events {
        per_customer
            .entry(e.metadata.customer_id)
            .or_default()
            .push(e.metadata.sequence);
    }
    for (c, seqs) in per_customer {
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "customer {c}"
        );
    }
}

#[tokio::test]
async fn partitions_move_when_an_instance_is_killed_and_nothing_is_lost_or_doubled() {
    let broker = KafkaBroker::start();
    let prefix = unique_prefix("failover-kill");
    let mut settings = KafkaSettings::new(broker.brokers(), prefix.clone());
    settings.partitions = PARTITIONS;
    let client = reqwest::Client::new();

    let a = Instance::spawn(broker.brokers(), &prefix);
    wait_for_owners(&client, &[&a], true).await;
    let mut customers = Vec::new();
    let mut acknowledged = Vec::new();
    for n in 0..8 {
        let key = format!("register-{n}");
        let v = deliver(&client, &[&a.base], "/v1/customers", &key, &register(n))
            .await
            .unwrap();
        customers.push(v["customer_id"].as_str().unwrap().to_owned());
        acknowledged.push(key);
    }
    let b = Instance::spawn(broker.brokers(), &prefix);
    wait_for_owners(&client, &[&a, &b], false).await;

    let touchpoint = json!({"touchpoint": {"channel": {"kind": "web_form"}, "summary": "visit"}});
    for i in 0..120 {
        if i == 60 {
            a.signal("KILL");
        }
        let c = &customers[i % customers.len()];
        let key = format!("tp-{i}");
        let order = if i % 2 == 0 {
            [a.base.as_str(), b.base.as_str()]
        } else {
            [b.base.as_str(), a.base.as_str()]
        };
        if deliver(
            &client,
            &order,
            &format!("/v1/customers/{c}/touchpoints"),
            &key,
            &touchpoint,
        )
        .await
        .is_some()
        {
            acknowledged.push(key);
        }
    }
    // after the kill, B owns everything
    assert_eq!(
        b.partitions(&client).await.unwrap(),
        (0..PARTITIONS).collect::<Vec<_>>()
    );
    assert!(
        acknowledged.len() > 100,
        "most commands acknowledged: {}",
        acknowledged.len()
    );
    check_exactly_once(&log(&settings).await, &acknowledged);
}

#[tokio::test]
async fn a_hung_owner_is_fenced_when_it_wakes_up() {
    let broker = KafkaBroker::start();
    let prefix = unique_prefix("failover-zombie");
    let mut settings = KafkaSettings::new(broker.brokers(), prefix.clone());
    settings.partitions = PARTITIONS;
    let client = reqwest::Client::new();

    let a = Instance::spawn(broker.brokers(), &prefix);
    wait_for_owners(&client, &[&a], true).await;
    let v = deliver(
        &client,
        &[&a.base],
        "/v1/customers",
        "register",
        &register(1),
    )
    .await
    .unwrap();
    let c = v["customer_id"].as_str().unwrap().to_owned();

    // A hangs; B takes every partition over (after A's session times out) and fences A.
    a.signal("STOP");
    let b = Instance::spawn(broker.brokers(), &prefix);
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.partitions(&client).await.map(|p| p.len()) != Some(PARTITIONS as usize) {
        assert!(Instant::now() < deadline, "B never took over");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let touchpoint = json!({"touchpoint": {"channel": {"kind": "web_form"}, "summary": "visit"}});
    let by_b = deliver(
        &client,
        &[&b.base],
        &format!("/v1/customers/{c}/touchpoints"),
        "by-b",
        &touchpoint,
    )
    .await;
    assert!(by_b.is_some());

    // A wakes up still believing it owns the customer: its append must be refused.
    a.signal("CONT");
    let r = client
        .post(format!("{}/v1/customers/{c}/touchpoints", a.base))
        .header("idempotency-key", "by-zombie")
        .json(&touchpoint)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503, "a fenced owner cannot append");

    let events: Vec<RecordedEvent> = log(&settings)
        .await
        .into_iter()
        .filter(|e| e.metadata.customer_id.to_string() == c)
        .collect();
    assert_eq!(events.len(), 2, "registration and B's change only");
    assert_eq!(events[1].metadata.command_id.as_deref(), Some("by-b"));
    check_exactly_once(&events, &["register".into(), "by-b".into()]);
}

/// The broker dies (SIGKILL, its persistent engine kept) in the middle of a load and comes
/// back two seconds later: clients retry with their idempotency keys through the outage,
/// every command is acknowledged in the end, and each is in the log exactly once, in
/// sequence.
///
/// It found a defect, now fixed: on one run in three a partition's writer failed after the
/// restart; command-service gave the partition up while the group still assigned it to the
/// instance, so no rebalance ever gave it back, and every command for a customer of that
/// partition answered 503 `not-owner` until each client gave up. The owner now takes such a
/// partition back (`follow_ownership`; the next test shows it deterministically).
#[tokio::test]
async fn a_broker_restart_mid_load_loses_and_doubles_nothing() {
    let dir = std::env::temp_dir().join(unique_prefix("failover-broker"));
    let mut broker = KafkaBroker::start_persistent(&dir);
    let prefix = unique_prefix("failover-broker");
    let mut settings = KafkaSettings::new(broker.brokers(), prefix.clone());
    settings.partitions = PARTITIONS;
    let client = reqwest::Client::new();

    let a = Instance::spawn(broker.brokers(), &prefix);
    wait_for_owners(&client, &[&a], true).await;
    let mut customers = Vec::new();
    let mut acknowledged = Vec::new();
    for n in 0..8 {
        let key = format!("register-{n}");
        let v = deliver(&client, &[&a.base], "/v1/customers", &key, &register(n))
            .await
            .unwrap();
        customers.push(v["customer_id"].as_str().unwrap().to_owned());
        acknowledged.push(key);
    }
    let touchpoint = json!({"touchpoint": {"channel": {"kind": "web_form"}, "summary": "visit"}});
    let mut lost = Vec::new();
    for i in 0..120 {
        if i == 60 {
            broker.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            broker.restart();
        }
        let c = &customers[i % customers.len()];
        let key = format!("tp-{i}");
        match deliver(
            &client,
            &[a.base.as_str()],
            &format!("/v1/customers/{c}/touchpoints"),
            &key,
            &touchpoint,
        )
        .await
        {
            Some(_) => acknowledged.push(key),
            None => lost.push(key),
        }
    }
    assert!(
        lost.is_empty(),
        "never acknowledged through the restart: {lost:?}"
    );
    check_exactly_once(&log(&settings).await, &acknowledged);
    drop(a);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A partition's writer dies while the group still assigns the partition to its owner (here
/// the test opens another writer of the same partition, which fences it, as a broker restart
/// can leave it unusable): the command that meets the dead writer is answered 503 and
/// appends nothing, and the owner takes the partition back on its own (a fresh writer, the
/// history re-read), so that the client's retry is acknowledged, once.
#[tokio::test]
async fn a_partition_whose_writer_died_is_taken_back_by_its_owner() {
    use infra::log::{CustomerLog, KafkaCustomerLog};
    let broker = KafkaBroker::start();
    let prefix = unique_prefix("failover-retake");
    let mut settings = KafkaSettings::new(broker.brokers(), prefix.clone());
    settings.partitions = PARTITIONS;
    let client = reqwest::Client::new();

    let a = Instance::spawn(broker.brokers(), &prefix);
    wait_for_owners(&client, &[&a], true).await;
    let v = deliver(
        &client,
        &[&a.base],
        "/v1/customers",
        "register",
        &register(1),
    )
    .await
    .unwrap();
    let c = v["customer_id"].as_str().unwrap().to_owned();
    let partition = infra::kafka::partition_for(c.as_bytes(), PARTITIONS);

    let intruder = KafkaCustomerLog {
        settings: settings.clone(),
    }
    .open_writer(partition)
    .await
    .unwrap();
    let touchpoint = json!({"touchpoint": {"channel": {"kind": "web_form"}, "summary": "visit"}});
    let path = format!("/v1/customers/{c}/touchpoints");
    let r = client
        .post(format!("{}{path}", a.base))
        .header("idempotency-key", "after-the-fence")
        .json(&touchpoint)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503, "the dead writer appends nothing");
    drop(intruder);

    let started = Instant::now();
    let retried = deliver(&client, &[&a.base], &path, "after-the-fence", &touchpoint).await;
    assert!(retried.is_some(), "the partition was never taken back");
    eprintln!(
        "partition {partition} taken back within {:?}",
        started.elapsed()
    );
    assert_eq!(
        a.partitions(&client).await,
        Some((0..PARTITIONS).collect::<Vec<_>>())
    );
    let events: Vec<RecordedEvent> = log(&settings)
        .await
        .into_iter()
        .filter(|e| e.metadata.customer_id.to_string() == c)
        .collect();
    assert_eq!(
        events.len(),
        2,
        "the registration and the retried touchpoint"
    );
    check_exactly_once(&events, &["register".into(), "after-the-fence".into()]);
}
