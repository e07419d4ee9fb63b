//! Event streams for tests, decided by the domain: a [`World`] of customer streams that
//! `domain::decide` makes valid and lays out on partitions as a Kafka topic would, the
//! organisation stream ([`Org`], sales teams) decided the same way, and the commands and values
//! the tests build them from ([`register`], [`touch`], [`open_opp`], [`stage`], [`win`], ...).
//! projection-service's and query-service's tests share them (their `tests/common`).
//!
//! Test support: it panics (with the reason) on what a test got wrong, such as a command the
//! domain refuses.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use domain::*;
use infra::Position;
use uuid::Uuid;

/// The customer topic the records' positions name.
pub const TOPIC: &str = "crm.customer-events";

/// A database of its own per test (the test bed's [`crate::db::TestDb`]), named after the test
/// binary that made it (`read_models_<uuid>`, `endpoints_<uuid>`, ...).
pub struct TestDb(crate::db::TestDb);

impl TestDb {
    /// Creates and connects to a fresh database; see [`crate::db::TestDb::new`].
    pub async fn new() -> TestDb {
        TestDb(crate::db::TestDb::new(&binary_prefix()).await)
    }
}

impl std::ops::Deref for TestDb {
    type Target = crate::db::TestDb;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// The running test binary's name without Cargo's hash, as a database-name prefix: lower-case
/// letters, digits and `_`, at most 24 characters; `test` when there is none.
fn binary_prefix() -> String {
    let stem = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let name = stem
        .rsplit_once('-')
        .map_or(stem.as_str(), |(name, _)| name);
    let prefix: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '_',
        })
        .take(24)
        .collect();
    if prefix.starts_with(|c: char| c.is_ascii_lowercase()) {
        prefix
    } else {
        "test".to_owned()
    }
}

/// The tests' first business day: Monday 6 January 2025, 09:00 UTC.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 6, 9, 0, 0)
        .single()
        .expect("a valid time")
}

/// `n` days after [`t0`].
pub fn day(n: i64) -> DateTime<Utc> {
    t0() + TimeDelta::days(n)
}

/// A calendar date; panics on one that does not exist.
pub fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("a valid date")
}

/// Customer `n`.
pub fn cid(n: u128) -> CustomerId {
    CustomerId(Uuid::from_u128(0xC000_0000 + n))
}

/// The id of entity `n` of a customer (touchpoint, contact, opportunity, ...).
pub fn id(n: u128) -> Uuid {
    Uuid::from_u128(0xE000_0000 + n)
}

/// `amount` fen (minor units) of CNY.
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
    /// No streams yet; customers go to the partitions in turn, in the order they first appear.
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

    /// As `exec`, with an explicit recorded-at and cause (`None`: the command itself).
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

    /// The partition of `customer`'s stream (0 before it has one).
    pub fn partition_of(&self, customer: CustomerId) -> i32 {
        self.partition_of.get(&customer).copied().unwrap_or(0)
    }
}

/// Registers a manufacturing company `name` (number `KH-<name>`, an office phone) in `region`,
/// owned by `owner`.
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
            registration: Registration {
                phone: Some("021-555".into()),
                ..Registration::default()
            },
        },
        owner: UserId::new(owner),
    })
}

/// Adds contact `n` (a buyer) named `name`.
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

/// Records touchpoint `n` on `channel`.
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

/// An outbound e-mail.
pub fn email(subject: &str) -> Channel {
    Channel::Email {
        direction: Direction::Outbound,
        subject: subject.into(),
    }
}

/// An answered inbound call of `seconds` (after 12 s of waiting).
pub fn call(seconds: u32) -> Channel {
    Channel::PhoneCall {
        direction: Direction::Inbound,
        duration_seconds: seconds,
        wait_seconds: 12,
        outcome: CallOutcome::Answered,
    }
}

/// Opens opportunity `n` ("deal n", from a referral) worth `amount`.
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

/// Moves opportunity `n` to stage `to`, with an optional reason and new probability.
pub fn stage(n: u128, to: Stage, reason: Option<&str>, probability: Option<u8>) -> Command {
    Command::ChangeStage(ChangeStage {
        opportunity_id: OpportunityId(id(n)),
        to,
        reason: reason.map(str::to_owned),
        probability,
    })
}

/// Assigns opportunity `n` to `owner`.
pub fn assign_opp(n: u128, owner: &str) -> Command {
    Command::AssignOpportunity(AssignOpportunity {
        opportunity_id: OpportunityId(id(n)),
        owner: UserId::new(owner),
    })
}

/// Wins opportunity `n`, at `value` when given (else at its value).
pub fn win(n: u128, value: Option<i64>) -> Command {
    Command::WinOpportunity(WinOpportunity {
        opportunity_id: OpportunityId(id(n)),
        value: value.map(money),
    })
}

/// Loses opportunity `n` for `reason`.
pub fn lose(n: u128, reason: &str) -> Command {
    Command::LoseOpportunity(LoseOpportunity {
        opportunity_id: OpportunityId(id(n)),
        reason: reason.into(),
    })
}

/// Reopens the closed opportunity `n` for `reason`.
pub fn reopen(n: u128, reason: &str) -> Command {
    Command::ReopenOpportunity(ReopenOpportunity {
        opportunity_id: OpportunityId(id(n)),
        reason: reason.into(),
    })
}

/// Places order `number`: one widget at `amount`.
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
/// streams of a `World` of at most 9 partitions do not use).
pub const ORG_PARTITION: i32 = 9;

/// The organisation stream (sales teams) decided by the domain, and its records.
pub struct Org {
    pub state: OrganisationState,
    /// The offset of the next record on [`ORG_PARTITION`].
    pub offset: i64,
    pub log: Vec<(Position, RecordedOrganisationEvent)>,
}

impl Default for Org {
    fn default() -> Self {
        Org::new()
    }
}

impl Org {
    /// No teams yet.
    pub fn new() -> Org {
        Org {
            state: OrganisationState::new(),
            offset: 0,
            log: Vec::new(),
        }
    }

    /// Decides `command` at business time `at` (recorded 1 s later) and appends what it
    /// causes.
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

    /// Team `n` named `name`, directed by `director`, with `members` (by an administrator, at
    /// [`t0`]).
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

/// Team `n`.
pub fn team(n: u128) -> TeamId {
    TeamId(Uuid::from_u128(0x7EA0_0000 + n))
}
