//! Test support: a fresh database per test; a world that makes valid event streams with
//! `domain::decide` and lays them out on partitions as a Kafka topic would (as in the
//! projection-service's tests), and the organisation stream (teams) decided the same way; read
//! models filled by the real `Projector`; and a client that calls the query-service router in
//! process, authenticated: as an administrator unless a request says otherwise.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use domain::*;
use infra::Position;
use uuid::Uuid;

pub const TOPIC: &str = "crm.customer-events";

/// A database of its own per test: the test bed's.
pub struct TestDb(crm_tests::db::TestDb);

impl TestDb {
    pub async fn new() -> TestDb {
        TestDb(crm_tests::db::TestDb::new("qs").await)
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
        self.exec_full(customer, at, recorded_at, actor, command, None)
    }

    /// As `exec`, caused by an earlier event (`causation_id` = that event's id).
    pub fn exec_caused_by(
        &mut self,
        customer: CustomerId,
        at: DateTime<Utc>,
        actor: &str,
        command: Command,
        cause: Uuid,
    ) -> Vec<RecordedEvent> {
        self.exec_full(
            customer,
            at,
            at + TimeDelta::seconds(30),
            actor,
            command,
            Some(cause),
        )
    }

    pub fn exec_full(
        &mut self,
        customer: CustomerId,
        at: DateTime<Utc>,
        recorded_at: DateTime<Utc>,
        actor: &str,
        command: Command,
        cause: Option<Uuid>,
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
                causation_id: Some(cause.unwrap_or(command_id)),
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
    region: &str,
    credit: u8,
    satisfaction: u8,
    owner: &str,
) -> Command {
    Command::RegisterCustomer(RegisterCustomer {
        profile: CustomerProfile {
            kind: CustomerKind::Company,
            number: Some(format!("KH-{name}")),
            name: name.into(),
            region: region.into(),
            industry: "manufacturing".into(),
            level,
            credit,
            satisfaction,
            registration: Registration::default(),
        },
        owner: UserId::new(owner),
    })
}

pub fn contact(n: u128, name: &str) -> Command {
    Command::AddContact(AddContact {
        contact_id: ContactId(id(n)),
        contact: ContactDetails {
            name: name.into(),
            gender: None,
            position: Some("buyer".into()),
            office_phone: None,
            mobile: None,
            email: None,
            memo: None,
        },
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

pub fn stage(n: u128, to: Stage) -> Command {
    Command::ChangeStage(ChangeStage {
        opportunity_id: OpportunityId(id(n)),
        to,
        reason: None,
        probability: None,
    })
}

pub fn assign_opp(n: u128, owner: &str) -> Command {
    Command::AssignOpportunity(AssignOpportunity {
        opportunity_id: OpportunityId(id(n)),
        owner: UserId::new(owner),
    })
}

pub fn win(n: u128) -> Command {
    Command::WinOpportunity(WinOpportunity {
        opportunity_id: OpportunityId(id(n)),
        value: None,
    })
}

pub fn lose(n: u128, reason: &str) -> Command {
    Command::LoseOpportunity(LoseOpportunity {
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

// ------------------------------------------------------------------ the organisation stream

/// The partition the organisation stream's records are on in these tests (one the customers'
/// streams of a `World` of at most 4 partitions do not use).
pub const ORG_PARTITION: i32 = 9;

/// The organisation stream (sales teams) decided by the domain, and its records.
pub struct Org {
    pub state: OrganisationState,
    pub log: Vec<(Position, RecordedOrganisationEvent)>,
    offset: i64,
}

impl Default for Org {
    fn default() -> Self {
        Org::new()
    }
}

impl Org {
    pub fn new() -> Org {
        Org {
            state: OrganisationState::new(),
            log: Vec::new(),
            offset: 0,
        }
    }

    /// Decides `command` at business time `at` and appends what it causes.
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

    /// A team named `name` directed by `director`, with `members` (by an administrator).
    pub fn team(&mut self, n: u128, name: &str, director: &str, members: &[&str]) -> TeamId {
        let team_id = team(n);
        self.exec(
            t0(),
            "admin-ma",
            CreateTeam {
                team_id,
                name: name.into(),
            }
            .into(),
        );
        self.exec(
            t0(),
            "admin-ma",
            AssignTeamDirector {
                team_id,
                director: UserId::new(director),
            }
            .into(),
        );
        for m in members {
            self.exec(
                t0(),
                director,
                AddTeamMember {
                    team_id,
                    member: UserId::new(*m),
                }
                .into(),
            );
        }
        team_id
    }

    /// The records as a consumer decodes them.
    pub fn stream(&self) -> Vec<(Position, StreamEvent)> {
        self.log
            .iter()
            .map(|(p, e)| (p.clone(), StreamEvent::Organisation(e.clone())))
            .collect()
    }
}

pub fn team(n: u128) -> TeamId {
    TeamId(Uuid::from_u128(0x7EA0_0000 + n))
}

// ------------------------------------------------------------------ credentials

pub const SECRET: &str = "a-query-service-test-secret-of-32-bytes+";
pub const ISSUER: &str = "https://id.example.com";
pub const AUDIENCE: &str = "crm";
/// API keys: a channel adapter's and an auditing program's.
pub const ADAPTER_KEY: &str = "adapter-key-0123456789abcdef";
pub const AUDITOR_KEY: &str = "auditor-key-0123456789abcdef";

/// The settings of the harness's authenticator: HS256 and RS256 tokens, two API keys.
pub fn auth_args() -> infra::auth::AuthArgs {
    infra::auth::AuthArgs {
        jwt_hs256_secret: Some(SECRET.into()),
        jwt_rs256_public_key: Some(fixture("rs256-test-public.pem")),
        jwt_issuer: Some(ISSUER.into()),
        jwt_audience: Some(AUDIENCE.into()),
        api_keys: Some(format!(
            "{ADAPTER_KEY}=channel-wechat:channel_adapter,{AUDITOR_KEY}=audit-bot:auditor"
        )),
        channel_sources: None,
        auth_disabled: false,
    }
}

/// infra's RSA test keys.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../infra/tests/fixtures")
        .join(name)
}

/// A valid HS256 bearer token for `subject` with `roles`.
pub fn token(subject: &str, roles: &[access::Role]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| r.as_str().to_owned()).collect();
    infra::auth::mint_hs256(
        SECRET.as_bytes(),
        ISSUER,
        AUDIENCE,
        subject,
        &roles,
        Duration::from_secs(600),
    )
    .unwrap()
}

/// The `Authorization` header value of `token(subject, roles)`.
pub fn bearer(subject: &str, roles: &[access::Role]) -> String {
    format!("Bearer {}", token(subject, roles))
}

// ------------------------------------------------------------------ the service under test

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use projection_service::{Projectable, ProjectionVersion, Projector, ReadModels};
use serde_json::Value;
use tower::ServiceExt;

/// A database, the live projection version `rm` v1 with its projector, and the router.
pub struct Harness {
    pub db: TestDb,
    pub projector: Projector,
    pub reads: ReadModels,
    pub router: Router,
}

/// An answer: status, headers, body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// Asserts a problem+json with this status naming `field`.
    pub fn assert_problem(&self, status: u16, field: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        assert_eq!(p["field"], field, "{p}");
    }
}

impl Harness {
    pub async fn new(max_wait: Duration) -> Harness {
        let db = TestDb::new().await;
        let version = ProjectionVersion::new("rm", 1).unwrap();
        let (projector, _) = Projector::open(db.pool.clone(), version.clone())
            .await
            .unwrap();
        let reads = ReadModels::new(db.pool.clone(), &version);
        let auth = infra::auth::Authenticator::from_args(&auth_args()).unwrap();
        let app = query_service::App::new(db.pool.clone(), "rm", max_wait, auth).unwrap();
        let router = query_service::router(app);
        Harness {
            db,
            projector,
            reads,
            router,
        }
    }

    /// Applies events (customers' or the organisation's) through the real projector, in
    /// batches of 7.
    pub async fn apply<E: Projectable + Sync>(&self, log: &[(Position, E)]) {
        for batch in log.chunks(7) {
            self.projector.apply(batch).await.unwrap();
        }
    }

    /// A GET as an administrator, unless `headers` carry credentials (`authorization` or
    /// `x-api-key`) of their own.
    pub async fn get_with(&self, uri: &str, headers: &[(&str, &str)]) -> Answer {
        let own = headers.iter().any(|(k, _)| {
            k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("x-api-key")
        });
        let admin = bearer("admin-ma", &[access::Role::Administrator]);
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !own {
            all.push(("authorization", &admin));
        }
        self.get_raw(uri, &all).await
    }

    /// A GET as `subject` with `roles` (a bearer token).
    pub async fn get_as(&self, uri: &str, subject: &str, roles: &[access::Role]) -> Answer {
        self.get_raw(uri, &[("authorization", &bearer(subject, roles))])
            .await
    }

    /// A GET with exactly these headers (no credentials added).
    pub async fn get_raw(&self, uri: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::get(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.get_with(uri, &[]).await
    }

    /// A 200 JSON answer.
    pub async fn json(&self, uri: &str) -> Value {
        let a = self.get(uri).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{uri}: {}",
            String::from_utf8_lossy(&a.body)
        );
        a.json()
    }

    /// Every item of a paginated list, following `next_cursor` with pages of `limit`.
    pub async fn all_pages(&self, uri: &str, limit: usize) -> Vec<Value> {
        let sep = if uri.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let page_uri = match &cursor {
                Some(c) => format!("{uri}{sep}limit={limit}&cursor={c}"),
                None => format!("{uri}{sep}limit={limit}"),
            };
            let page = self.json(&page_uri).await;
            let got = page["items"].as_array().unwrap();
            assert!(got.len() <= limit);
            items.extend(got.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return items,
            }
        }
        panic!("{uri}: no last page");
    }

    /// The CSV answer, parsed: the header and the records.
    pub async fn csv(&self, uri: &str) -> (Vec<String>, Vec<Vec<String>>) {
        let a = self.get_with(uri, &[("accept", "text/csv")]).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{uri}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert!(a.header("content-type").unwrap().starts_with("text/csv"));
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(a.body.as_slice());
        let header: Vec<String> = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        let records = reader
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect();
        (header, records)
    }

    /// Asserts that the CSV of `uri` has the same rows, in the same order, as its JSON items.
    pub async fn assert_csv_matches_json(&self, uri: &str, items: &[Value]) {
        let (header, records) = self.csv(uri).await;
        assert_eq!(records.len(), items.len(), "{uri}: CSV rows vs JSON items");
        for (record, item) in records.iter().zip(items) {
            let obj = item.as_object().unwrap();
            for (column, cell) in header.iter().zip(record) {
                let expected = match obj.get(column) {
                    None | Some(Value::Null) => String::new(),
                    // text a spreadsheet would run as a formula is prefixed with `'`
                    Some(Value::String(s)) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => {
                        format!("'{s}")
                    }
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) => b.to_string(),
                    Some(other) => other.to_string(),
                };
                assert_eq!(cell, &expected, "{uri}: column {column}");
            }
            // every JSON field is a CSV column
            for key in obj.keys() {
                assert!(header.contains(key), "{uri}: {key} missing from the CSV");
            }
        }
    }
}

/// The ids (field `key`) of a list's items.
pub fn ids(items: &[Value], key: &str) -> Vec<String> {
    items
        .iter()
        .map(|i| i[key].as_str().unwrap().to_owned())
        .collect()
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
