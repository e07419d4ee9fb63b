//! Every read model against a reference computed here, independently, from the same events;
//! batches with overlaps and redeliveries; a late event; RFM with ties; a rebuild into a new
//! version that equals the live one, and the switch-over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use common::*;
use domain::policy::rfm::RfmWindow;
use domain::policy::ChurnRule;
use domain::*;
use infra::Position;
use projection_service::{
    activate, drop_version, live_version, ProjectionVersion, Projector, ReadModels, VersionStatus,
};
use uuid::Uuid;

/// (recency days, frequency, monetary, R, F, M, segment)
type RfmRef = (i64, i64, i64, u8, u8, u8, String);
/// (customer, status, measures, confirmed reason)
type CaseRef = (Uuid, String, Vec<String>, Option<String>);
type Plan = Vec<(
    DateTime<Utc>,
    DateTime<Utc>,
    CustomerId,
    &'static str,
    Command,
)>;

/// The late touchpoint: happened on day 45, recorded on day 60.
const LATE_TOUCHPOINT: u128 = 504;

fn scenario() -> World {
    let mut plan: Plan = Vec::new();
    let mut at = |d: i64, c: u128, actor: &'static str, cmd: Command| {
        plan.push((day(d), day(d), cid(c), actor, cmd))
    };
    use CustomerLevel::*;
    at(1, 1, "am-li", register(Key, "Acme", "华东", 5, 4, "am-li"));
    at(
        2,
        2,
        "am-li",
        register(Ordinary, "Beta", "华东", 3, 3, "am-li"),
    );
    at(
        3,
        3,
        "am-wang",
        register(Large, "Gamma", "华东", 4, 5, "am-wang"),
    );
    at(
        4,
        4,
        "am-wang",
        register(StrategicPartner, "Delta", "华东", 5, 5, "am-wang"),
    );
    at(
        5,
        5,
        "am-zhao",
        register(Ordinary, "Epsilon", "华东", 2, 2, "am-zhao"),
    );
    at(
        6,
        6,
        "am-zhao",
        register(Ordinary, "Zeta", "华东", 3, 2, "am-zhao"),
    );
    at(7, 7, "am-li", register(Large, "Eta", "华东", 4, 4, "am-li"));
    at(
        8,
        8,
        "am-li",
        register(Large, "Theta", "华东", 4, 4, "am-li"),
    );
    at(
        9,
        9,
        "am-li",
        register(Ordinary, "Iota", "华东", 1, 3, "am-li"),
    );

    let contact = |n: u128, name: &str, email: Option<&str>| {
        Command::AddContact(AddContact {
            contact_id: ContactId(id(n)),
            contact: ContactDetails {
                name: name.into(),
                gender: Some(Gender::Female),
                position: Some("buyer".into()),
                office_phone: None,
                mobile: None,
                email: email.map(str::to_owned),
                memo: None,
            },
        })
    };
    at(2, 1, "am-li", contact(401, "张三", Some("zs@acme.cn")));
    at(3, 1, "am-li", contact(402, "李四", None));
    at(4, 3, "am-wang", contact(403, "王五", None));
    at(
        5,
        1,
        "am-li",
        Command::ChangeContact(ChangeContact {
            contact_id: ContactId(id(401)),
            changes: ContactChanges {
                mobile: Some("138".into()),
                ..ContactChanges::default()
            },
        }),
    );
    at(
        8,
        1,
        "am-li",
        Command::RemoveContact(RemoveContact {
            contact_id: ContactId(id(402)),
        }),
    );

    // opportunities
    at(
        10,
        1,
        "dir-zhou",
        open_opp(101, 300_000, 20, date(2025, 3, 31)),
    );
    at(11, 1, "dir-zhou", assign_opp(101, "am-li"));
    at(15, 1, "am-li", stage(101, Stage::Proposal, None, Some(40)));
    at(30, 1, "am-li", stage(101, Stage::Evaluation, None, None));
    at(
        40,
        1,
        "am-li",
        stage(101, Stage::Negotiation, None, Some(70)),
    );
    at(55, 1, "am-li", win(101, Some(320_000)));
    at(
        12,
        2,
        "dir-zhou",
        open_opp(102, 80_000, 10, date(2025, 4, 30)),
    );
    at(20, 2, "am-li", stage(102, Stage::Proposal, None, None));
    at(
        25,
        2,
        "am-li",
        stage(102, Stage::Qualification, Some("budget cut"), Some(5)),
    );
    at(33, 2, "am-li", lose(102, "no budget"));
    at(
        14,
        3,
        "dir-zhou",
        open_opp(103, 150_000, 30, date(2025, 5, 31)),
    );
    at(14, 3, "dir-zhou", assign_opp(103, "am-wang"));
    at(
        16,
        4,
        "dir-zhou",
        open_opp(104, 1_000_000, 50, date(2025, 6, 30)),
    );
    at(18, 4, "am-wang", stage(104, Stage::Proposal, None, None));
    at(25, 4, "am-wang", stage(104, Stage::Evaluation, None, None));
    at(
        35,
        4,
        "am-wang",
        stage(104, Stage::Negotiation, None, Some(80)),
    );
    at(45, 4, "am-wang", lose(104, "competitor"));
    at(
        60,
        4,
        "am-wang",
        reopen(104, "competitor failed to deliver"),
    );
    at(75, 4, "am-wang", win(104, None));
    at(
        20,
        5,
        "dir-zhou",
        open_opp(105, 40_000, 60, date(2025, 3, 31)),
    );
    at(22, 5, "am-zhao", stage(105, Stage::Proposal, None, None));
    at(
        100,
        1,
        "dir-zhou",
        open_opp(106, 200_000, 25, date(2025, 5, 31)),
    );
    at(100, 1, "dir-zhou", assign_opp(106, "am-zhao"));
    at(110, 1, "am-zhao", stage(106, Stage::Proposal, None, None));

    // touchpoints (the late one is added below)
    at(13, 1, "am-li", touch(501, email("offer"), "sent the offer"));
    at(
        16,
        1,
        "cc-agent",
        touch(502, call(300), "asked about delivery"),
    );
    at(
        40,
        1,
        "am-li",
        touch(
            503,
            Channel::Visit {
                place: "Shanghai".into(),
            },
            "site visit",
        ),
    );
    at(
        20,
        2,
        "am-li",
        touch(
            505,
            Channel::Wechat {
                direction: Direction::Inbound,
            },
            "price question",
        ),
    );
    at(15, 3, "cc-agent", touch(506, call(120), "first call"));
    at(100, 3, "cc-agent", touch(507, call(60), "follow-up"));
    at(
        17,
        4,
        "web",
        touch(
            508,
            Channel::WebForm {
                form: Some("contact".into()),
            },
            "web enquiry",
        ),
    );
    at(
        21,
        5,
        "am-zhao",
        touch(
            509,
            Channel::FaxLetter {
                direction: Direction::Outbound,
            },
            "catalogue",
        ),
    );

    // service requests and complaints
    let sr = |n: u128| ServiceRequestId(id(n));
    at(
        26,
        2,
        "cs-chen",
        Command::CreateServiceRequest(CreateServiceRequest {
            service_request_id: sr(201),
            kind: ServiceKind::Consultation,
            summary: "how to install".into(),
            request: "manual missing".into(),
            contact_id: None,
        }),
    );
    at(
        27,
        2,
        "dir-zhou",
        Command::AssignServiceRequest(AssignServiceRequest {
            service_request_id: sr(201),
            assignee: UserId::new("cs-chen"),
        }),
    );
    at(
        28,
        2,
        "cs-chen",
        Command::HandleServiceRequest(HandleServiceRequest {
            service_request_id: sr(201),
            handling: "sent pdf".into(),
        }),
    );
    at(
        29,
        2,
        "cs-chen",
        Command::GiveServiceFeedback(GiveServiceFeedback {
            service_request_id: sr(201),
            result: "unclear".into(),
            satisfaction: 2,
        }),
    );
    at(
        31,
        2,
        "cs-chen",
        Command::HandleServiceRequest(HandleServiceRequest {
            service_request_id: sr(201),
            handling: "visited".into(),
        }),
    );
    at(
        32,
        2,
        "cs-chen",
        Command::GiveServiceFeedback(GiveServiceFeedback {
            service_request_id: sr(201),
            result: "solved".into(),
            satisfaction: 4,
        }),
    );
    at(
        33,
        2,
        "cs-chen",
        Command::ArchiveServiceRequest(ArchiveServiceRequest {
            service_request_id: sr(201),
        }),
    );
    at(
        41,
        3,
        "cs-chen",
        Command::CreateServiceRequest(CreateServiceRequest {
            service_request_id: sr(202),
            kind: ServiceKind::Complaint,
            summary: "late delivery".into(),
            request: "two weeks late".into(),
            contact_id: Some(ContactId(id(403))),
        }),
    );
    at(
        42,
        3,
        "dir-zhou",
        Command::AssignServiceRequest(AssignServiceRequest {
            service_request_id: sr(202),
            assignee: UserId::new("cs-chen"),
        }),
    );
    at(
        70,
        1,
        "cs-chen",
        Command::CreateServiceRequest(CreateServiceRequest {
            service_request_id: sr(203),
            kind: ServiceKind::Suggestion,
            summary: "packaging".into(),
            request: "less plastic".into(),
            contact_id: None,
        }),
    );
    let cp = |n: u128| ComplaintId(id(n));
    at(
        47,
        4,
        "cs-chen",
        Command::LodgeComplaint(LodgeComplaint {
            complaint_id: cp(301),
            category: ComplaintCategory::Product,
            sub_category: "quality".into(),
            urgency: Priority::High,
            importance: Priority::Normal,
            description: "cracked casing".into(),
            contact_id: None,
        }),
    );
    at(
        48,
        4,
        "cs-chen",
        Command::HandleComplaint(HandleComplaint {
            complaint_id: cp(301),
            handling: "replaced".into(),
            cause_analysis: Some("transport".into()),
        }),
    );
    at(
        49,
        4,
        "cs-chen",
        Command::CloseComplaint(CloseComplaint {
            complaint_id: cp(301),
            resolution: "customer satisfied".into(),
        }),
    );
    at(
        50,
        2,
        "cs-chen",
        Command::LodgeComplaint(LodgeComplaint {
            complaint_id: cp(302),
            category: ComplaintCategory::Staff,
            sub_category: "attitude".into(),
            urgency: Priority::Normal,
            importance: Priority::Low,
            description: "rude call".into(),
            contact_id: None,
        }),
    );

    // profile and owner
    at(
        35,
        2,
        "am-li",
        Command::ChangeProfile(ChangeProfile {
            changes: ProfilePatch {
                level: Some(Some(Large)),
                satisfaction: Some(Some(4)),
                ..ProfilePatch::default()
            },
        }),
    );
    at(
        90,
        3,
        "dir-zhou",
        Command::ReassignOwner(ReassignOwner {
            to: UserId::new("am-li"),
        }),
    );

    // orders; as of day 400 the 365-day window starts after day 35
    for (d, c, n, amount) in [
        (50, 1, "A-1", 100_000),
        (120, 1, "A-2", 50_000),
        (300, 1, "A-3", 80_000),
        (390, 1, "A-4", 120_000),
        (20, 2, "B-1", 10_000),
        (40, 2, "B-2", 20_000),
        (200, 3, "C-1", 60_000),
        (380, 3, "C-2", 60_000),
        (100, 4, "D-1", 500_000),
        (150, 4, "D-2", 500_000),
        (250, 4, "D-3", 500_000),
        (350, 4, "D-4", 500_000),
        (395, 4, "D-5", 500_000),
        (30, 5, "E-1", 15_000),
        (300, 6, "F-1", 20_000),
        // customers 7 and 8: the same orders on the same days — a tie in R, F and M
        (310, 7, "G-1", 30_000),
        (360, 7, "G-2", 30_000),
        (310, 8, "H-1", 30_000),
        (360, 8, "H-2", 30_000),
    ] {
        at(d, c, "erp", order(n, amount));
    }

    // churn
    at(
        230,
        5,
        "churn-rule",
        Command::RaiseChurnWarning(RaiseChurnWarning {
            churn_case_id: ChurnCaseId(id(601)),
            reason: "no order for 180 days".into(),
            last_order_at: Some(day(30)),
        }),
    );
    at(
        235,
        5,
        "am-zhao",
        Command::RecordDelayMeasure(RecordDelayMeasure {
            measure: "called the buyer".into(),
        }),
    );
    at(
        240,
        5,
        "am-zhao",
        Command::RecordDelayMeasure(RecordDelayMeasure {
            measure: "offered 5% discount".into(),
        }),
    );
    at(
        250,
        5,
        "am-zhao",
        Command::ConfirmChurn(ConfirmChurn {
            reason: "moved to a competitor".into(),
        }),
    );
    at(
        200,
        6,
        "churn-rule",
        Command::RaiseChurnWarning(RaiseChurnWarning {
            churn_case_id: ChurnCaseId(id(602)),
            reason: "no order for 180 days".into(),
            last_order_at: None,
        }),
    );
    at(
        301,
        6,
        "am-zhao",
        Command::ReactivateCustomer(ReactivateCustomer {
            reason: "ordered again".into(),
        }),
    );
    at(
        250,
        9,
        "churn-rule",
        Command::RaiseChurnWarning(RaiseChurnWarning {
            churn_case_id: ChurnCaseId(id(603)),
            reason: "never ordered".into(),
            last_order_at: None,
        }),
    );

    // late arrivals: an email sent on day 45, synced on day 60; an order of day 190 imported on day 210
    plan.push((
        day(45),
        day(60),
        cid(1),
        "mail-sync",
        touch(LATE_TOUCHPOINT, email("re: offer"), "customer's reply"),
    ));
    plan.push((day(190), day(210), cid(3), "erp", order("C-0", 40_000)));

    // append in recorded order; each customer's commands keep their order (stable sort)
    plan.sort_by_key(|(_, recorded, _, _, _)| *recorded);
    let mut world = World::new(3);
    for (occurred, recorded, customer, actor, command) in plan {
        world.exec_recorded(customer, occurred, recorded, actor, command);
    }
    world
}

fn events(world: &World) -> Vec<&RecordedEvent> {
    world.log.iter().map(|(_, e)| e).collect()
}

/// The log in overlapping batches: each batch repeats the last records of the one before,
/// as a consumer does after a crash between the write and its commit.
fn overlapping_batches(log: &[(Position, RecordedEvent)]) -> Vec<Vec<(Position, RecordedEvent)>> {
    let sizes = [1usize, 4, 7, 2, 11, 5, 3];
    let mut out = Vec::new();
    let (mut start, mut k) = (0usize, 0usize);
    while start < log.len() {
        let end = (start + sizes[k % sizes.len()]).min(log.len());
        out.push(log[start.saturating_sub(3)..end].to_vec());
        start = end;
        k += 1;
    }
    out
}

async fn setup(db: &TestDb, world: &World) -> (Projector, ReadModels) {
    let (projector, status) =
        Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 1).unwrap())
            .await
            .unwrap();
    assert_eq!(
        status,
        VersionStatus::Live,
        "the first version of a projection goes live"
    );
    let mut applied = 0;
    for batch in overlapping_batches(&world.log) {
        applied += projector.apply(&batch).await.unwrap().applied;
    }
    assert_eq!(applied, world.log.len(), "every event applied exactly once");
    let read = ReadModels::new(db.pool.clone(), projector.version());
    (projector, read)
}

// ------------------------------------------------------------------ customer 360

#[derive(Default, Debug)]
struct RefCustomer {
    touch: BTreeMap<String, (i64, DateTime<Utc>)>,
    orders: Vec<(DateTime<Utc>, i64)>,
    registered_at: Option<DateTime<Utc>>,
}

fn reference_customers(world: &World) -> BTreeMap<CustomerId, RefCustomer> {
    let mut out: BTreeMap<CustomerId, RefCustomer> = BTreeMap::new();
    for e in events(world) {
        let c = out.entry(e.metadata.customer_id).or_default();
        let at = e.metadata.occurred_at;
        match &e.event {
            CustomerEvent::CustomerRegistered(_) => c.registered_at = Some(at),
            CustomerEvent::TouchpointRecorded(t) => {
                let s = c
                    .touch
                    .entry(t.touchpoint.channel.name().to_owned())
                    .or_insert((0, at));
                s.0 += 1;
                s.1 = s.1.max(at);
            }
            CustomerEvent::OrderPlaced(o) => c.orders.push((at, o.total.amount)),
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn customer_360_matches_the_reference() {
    let db = TestDb::new().await;
    let world = scenario();
    let (_, read) = setup(&db, &world).await;
    let refs = reference_customers(&world);
    let all = read.customers_360().await.unwrap();
    assert_eq!(all.len(), world.states.len());
    for view in all {
        let cid = CustomerId(view.customer_id);
        let state = &world.states[&cid];
        let r = &refs[&cid];
        let profile = state.profile.as_ref().unwrap();
        assert_eq!(view.name, profile.name);
        assert_eq!(view.number, profile.number);
        assert_eq!(view.level, profile.level.as_str());
        assert_eq!(view.credit, i16::from(profile.credit));
        assert_eq!(view.satisfaction, i16::from(profile.satisfaction));
        assert_eq!(view.region, profile.region);
        assert_eq!(
            view.registration,
            serde_json::to_value(&profile.registration).unwrap()
        );
        assert_eq!(
            Some(view.owner.as_str()),
            state.owner.as_ref().map(UserId::as_str)
        );
        assert_eq!(Some(view.registered_at), r.registered_at);
        assert_eq!(view.last_sequence, state.version as i64);
        // contacts
        let mut contacts: Vec<_> = view
            .contacts
            .0
            .iter()
            .map(|c| {
                (
                    c.contact_id,
                    c.name.clone(),
                    c.mobile.clone(),
                    c.email.clone(),
                )
            })
            .collect();
        contacts.sort();
        let expected: Vec<_> = state
            .contacts
            .iter()
            .map(|(id, c)| {
                (
                    id.as_uuid(),
                    c.name.clone(),
                    c.mobile.clone(),
                    c.email.clone(),
                )
            })
            .collect();
        assert_eq!(contacts, expected, "contacts of {}", view.name);
        // touchpoints per channel
        let touch: BTreeMap<String, (i64, DateTime<Utc>)> = view
            .touchpoints
            .0
            .iter()
            .map(|t| (t.channel.clone(), (t.touchpoints, t.last_at)))
            .collect();
        assert_eq!(touch, r.touch, "touchpoints of {}", view.name);
        // open opportunities
        let open: BTreeSet<(Uuid, String, i64)> = view
            .open_opportunities
            .0
            .iter()
            .map(|o| (o.opportunity_id, o.stage.clone(), o.amount))
            .collect();
        let expected: BTreeSet<(Uuid, String, i64)> = state
            .opportunities
            .iter()
            .filter(|(_, o)| o.status == domain::state::OpportunityStatus::Open)
            .map(|(id, o)| (id.as_uuid(), o.stage.as_str().to_owned(), o.value.amount))
            .collect();
        assert_eq!(open, expected, "open opportunities of {}", view.name);
        // service and complaints
        let open_sr = state
            .service_requests
            .values()
            .filter(|s| **s != domain::state::ServiceStatus::Archived)
            .count();
        assert_eq!(view.open_service_requests, open_sr as i64);
        let open_cp = state
            .complaints
            .values()
            .filter(|s| **s != domain::state::ComplaintStatus::Closed)
            .count();
        assert_eq!(view.open_complaints, open_cp as i64);
        // churn and orders
        assert_eq!(view.churn_status, state.churn.as_str());
        assert_eq!(view.order_count, r.orders.len() as i64);
        assert_eq!(
            view.order_total,
            r.orders.iter().map(|(_, a)| a).sum::<i64>()
        );
        assert_eq!(view.last_order_at, r.orders.iter().map(|(at, _)| *at).max());
    }
    // spot checks that the scenario means what it says
    let acme = read.customer_360(cid(1).as_uuid()).await.unwrap().unwrap();
    assert_eq!(
        acme.touchpoints
            .0
            .iter()
            .find(|t| t.channel == "email")
            .map(|t| (t.touchpoints, t.last_at)),
        Some((2, day(45)))
    );
    let beta = read.customer_360(cid(2).as_uuid()).await.unwrap().unwrap();
    assert_eq!(
        (
            beta.level.as_str(),
            beta.satisfaction,
            beta.open_complaints,
            beta.open_service_requests
        ),
        ("large", 4, 1, 0)
    );
    let gamma = read.customer_360(cid(3).as_uuid()).await.unwrap().unwrap();
    assert_eq!(
        (gamma.owner.as_str(), gamma.order_count, gamma.last_order_at),
        ("am-li", 3, Some(day(380)))
    );
}

// ------------------------------------------------------------------ timeline

#[tokio::test]
async fn timeline_is_in_business_time_and_a_late_event_lands_in_its_place() {
    let db = TestDb::new().await;
    let world = scenario();
    let (_, read) = setup(&db, &world).await;
    for customer in world.states.keys() {
        let mut expected: Vec<&RecordedEvent> = events(&world)
            .into_iter()
            .filter(|e| e.metadata.customer_id == *customer)
            .collect();
        expected.sort_by_key(|e| (e.metadata.occurred_at, e.metadata.sequence));
        // read it in pages of 4
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let page = read.timeline(customer.as_uuid(), after, 4).await.unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|e| (e.occurred_at, e.sequence));
            got.extend(page);
        }
        assert_eq!(
            got.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            expected.iter().map(|e| e.metadata.id).collect::<Vec<_>>()
        );
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.event_type, e.event.event_type());
            assert_eq!(g.actor, e.metadata.actor);
            assert_eq!(g.occurred_at, e.metadata.occurred_at);
            let is_touch = matches!(e.event, CustomerEvent::TouchpointRecorded(_));
            assert_eq!(
                g.category,
                if is_touch {
                    "touchpoint"
                } else {
                    "state_change"
                }
            );
            if let CustomerEvent::TouchpointRecorded(t) = &e.event {
                assert_eq!(g.channel.as_deref(), Some(t.touchpoint.channel.name()));
                assert_eq!(g.summary, t.touchpoint.summary);
            }
        }
    }
    // the late email: appended after the day-55 win, shown before the day-50 order
    let acme = read.timeline(cid(1).as_uuid(), None, 1000).await.unwrap();
    let pos = |pred: &dyn Fn(&projection_service::read::TimelineEntry) -> bool| {
        acme.iter().position(pred).unwrap()
    };
    let late = pos(&|e| e.subject_id.as_deref() == Some(&id(LATE_TOUCHPOINT).to_string()));
    let order_a1 = pos(&|e| e.subject_id.as_deref() == Some("A-1"));
    let won = pos(&|e| e.event_type == "crm.opportunity.won.v1");
    assert!(
        acme[late].sequence > acme[won].sequence,
        "appended after the win"
    );
    assert!(
        late < order_a1 && order_a1 < won,
        "but shown at day 45: {late} < {order_a1} < {won}"
    );
}

// ------------------------------------------------------------------ pipeline

#[derive(Debug, Clone, PartialEq)]
struct Stay {
    stage: String,
    entered_at: DateTime<Utc>,
    left_at: Option<DateTime<Utc>>,
    left_by: Option<String>,
}

#[derive(Debug, Clone)]
struct RefOpp {
    customer: CustomerId,
    amount: i64,
    probability: i16,
    expected_close: NaiveDate,
    owner: Option<String>,
    status: &'static str,
    opened_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
    stays: Vec<Stay>,
}

fn reference_opportunities(world: &World) -> BTreeMap<Uuid, RefOpp> {
    let mut out: BTreeMap<Uuid, RefOpp> = BTreeMap::new();
    let close = |o: &mut RefOpp, at, by: &str| {
        if let Some(s) = o.stays.last_mut() {
            s.left_at = Some(at);
            s.left_by = Some(by.to_owned());
        }
    };
    for e in events(world) {
        let at = e.metadata.occurred_at;
        match &e.event {
            CustomerEvent::OpportunityOpened(o) => {
                out.insert(
                    o.opportunity_id.as_uuid(),
                    RefOpp {
                        customer: o.customer_id,
                        amount: o.value.amount,
                        probability: i16::from(o.probability),
                        expected_close: o.expected_close,
                        owner: None,
                        status: "open",
                        opened_at: at,
                        closed_at: None,
                        stays: vec![Stay {
                            stage: "qualification".into(),
                            entered_at: at,
                            left_at: None,
                            left_by: None,
                        }],
                    },
                );
            }
            CustomerEvent::OpportunityAssigned(a) => {
                out.get_mut(&a.opportunity_id.as_uuid()).unwrap().owner = Some(a.owner.0.clone());
            }
            CustomerEvent::OpportunityStageChanged(s) => {
                let o = out.get_mut(&s.opportunity_id.as_uuid()).unwrap();
                close(
                    o,
                    at,
                    if s.to.index() > s.from.index() {
                        "advanced"
                    } else {
                        "moved_back"
                    },
                );
                o.stays.push(Stay {
                    stage: s.to.as_str().into(),
                    entered_at: at,
                    left_at: None,
                    left_by: None,
                });
                if let Some(p) = s.probability {
                    o.probability = i16::from(p);
                }
            }
            CustomerEvent::OpportunityWon(w) => {
                let o = out.get_mut(&w.opportunity_id.as_uuid()).unwrap();
                close(o, at, "won");
                o.status = "won";
                o.amount = w.value.amount;
                o.closed_at = Some(at);
            }
            CustomerEvent::OpportunityLost(l) => {
                let o = out.get_mut(&l.opportunity_id.as_uuid()).unwrap();
                close(o, at, "lost");
                o.status = "lost";
                o.closed_at = Some(at);
            }
            CustomerEvent::OpportunityReopened(r) => {
                let o = out.get_mut(&r.opportunity_id.as_uuid()).unwrap();
                o.stays.push(Stay {
                    stage: r.stage.as_str().into(),
                    entered_at: at,
                    left_at: None,
                    left_by: None,
                });
                o.status = "open";
                o.closed_at = None;
            }
            _ => {}
        }
    }
    out
}

fn secs(d: TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

fn close_to(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6 * (1.0 + b.abs())
}

#[tokio::test]
async fn pipeline_matches_the_reference() {
    let db = TestDb::new().await;
    let world = scenario();
    let (_, read) = setup(&db, &world).await;
    let refs = reference_opportunities(&world);

    // opportunities
    let opps = read.opportunities().await.unwrap();
    assert_eq!(opps.len(), refs.len());
    for o in &opps {
        let r = &refs[&o.opportunity_id];
        assert_eq!(o.customer_id, r.customer.as_uuid());
        assert_eq!(
            (o.amount, o.probability, o.expected_close),
            (r.amount, r.probability, r.expected_close),
            "{}",
            o.title
        );
        assert_eq!(o.owner, r.owner);
        assert_eq!(o.status, r.status);
        assert_eq!((o.opened_at, o.closed_at), (r.opened_at, r.closed_at));
        let last = r.stays.last().unwrap();
        assert_eq!(
            (o.stage.as_str(), o.stage_since),
            (last.stage.as_str(), last.entered_at),
            "current stage and since when"
        );
    }

    // stage history
    let history = read.stage_history().await.unwrap();
    for (opp, r) in &refs {
        let got: Vec<Stay> = history
            .iter()
            .filter(|s| s.opportunity_id == *opp)
            .map(|s| Stay {
                stage: s.stage.clone(),
                entered_at: s.entered_at,
                left_at: s.left_at,
                left_by: s.left_by.clone(),
            })
            .collect();
        assert_eq!(got, r.stays, "stage history of {opp}");
    }

    // latest and cumulative time per stage, as of day 120
    let as_of = day(120);
    let times = read.stage_times(as_of).await.unwrap();
    let mut expected_times = 0;
    for (opp, r) in &refs {
        let mut per_stage: BTreeMap<&str, Vec<&Stay>> = BTreeMap::new();
        for s in &r.stays {
            per_stage.entry(s.stage.as_str()).or_default().push(s);
        }
        for (stage, stays) in per_stage {
            expected_times += 1;
            let t = times
                .iter()
                .find(|t| t.opportunity_id == *opp && t.stage == stage)
                .unwrap();
            let dur = |s: &Stay| secs(s.left_at.unwrap_or(as_of) - s.entered_at);
            let latest = stays.last().unwrap();
            assert_eq!(t.visits, stays.len() as i64);
            assert_eq!(t.latest_entered_at, latest.entered_at);
            assert!(close_to(t.latest_seconds, dur(latest)), "{opp} {stage}");
            assert!(
                close_to(t.cumulative_seconds, stays.iter().map(|s| dur(s)).sum()),
                "{opp} {stage}"
            );
        }
    }
    assert_eq!(times.len(), expected_times);
    // opportunity 102 went qualification → proposal → qualification: two visits, 8 + 8 days
    let q102 = times
        .iter()
        .find(|t| t.opportunity_id == id(102) && t.stage == "qualification")
        .unwrap();
    assert_eq!(q102.visits, 2);
    assert!(close_to(q102.cumulative_seconds, 16.0 * 86400.0));

    // funnel
    let funnel = read.funnel().await.unwrap();
    let stages = [
        "qualification",
        "proposal",
        "evaluation",
        "negotiation",
        "won",
    ];
    let reached: Vec<i64> = stages
        .iter()
        .map(|s| {
            if *s == "won" {
                refs.values().filter(|o| o.status == "won").count() as i64
            } else {
                refs.values()
                    .filter(|o| o.stays.iter().any(|st| st.stage == *s))
                    .count() as i64
            }
        })
        .collect();
    assert_eq!(
        funnel.iter().map(|f| f.stage.as_str()).collect::<Vec<_>>(),
        stages
    );
    for (i, f) in funnel.iter().enumerate() {
        let open: Vec<&RefOpp> = refs
            .values()
            .filter(|o| o.status == "open" && o.stays.last().unwrap().stage == f.stage)
            .collect();
        assert_eq!(f.open_count, open.len() as i64, "{}", f.stage);
        assert_eq!(
            f.open_amount,
            open.iter().map(|o| o.amount).sum::<i64>(),
            "{}",
            f.stage
        );
        assert_eq!(f.reached_count, reached[i], "{}", f.stage);
        match reached.get(i + 1) {
            Some(next) if reached[i] > 0 => assert!(close_to(
                f.conversion_to_next.unwrap(),
                *next as f64 / reached[i] as f64
            )),
            _ => assert_eq!(f.conversion_to_next, None),
        }
    }

    // win rate and sales cycle
    let summary = read.pipeline_summary().await.unwrap();
    let won: Vec<&RefOpp> = refs.values().filter(|o| o.status == "won").collect();
    let lost = refs.values().filter(|o| o.status == "lost").count();
    assert_eq!(
        (summary.won_count, summary.lost_count),
        (won.len() as i64, lost as i64)
    );
    assert!(close_to(
        summary.win_rate.unwrap(),
        won.len() as f64 / (won.len() + lost) as f64
    ));
    let cycle = won
        .iter()
        .map(|o| secs(o.closed_at.unwrap() - o.opened_at) / 86400.0)
        .sum::<f64>()
        / won.len() as f64;
    assert!(
        close_to(summary.avg_sales_cycle_days.unwrap(), cycle),
        "{:?} vs {cycle}",
        summary.avg_sales_cycle_days
    );
    assert!(close_to(cycle, 52.0));

    // weighted forecast by expected-close month and owner
    let mut expected: BTreeMap<(NaiveDate, Option<String>), (i64, i64, f64)> = BTreeMap::new();
    for o in refs.values().filter(|o| o.status == "open") {
        let month =
            NaiveDate::from_ymd_opt(o.expected_close.year(), o.expected_close.month(), 1).unwrap();
        let e = expected
            .entry((month, o.owner.clone()))
            .or_insert((0, 0, 0.0));
        e.0 += 1;
        e.1 += o.amount;
        e.2 += o.amount as f64 * f64::from(o.probability) / 100.0;
    }
    let forecast = read.weighted_forecast().await.unwrap();
    assert_eq!(forecast.len(), expected.len());
    for f in forecast {
        let e = expected[&(f.month, f.owner.clone())];
        assert_eq!((f.opportunities, f.amount), (e.0, e.1));
        assert!(close_to(f.weighted_amount, e.2));
    }
}

/// The owner of each customer when the world ends (registration, then reassignments).
fn reference_owners(world: &World) -> BTreeMap<CustomerId, String> {
    let mut out = BTreeMap::new();
    for e in events(world) {
        match &e.event {
            CustomerEvent::CustomerRegistered(r) => {
                out.insert(e.metadata.customer_id, r.owner.0.clone());
            }
            CustomerEvent::OwnerReassigned(r) => {
                out.insert(e.metadata.customer_id, r.to.0.clone());
            }
            _ => {}
        }
    }
    out
}

/// (reached, visits, ended seconds, open count, open amount, sum of open since in seconds)
type StageTotalsRef = (i64, i64, f64, i64, i64, f64);
/// A row of `pipeline_stage_totals`: owner, stage, then as [`StageTotalsRef`].
type StageTotalsRow = (String, String, i64, i64, f64, i64, i64, f64);

#[tokio::test]
async fn pipeline_totals_per_customer_owner_match_the_reference() {
    let db = TestDb::new().await;
    let world = scenario();
    setup(&db, &world).await;
    let refs = reference_opportunities(&world);
    let owners = reference_owners(&world);
    // customer 3 moved from am-wang to am-li on day 90, with its opportunity
    assert_eq!(owners[&cid(3)], "am-li");
    let epoch = |t: DateTime<Utc>| t.timestamp_micros() as f64 / 1e6;

    let mut stages: BTreeMap<(String, String), StageTotalsRef> = BTreeMap::new();
    let mut per_owner: BTreeMap<String, (i64, i64, i64, f64)> = BTreeMap::new();
    let mut forecast: BTreeMap<(String, NaiveDate, String), (i64, i64, f64)> = BTreeMap::new();
    for o in refs.values() {
        let owner = owners[&o.customer].clone();
        let mut seen = BTreeSet::new();
        for s in &o.stays {
            let t = stages
                .entry((owner.clone(), s.stage.clone()))
                .or_insert((0, 0, 0.0, 0, 0, 0.0));
            if seen.insert(s.stage.clone()) {
                t.0 += 1;
            }
            t.1 += 1;
            match s.left_at {
                Some(left) => t.2 += secs(left - s.entered_at),
                None => {
                    t.3 += 1;
                    t.4 += o.amount;
                    t.5 += epoch(s.entered_at);
                }
            }
        }
        let t = per_owner.entry(owner.clone()).or_insert((0, 0, 0, 0.0));
        match o.status {
            "open" => t.0 += 1,
            "won" => {
                t.1 += 1;
                t.3 += secs(o.closed_at.unwrap() - o.opened_at);
            }
            _ => t.2 += 1,
        }
        if o.status == "open" {
            let month =
                NaiveDate::from_ymd_opt(o.expected_close.year(), o.expected_close.month(), 1)
                    .unwrap();
            let f = forecast
                .entry((owner, month, o.owner.clone().unwrap_or_default()))
                .or_insert((0, 0, 0.0));
            f.0 += 1;
            f.1 += o.amount;
            f.2 += o.amount as f64 * f64::from(o.probability) / 100.0;
        }
    }
    assert!(per_owner.len() >= 2, "more than one customer owner");

    let rows: Vec<StageTotalsRow> = sqlx::query_as(
        "SELECT customer_owner, stage, reached, visits, ended_seconds::float8, open_count,
                open_amount, open_since_seconds::float8 FROM rm_v1.pipeline_stage_totals",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), stages.len());
    for (owner, stage, reached, visits, ended, open, amount, since) in rows {
        let r = stages[&(owner.clone(), stage.clone())];
        assert_eq!(
            (reached, visits, open, amount),
            (r.0, r.1, r.3, r.4),
            "{owner} {stage}"
        );
        assert!(close_to(ended, r.2), "{owner} {stage}: {ended} vs {}", r.2);
        assert!(close_to(since, r.5), "{owner} {stage}: {since} vs {}", r.5);
    }
    let rows: Vec<(String, i64, i64, i64, f64)> = sqlx::query_as(
        "SELECT customer_owner, open_count, won_count, lost_count, won_cycle_seconds::float8
           FROM rm_v1.pipeline_owner_totals",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), per_owner.len());
    for (owner, open, won, lost, cycle) in rows {
        let r = per_owner[&owner];
        assert_eq!((open, won, lost), (r.0, r.1, r.2), "{owner}");
        assert!(close_to(cycle, r.3), "{owner}");
    }
    let rows: Vec<(String, NaiveDate, String, i64, i64, f64)> = sqlx::query_as(
        "SELECT customer_owner, month, owner, opportunities, amount, weighted_amount::float8
           FROM rm_v1.pipeline_forecast",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), forecast.len());
    for (customer_owner, month, owner, n, amount, weighted) in rows {
        let r = forecast[&(customer_owner, month, owner)];
        assert_eq!((n, amount), (r.0, r.1));
        assert!(close_to(weighted, r.2));
    }

    // the longest time in each stage, per owner, as the index finds it, as of day 120
    let as_of = day(120);
    for (owner, stage) in stages.keys() {
        let longest: Option<f64> = refs
            .values()
            .filter(|o| &owners[&o.customer] == owner)
            .filter(|o| o.stays.iter().any(|s| &s.stage == stage))
            .map(|o| {
                o.stays
                    .iter()
                    .filter(|s| &s.stage == stage)
                    .map(|s| secs(s.left_at.unwrap_or(as_of) - s.entered_at))
                    .sum::<f64>()
            })
            .reduce(f64::max);
        let (found,): (Option<f64>,) = sqlx::query_as(
            "SELECT greatest(
                 (SELECT max(ended_seconds) FROM rm_v1.stage_durations
                   WHERE customer_owner = $1 AND stage = $2 AND in_stage_since IS NULL),
                 extract(epoch FROM $3::timestamptz)
                 + (SELECT max(open_key) FROM rm_v1.stage_durations
                     WHERE customer_owner = $1 AND stage = $2 AND in_stage_since IS NOT NULL))::float8",
        )
        .bind(owner)
        .bind(stage)
        .bind(as_of)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(
            close_to(found.unwrap(), longest.unwrap()),
            "{owner} {stage}"
        );
    }
}

// ------------------------------------------------------------------ audit trail

#[tokio::test]
async fn audit_trail_has_one_row_per_event_with_who_when_why_and_where() {
    let db = TestDb::new().await;
    let world = scenario();
    let (_, read) = setup(&db, &world).await;
    let trail = read.audit_trail(None).await.unwrap();
    assert_eq!(trail.len(), world.log.len());
    let by_id: BTreeMap<Uuid, &projection_service::read::AuditEntry> =
        trail.iter().map(|a| (a.event_id, a)).collect();
    for (pos, e) in &world.log {
        let a = by_id[&e.metadata.id];
        let m = &e.metadata;
        assert_eq!(a.customer_id, m.customer_id.as_uuid());
        assert_eq!(a.sequence, m.sequence as i64);
        assert_eq!(a.event_type, e.event.event_type());
        assert_eq!(
            (a.actor.as_str(), a.source.as_str()),
            (m.actor.as_str(), m.source.as_str())
        );
        assert_eq!(
            (a.occurred_at, a.recorded_at),
            (m.occurred_at, m.recorded_at)
        );
        assert_eq!(a.changes, e.event.to_value().unwrap());
        assert_eq!((&a.command, &a.command_id), (&m.command, &m.command_id));
        assert_eq!(
            (a.correlation_id, a.causation_id),
            (m.correlation_id, m.causation_id)
        );
        assert_eq!(
            (a.topic.as_str(), a.partition, a.offset),
            (pos.topic.as_str(), pos.partition, pos.offset)
        );
    }
    let gamma = read.audit_trail(Some(cid(3).as_uuid())).await.unwrap();
    assert_eq!(
        gamma.iter().map(|a| a.sequence).collect::<Vec<_>>(),
        (1..=gamma.len() as i64).collect::<Vec<_>>()
    );
}

// ------------------------------------------------------------------ RFM

/// The definition of the domain issue, written out naively: O(n²), no sorting tricks.
fn reference_rfm(world: &World, as_of: DateTime<Utc>, window_days: i64) -> BTreeMap<Uuid, RfmRef> {
    let mut per: BTreeMap<Uuid, (DateTime<Utc>, i64, i64)> = BTreeMap::new();
    for e in events(world) {
        if let CustomerEvent::OrderPlaced(o) = &e.event {
            let at = e.metadata.occurred_at;
            if at > as_of || as_of - at >= TimeDelta::days(window_days) {
                continue;
            }
            let v = per
                .entry(e.metadata.customer_id.as_uuid())
                .or_insert((at, 0, 0));
            v.0 = v.0.max(at);
            v.1 += 1;
            v.2 += o.total.amount;
        }
    }
    let values: Vec<(Uuid, i64, i64, i64)> = per
        .iter()
        .map(|(c, (last, f, m))| (*c, (as_of - *last).num_days(), *f, *m))
        .collect();
    let n = values.len();
    let score = |count: usize| -> u8 { (1 + (5 * count) / n).min(5) as u8 };
    let segment = |r: u8, f: u8| -> &'static str {
        match (r, f) {
            (5, 4 | 5) => "champions",
            (3 | 4, 4 | 5) => "loyal",
            (4 | 5, 2 | 3) => "potential_loyalists",
            (5, 1) => "new",
            (4, 1) => "promising",
            (3, 3) => "need_attention",
            (3, 1 | 2) => "about_to_sleep",
            (1 | 2, 3 | 4) => "at_risk",
            (1 | 2, 5) => "cant_lose_them",
            _ => "hibernating",
        }
    };
    values
        .iter()
        .map(|(c, r, f, m)| {
            let rs = score(values.iter().filter(|v| v.1 > *r).count());
            let fs = score(values.iter().filter(|v| v.2 < *f).count());
            let ms = score(values.iter().filter(|v| v.3 < *m).count());
            (*c, (*r, *f, *m, rs, fs, ms, segment(rs, fs).to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn rfm_matches_the_definition_including_ties() {
    let db = TestDb::new().await;
    let world = scenario();
    let (projector, read) = setup(&db, &world).await;
    assert!(
        projector.rfm_stale().await.unwrap(),
        "orders arrived, no recompute yet"
    );
    for as_of in [day(400), day(200), day(60)] {
        let run = projector
            .recompute_rfm(as_of, RfmWindow::default())
            .await
            .unwrap();
        let expected = reference_rfm(&world, as_of, 365);
        assert_eq!(run.scored, expected.len());
        let got: BTreeMap<Uuid, RfmRef> = read
            .rfm()
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.customer_id,
                    (
                        i64::from(r.recency_days),
                        i64::from(r.frequency),
                        r.monetary,
                        r.r as u8,
                        r.f as u8,
                        r.m as u8,
                        r.segment,
                    ),
                )
            })
            .collect();
        assert_eq!(got, expected, "rfm as of {as_of}");
        // segment sizes: the scored ones, and everybody else has no purchases
        let sizes: BTreeMap<String, i64> = read
            .segment_sizes()
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.segment, s.customers))
            .collect();
        for s in domain::policy::Segment::ALL {
            let n = if s == domain::policy::Segment::NoPurchases {
                (world.states.len() - expected.len()) as i64
            } else {
                expected.values().filter(|v| v.6 == s.as_str()).count() as i64
            };
            assert_eq!(sizes[s.as_str()], n, "segment {} as of {as_of}", s.as_str());
        }
    }
    assert!(!projector.rfm_stale().await.unwrap());
    // as of day 400: customers 7 and 8 tie on everything
    projector
        .recompute_rfm(day(400), RfmWindow::default())
        .await
        .unwrap();
    let rows = read.rfm().await.unwrap();
    let row = |c: u128| {
        rows.iter()
            .find(|r| r.customer_id == cid(c).as_uuid())
            .cloned()
            .unwrap()
    };
    let (g, h) = (row(7), row(8));
    assert_eq!(
        (g.recency_days, g.frequency, g.monetary, g.r, g.f, g.m),
        (h.recency_days, h.frequency, h.monetary, h.r, h.f, h.m)
    );
    assert!(
        rows.iter()
            .all(|r| r.customer_id != cid(5).as_uuid() && r.customer_id != cid(9).as_uuid()),
        "no order in the window: not scored"
    );
    let epsilon = read.customer_360(cid(5).as_uuid()).await.unwrap().unwrap();
    assert_eq!(
        (epsilon.segment.as_str(), epsilon.r),
        ("no_purchases", None)
    );
    let delta = read.customer_360(cid(4).as_uuid()).await.unwrap().unwrap();
    assert_eq!(
        (delta.frequency, delta.f, delta.m),
        (Some(5), Some(5), Some(5))
    );
}

// ------------------------------------------------------------------ churn

#[tokio::test]
async fn churn_cases_and_candidates_match_the_reference() {
    let db = TestDb::new().await;
    let world = scenario();
    let (_, read) = setup(&db, &world).await;

    let cases = read.churn_cases().await.unwrap();
    let mut expected: BTreeMap<Uuid, CaseRef> = BTreeMap::new();
    for e in events(&world) {
        match &e.event {
            CustomerEvent::ChurnWarningRaised(w) => {
                expected.insert(
                    w.churn_case_id.as_uuid(),
                    (w.customer_id.as_uuid(), "at_risk".into(), vec![], None),
                );
            }
            CustomerEvent::ChurnDelayMeasureRecorded(m) => expected
                .get_mut(&m.churn_case_id.as_uuid())
                .unwrap()
                .2
                .push(m.measure.clone()),
            CustomerEvent::ChurnConfirmed(c) => {
                let x = expected.get_mut(&c.churn_case_id.as_uuid()).unwrap();
                x.1 = "lost".into();
                x.3 = Some(c.reason.clone());
            }
            CustomerEvent::CustomerReactivated(r) => {
                expected.get_mut(&r.churn_case_id.as_uuid()).unwrap().1 = "reactivated".into()
            }
            _ => {}
        }
    }
    let got: BTreeMap<Uuid, CaseRef> = cases
        .into_iter()
        .map(|c| {
            (
                c.churn_case_id,
                (c.customer_id, c.status, c.measures, c.confirmed_reason),
            )
        })
        .collect();
    assert_eq!(got, expected);

    let refs = reference_customers(&world);
    let rule = ChurnRule::default();
    for now in [day(100), day(200), day(230), day(400), day(600)] {
        let got: BTreeSet<Uuid> = read
            .churn_candidates(now, rule)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.customer_id)
            .collect();
        let expected: BTreeSet<Uuid> = refs
            .iter()
            .filter(|(_, r)| r.registered_at.is_some_and(|at| at <= now))
            .filter(|(_, r)| {
                let last = r
                    .orders
                    .iter()
                    .map(|(at, _)| *at)
                    .filter(|at| *at <= now)
                    .max();
                rule.matches(last, r.registered_at.unwrap(), now)
            })
            .map(|(c, _)| c.as_uuid())
            .collect();
        assert_eq!(got, expected, "candidates at {now}");
    }
    let at_400: BTreeSet<Uuid> = read
        .churn_candidates(day(400), rule)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.customer_id)
        .collect();
    assert_eq!(
        at_400,
        [2, 5, 9].into_iter().map(|c| cid(c).as_uuid()).collect()
    );
}

// ------------------------------------------------------------------ reports

#[tokio::test]
async fn the_four_reports_match_the_reference() {
    let db = TestDb::new().await;
    let world = scenario();
    let (_, read) = setup(&db, &world).await;
    let (from, to) = (day(100), day(360));

    // contribution
    let mut expected: BTreeMap<Uuid, (i64, i64)> = BTreeMap::new();
    for e in events(&world) {
        if let CustomerEvent::OrderPlaced(o) = &e.event {
            let at = e.metadata.occurred_at;
            if at >= from && at < to {
                let x = expected.entry(o.customer_id.as_uuid()).or_default();
                x.0 += 1;
                x.1 += o.total.amount;
            }
        }
    }
    let contribution = read.contribution_report(from, to).await.unwrap();
    let got: BTreeMap<Uuid, (i64, i64)> = contribution
        .iter()
        .map(|c| (c.customer_id, (c.orders, c.amount)))
        .collect();
    assert_eq!(got, expected);
    assert!(
        contribution.windows(2).all(|w| w[0].amount >= w[1].amount),
        "largest first"
    );
    assert_eq!(contribution[0].name, "Delta");

    // composition
    let mut expected: BTreeMap<(String, String), i64> = BTreeMap::new();
    for s in world.states.values() {
        let p = s.profile.as_ref().unwrap();
        *expected
            .entry(("level".into(), p.level.as_str().into()))
            .or_default() += 1;
        *expected
            .entry(("credit".into(), p.credit.to_string()))
            .or_default() += 1;
        *expected
            .entry(("satisfaction".into(), p.satisfaction.to_string()))
            .or_default() += 1;
    }
    let got: BTreeMap<(String, String), i64> = read
        .composition_report()
        .await
        .unwrap()
        .into_iter()
        .map(|r| ((r.dimension, r.value), r.customers))
        .collect();
    assert_eq!(got, expected);

    // service
    let (from, to) = (day(0), day(45));
    let mut expected: BTreeMap<String, i64> = ["consultation", "complaint", "suggestion"]
        .iter()
        .map(|k| (k.to_string(), 0))
        .collect();
    for e in events(&world) {
        if let CustomerEvent::ServiceRequestCreated(s) = &e.event {
            if e.metadata.occurred_at >= from && e.metadata.occurred_at < to {
                *expected.get_mut(s.kind.as_str()).unwrap() += 1;
            }
        }
    }
    let got: BTreeMap<String, i64> = read
        .service_report(from, to)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.kind, r.requests))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        got["suggestion"], 0,
        "created on day 70: outside the period"
    );

    // churn
    let lost = read.churn_report(day(0), day(500)).await.unwrap();
    assert_eq!(lost.len(), 1);
    assert_eq!(
        (
            lost[0].customer_id,
            lost[0].name.as_str(),
            lost[0].reason.as_str()
        ),
        (cid(5).as_uuid(), "Epsilon", "moved to a competitor")
    );
    assert_eq!(
        lost[0].measures,
        vec![
            "called the buyer".to_owned(),
            "offered 5% discount".to_owned()
        ]
    );
    assert!(read
        .churn_report(day(251), day(500))
        .await
        .unwrap()
        .is_empty());
}

// ------------------------------------------------------------------ exactly once, versions

#[tokio::test]
async fn redelivery_changes_nothing_and_a_rebuild_equals_the_live_version() {
    let db = TestDb::new().await;
    let world = scenario();
    let (projector, _) = setup(&db, &world).await;
    let v1 = projector.version().schema();
    let before = snapshot(&db.pool, &v1).await;

    // redeliver: a batch from the middle, then everything again in other batches
    let mid = batches(&world.log, &[9])[3].clone();
    let again = projector.apply(&mid).await.unwrap();
    assert_eq!((again.applied, again.skipped), (0, mid.len()));
    for batch in batches(&world.log, &[13, 2]) {
        assert_eq!(projector.apply(&batch).await.unwrap().applied, 0);
    }
    assert_same(
        &snapshot(&db.pool, &v1).await,
        &before,
        "redelivery changed nothing",
    );

    // positions: the last offset of every partition
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for (pos, _) in &world.log {
        last.insert(pos.partition, pos.offset);
    }
    let positions = projector.positions().await.unwrap();
    assert_eq!(
        positions
            .iter()
            .map(|p| (p.partition, p.offset))
            .collect::<BTreeMap<_, _>>(),
        last
    );
    assert!(positions.iter().all(|p| p.topic == TOPIC));

    // a rebuild from offset zero in one batch, into version 2, while version 1 stays live
    let (v2, status) = Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 2).unwrap())
        .await
        .unwrap();
    assert_eq!(status, VersionStatus::Building);
    assert_eq!(
        live_version(&db.pool, "rm")
            .await
            .unwrap()
            .map(|v| v.version()),
        Some(1)
    );
    let outcome = v2.apply(&world.log).await.unwrap();
    assert_eq!(outcome.applied, world.log.len());
    assert_same(
        &snapshot(&db.pool, &v2.version().schema()).await,
        &before,
        "rebuild equals the incrementally built version",
    );

    // switch over, drop the old one; the live one cannot be dropped
    activate(&db.pool, v2.version()).await.unwrap();
    assert_eq!(
        live_version(&db.pool, "rm")
            .await
            .unwrap()
            .map(|v| v.version()),
        Some(2)
    );
    assert!(drop_version(&db.pool, v2.version()).await.is_err());
    drop_version(&db.pool, projector.version()).await.unwrap();
    let (schemas,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'rm_v1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(schemas, 0);
    let (checkpoints,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM projection.checkpoints WHERE version = 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(checkpoints, 0);
}

#[tokio::test]
async fn a_failed_batch_writes_nothing_and_can_be_retried() {
    let db = TestDb::new().await;
    let world = scenario();
    let (projector, _) = Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 1).unwrap())
        .await
        .unwrap();
    let (first, rest) = world.log.split_at(40);
    projector.apply(first).await.unwrap();
    let before = snapshot(&db.pool, "rm_v1").await;
    let positions = projector.positions().await.unwrap();
    // a batch whose last event collides with an applied one (same event id at a new offset)
    let mut bad: Vec<(Position, RecordedEvent)> = rest[..10].to_vec();
    let mut dup = first[0].1.clone();
    dup.metadata.sequence = 10_000;
    let last = bad.last().unwrap().0.clone();
    bad.push((
        Position {
            offset: last.offset + 1000,
            ..last
        },
        dup,
    ));
    assert!(projector.apply(&bad).await.is_err());
    assert_same(
        &snapshot(&db.pool, "rm_v1").await,
        &before,
        "nothing of the failed batch is written",
    );
    assert_eq!(
        projector.positions().await.unwrap(),
        positions,
        "checkpoints did not move"
    );
    projector.apply(rest).await.unwrap();
    let v2 = Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 2).unwrap())
        .await
        .unwrap()
        .0;
    v2.apply(&world.log).await.unwrap();
    assert_same(
        &snapshot(&db.pool, "rm_v1").await,
        &snapshot(&db.pool, "rm_v2").await,
        "retried equals rebuilt",
    );
}

#[tokio::test]
async fn two_instances_applying_the_same_partitions_apply_each_event_once() {
    // during a rebalance the old and the new owner of a partition may both hold a batch
    let db = TestDb::new().await;
    let world = scenario();
    let version = ProjectionVersion::new("rm", 1).unwrap();
    let (a, _) = Projector::open(db.pool.clone(), version.clone())
        .await
        .unwrap();
    let (b, _) = Projector::open(db.pool.clone(), version).await.unwrap();
    let run = |p: Projector, sizes: &'static [usize], log: Vec<(Position, RecordedEvent)>| {
        tokio::spawn(async move {
            let mut applied = 0;
            for batch in batches(&log, sizes) {
                applied += p.apply(&batch).await.unwrap().applied;
            }
            applied
        })
    };
    let ta = run(a.clone(), &[5, 2, 8], world.log.clone());
    let tb = run(b, &[3, 9], world.log.clone());
    let total = ta.await.unwrap() + tb.await.unwrap();
    assert_eq!(
        total,
        world.log.len(),
        "each event applied by exactly one instance"
    );
    let (rebuilt, _) = Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 2).unwrap())
        .await
        .unwrap();
    rebuilt.apply(&world.log).await.unwrap();
    assert_same(
        &snapshot(&db.pool, "rm_v1").await,
        &snapshot(&db.pool, "rm_v2").await,
        "concurrent equals rebuilt",
    );
}

#[tokio::test]
async fn a_batch_applied_in_lanes_equals_one_applied_in_one_transaction() {
    // partitions split among lanes, each its own transaction on its own connection; every
    // batch delivered twice (a redelivery applies nothing)
    let db = TestDb::new().await;
    let world = scenario();
    let partitions: std::collections::BTreeSet<i32> =
        world.log.iter().map(|(p, _)| p.partition).collect();
    assert!(partitions.len() >= 2, "the scenario spans partitions");
    let (lanes, _) = Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 1).unwrap())
        .await
        .unwrap();
    let lanes = lanes.with_lanes(3);
    let mut applied = 0;
    for batch in batches(&world.log, &[7, 1, 12]) {
        let first = lanes.apply(&batch).await.unwrap();
        applied += first.applied;
        let again = lanes.apply(&batch).await.unwrap();
        assert_eq!((again.applied, again.skipped), (0, batch.len()));
        assert_eq!(again.positions, first.positions);
    }
    assert_eq!(applied, world.log.len());
    let (one, _) = Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 2).unwrap())
        .await
        .unwrap();
    one.apply(&world.log).await.unwrap();
    assert_same(
        &snapshot(&db.pool, "rm_v1").await,
        &snapshot(&db.pool, "rm_v2").await,
        "in lanes equals in one transaction",
    );
}
