//! Test support: a fresh database per test, and a world that makes valid event streams with
//! `domain::decide` and lays them out on partitions as a Kafka topic would.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use domain::*;
use infra::Position;
use sqlx::PgPool;
use uuid::Uuid;

pub const TOPIC: &str = "crm.customer-events";

/// A database of its own per test: the test bed's.
pub struct TestDb(crm_tests::db::TestDb);

impl TestDb {
    pub async fn new() -> TestDb {
        TestDb(crm_tests::db::TestDb::new("proj").await)
    }
}

impl std::ops::Deref for TestDb {
    type Target = crm_tests::db::TestDb;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 6, 9, 0, 0).single().unwrap()
}

pub fn day(n: i64) -> DateTime<Utc> {
    t0() + TimeDelta::days(n)
}

pub fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

pub fn cid(n: u128) -> CustomerId {
    CustomerId(Uuid::from_u128(0xC000_0000 + n))
}

pub fn id(n: u128) -> Uuid {
    Uuid::from_u128(0xE000_0000 + n)
}

pub fn money(amount: i64) -> Money {
    Money {
        amount,
        currency: "CNY".into(),
    }
}

/// Customer streams decided by the domain, appended to a topic of `partitions` partitions.
pub struct World {
    pub states: BTreeMap<CustomerId, CustomerState>,
    /// Every record in append order, with its position.
    pub log: Vec<(Position, RecordedEvent)>,
    partitions: i32,
    next_offset: BTreeMap<i32, i64>,
    partition_of: BTreeMap<CustomerId, i32>,
}

impl World {
    pub fn new(partitions: i32) -> World {
        World {
            states: BTreeMap::new(),
            log: Vec::new(),
            partitions,
            next_offset: BTreeMap::new(),
            partition_of: BTreeMap::new(),
        }
    }

    /// Decides `command` for `customer` at business time `at` (recorded 30 s later) and
    /// appends what it causes.
    pub fn exec(
        &mut self,
        customer: CustomerId,
        at: DateTime<Utc>,
        actor: &str,
        command: Command,
    ) -> Vec<RecordedEvent> {
        self.exec_recorded(customer, at, at + TimeDelta::seconds(30), actor, command)
    }

    /// As `exec`, with an explicit recorded-at (a late event: recorded long after it happened).
    pub fn exec_recorded(
        &mut self,
        customer: CustomerId,
        at: DateTime<Utc>,
        recorded_at: DateTime<Utc>,
        actor: &str,
        command: Command,
    ) -> Vec<RecordedEvent> {
        let n = self.partition_of.len() as i32;
        let partitions = self.partitions;
        let partition = *self.partition_of.entry(customer).or_insert(n % partitions);
        let state = self
            .states
            .entry(customer)
            .or_insert_with(|| CustomerState::new(customer))
            .clone();
        let events =
            decide(&state, &command).unwrap_or_else(|e| panic!("{} refused: {e}", command.name()));
        let correlation_id = Uuid::now_v7();
        let command_id = Uuid::now_v7();
        let mut state = state;
        let mut out = Vec::new();
        for event in events {
            let metadata = EventMetadata {
                id: Uuid::now_v7(),
                source: "/test".into(),
                customer_id: customer,
                sequence: state.next_sequence(),
                actor: actor.into(),
                command: Some(command.name().into()),
                command_id: Some(command_id.to_string()),
                command_fingerprint: None,
                correlation_id,
                causation_id: Some(command_id),
                occurred_at: at,
                recorded_at,
            };
            state = evolve(state, &event);
            let offset = self.next_offset.entry(partition).or_insert(0);
            let position = Position {
                topic: TOPIC.into(),
                partition,
                offset: *offset,
            };
            *offset += 1;
            let rec = RecordedEvent { metadata, event };
            self.log.push((position, rec.clone()));
            out.push(rec);
        }
        self.states.insert(customer, state);
        out
    }

    pub fn partition_of(&self, customer: CustomerId) -> i32 {
        self.partition_of.get(&customer).copied().unwrap_or(0)
    }
}

pub fn register(
    level: CustomerLevel,
    name: &str,
    credit: u8,
    satisfaction: u8,
    owner: &str,
) -> Command {
    Command::RegisterCustomer(RegisterCustomer {
        profile: CustomerProfile {
            kind: CustomerKind::Company,
            number: Some(format!("KH-{name}")),
            name: name.into(),
            region: "华东".into(),
            industry: "manufacturing".into(),
            level,
            credit,
            satisfaction,
            registration: Registration {
                phone: Some("021-555".into()),
                ..Registration::default()
            },
        },
        owner: UserId::new(owner),
    })
}

pub fn touch(n: u128, channel: Channel, summary: &str) -> Command {
    Command::RecordTouchpoint(RecordTouchpoint {
        touchpoint_id: TouchpointId(id(n)),
        touchpoint: Touchpoint {
            channel,
            summary: summary.into(),
            contact_id: None,
            opportunity_id: None,
        },
    })
}

pub fn email(subject: &str) -> Channel {
    Channel::Email {
        direction: Direction::Outbound,
        subject: subject.into(),
    }
}

pub fn call(seconds: u32) -> Channel {
    Channel::PhoneCall {
        direction: Direction::Inbound,
        duration_seconds: seconds,
        wait_seconds: 12,
        outcome: CallOutcome::Answered,
    }
}

pub fn open_opp(n: u128, amount: i64, probability: u8, expected_close: NaiveDate) -> Command {
    Command::OpenOpportunity(OpenOpportunity {
        opportunity_id: OpportunityId(id(n)),
        source: "referral".into(),
        title: format!("deal {n}"),
        value: money(amount),
        probability,
        expected_close,
        contact_id: None,
        description: None,
    })
}

pub fn stage(n: u128, to: Stage, reason: Option<&str>, probability: Option<u8>) -> Command {
    Command::ChangeStage(ChangeStage {
        opportunity_id: OpportunityId(id(n)),
        to,
        reason: reason.map(str::to_owned),
        probability,
    })
}

pub fn assign_opp(n: u128, owner: &str) -> Command {
    Command::AssignOpportunity(AssignOpportunity {
        opportunity_id: OpportunityId(id(n)),
        owner: UserId::new(owner),
    })
}

pub fn win(n: u128, value: Option<i64>) -> Command {
    Command::WinOpportunity(WinOpportunity {
        opportunity_id: OpportunityId(id(n)),
        value: value.map(money),
    })
}

pub fn lose(n: u128, reason: &str) -> Command {
    Command::LoseOpportunity(LoseOpportunity {
        opportunity_id: OpportunityId(id(n)),
        reason: reason.into(),
    })
}

pub fn reopen(n: u128, reason: &str) -> Command {
    Command::ReopenOpportunity(ReopenOpportunity {
        opportunity_id: OpportunityId(id(n)),
        reason: reason.into(),
    })
}

pub fn order(number: &str, amount: i64) -> Command {
    Command::PlaceOrder(PlaceOrder {
        order_number: OrderNumber(number.into()),
        lines: vec![OrderLine {
            product: "widget".into(),
            quantity: 1,
            unit_price: amount,
        }],
        total: money(amount),
        delivery_address: None,
    })
}

/// Splits the log into batches of the given sizes (cycled), as a consumer would poll them.
pub fn batches(
    log: &[(Position, RecordedEvent)],
    sizes: &[usize],
) -> Vec<Vec<(Position, RecordedEvent)>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < log.len() {
        let n = sizes[k % sizes.len()].max(1);
        out.push(log[i..(i + n).min(log.len())].to_vec());
        i += n;
        k += 1;
    }
    out
}

/// Every read-model table of a schema that a rebuild reproduces (the registry's), as text,
/// for comparing two versions or two moments.
pub async fn snapshot(pool: &PgPool, schema: &str) -> BTreeMap<String, String> {
    let tables = projection_service::read_models::tables();
    let mut out = BTreeMap::new();
    for table in tables {
        let (text,): (String,) = sqlx::query_as(&format!(
            "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM {schema}.{table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.insert(table.to_owned(), text);
    }
    out
}

/// As [`snapshot`], less the tables whose rows depend on when a replay ran, not on the log:
/// RFM (recomputed as of now) and stage alerts (opened by the sweep).
pub async fn projected_facts(pool: &PgPool, schema: &str) -> BTreeMap<String, String> {
    let mut facts = snapshot(pool, schema).await;
    for t in ["rfm", "rfm_runs", "stage_alerts"] {
        facts.remove(t);
    }
    facts
}

/// Replays the whole log of `source` into version `version` of projection `rm` from offset
/// zero, to its end, in batches of `batch`; activates it when told to.
pub async fn replay_into(
    pool: &PgPool,
    source: projection_service::EventSource,
    version: i32,
    batch: projection_service::BatchOptions,
    activate: bool,
) -> projection_service::ReplayOutcome {
    projection_service::replay_on(
        pool.clone(),
        source,
        projection_service::ReplayOptions {
            projection: "rm".into(),
            version,
            batch,
            activate,
            catch_up_lag: 0,
            jobs: projection_service::JobOptions::default(),
        },
        std::sync::Arc::new(projection_service::SystemClock),
        projection_service::Metrics::new().unwrap(),
        |_| {},
    )
    .await
    .unwrap()
}

/// Asserts two snapshots are equal, naming the tables that differ.
pub fn assert_same(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, what: &str) {
    let differ: Vec<&String> = a.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
    assert!(differ.is_empty(), "{what}: tables differ: {differ:?}");
}

// ------------------------------------------------------------------ the organisation stream

/// The partition the organisation stream lives on in these tests (any one the customers'
/// streams do not use).
pub const ORG_PARTITION: i32 = 7;

/// The organisation stream decided by the domain, and its records.
pub struct Org {
    pub state: OrganisationState,
    pub offset: i64,
    pub log: Vec<(Position, RecordedOrganisationEvent)>,
}

impl Org {
    pub fn new() -> Org {
        Org {
            state: OrganisationState::new(),
            offset: 0,
            log: Vec::new(),
        }
    }

    pub fn exec(&mut self, at: DateTime<Utc>, actor: &str, command: OrganisationCommand) {
        let events = decide_organisation(&self.state, &command)
            .unwrap_or_else(|e| panic!("{} refused: {e}", command.name()));
        let correlation_id = Uuid::now_v7();
        for event in events {
            let metadata = EventMetadata {
                id: Uuid::now_v7(),
                source: "/test".into(),
                customer_id: organisation_stream(),
                sequence: self.state.next_sequence(),
                actor: actor.into(),
                command: Some(command.name().into()),
                command_id: None,
                command_fingerprint: None,
                correlation_id,
                causation_id: None,
                occurred_at: at,
                recorded_at: at + TimeDelta::seconds(1),
            };
            self.state = evolve_organisation(self.state.clone(), &event);
            let position = Position {
                topic: TOPIC.into(),
                partition: ORG_PARTITION,
                offset: self.offset,
            };
            self.offset += 1;
            self.log
                .push((position, RecordedOrganisationEvent { metadata, event }));
        }
    }
}

pub fn team(n: u128) -> TeamId {
    TeamId(Uuid::from_u128(0x7EA0_0000 + n))
}

/// A projection-service process (its binary), killed when dropped, so that a failing test
/// leaves none behind. Its output is appended to `log`.
pub struct ProjectionProcess(std::process::Child);

impl ProjectionProcess {
    /// Starts `projection-service <args>` on the settings' broker and topics and on
    /// `database_url`, with small batches and a short session timeout.
    pub fn spawn(
        s: &infra::kafka::KafkaSettings,
        database_url: &str,
        log: &std::path::Path,
        args: &[&str],
    ) -> ProjectionProcess {
        use std::process::Stdio;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_projection-service"))
            .args(args)
            .args(["--kafka-brokers", s.brokers.as_str()])
            .args(["--topic-prefix", s.topic_prefix.as_str()])
            .args(["--partitions", &s.partitions.to_string()])
            .args(["--database-url", database_url])
            .args(["--batch-max", "100", "--batch-wait", "50ms"])
            .args(["--session-timeout-ms", "3000"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .map(ProjectionProcess)
            .unwrap()
    }

    /// SIGKILL, and waits for it.
    pub fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for ProjectionProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// command-service on `log`, with authentication off (every caller an administrator) and the
/// default business-time window; `source` is the events' CloudEvents source.
pub fn command_app(
    source: &str,
    log: std::sync::Arc<dyn infra::log::CustomerLog>,
) -> std::sync::Arc<command_service::App> {
    let auth = infra::auth::Authenticator::from_args(&infra::auth::AuthArgs {
        auth_disabled: true,
        ..infra::auth::AuthArgs::default()
    })
    .unwrap();
    command_service::App::new(
        log,
        source.into(),
        auth,
        domain::limits::BusinessTimeWindow::default(),
    )
    .unwrap()
}

/// Waits until `check` holds; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
