#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every rule of `decide`, one test each.

use chrono::NaiveDate;
use domain::state::{ChurnStatus, OpportunityStatus, ServiceStatus};
use domain::*;
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn profile() -> CustomerProfile {
    CustomerProfile {
        kind: CustomerKind::Company,
        number: Some("KH-0001".into()),
        name: "上海明光贸易有限公司".into(),
        region: "华东".into(),
        industry: "wholesale".into(),
        level: CustomerLevel::Key,
        credit: 4,
        satisfaction: 3,
        registration: Registration::default(),
    }
}

fn cny(amount: i64) -> Money {
    Money {
        amount,
        currency: "CNY".into(),
    }
}

/// A customer stream driven through `decide` and `evolve`, as the services do.
struct Stream {
    state: CustomerState,
}

impl Stream {
    fn new() -> Self {
        Stream {
            state: CustomerState::new(CustomerId(id(1))),
        }
    }

    fn registered() -> Self {
        let mut s = Stream::new();
        s.ok(Command::RegisterCustomer(RegisterCustomer {
            profile: profile(),
            owner: UserId::new("am-li"),
        }));
        s
    }

    fn try_(&mut self, command: Command) -> Result<Vec<CustomerEvent>, DomainError> {
        let events = decide(&self.state, &command)?;
        for e in &events {
            let next = self.state.next_sequence();
            self.state = Customer::apply_recorded(self.state.clone(), next, e).unwrap();
        }
        Ok(events)
    }

    fn ok(&mut self, command: Command) -> Vec<CustomerEvent> {
        self.try_(command).unwrap()
    }

    fn err(&mut self, command: Command) -> DomainError {
        let version = self.state.version;
        let e = self.try_(command).unwrap_err();
        assert_eq!(
            self.state.version, version,
            "a refused command appends nothing"
        );
        e
    }

    fn with_contact(mut self) -> Self {
        self.ok(Command::AddContact(AddContact {
            contact_id: ContactId(id(10)),
            contact: ContactDetails {
                name: "王芳".into(),
                gender: Some(Gender::Female),
                position: Some("采购经理".into()),
                office_phone: None,
                mobile: Some("13800000000".into()),
                email: None,
                memo: None,
            },
        }));
        self
    }

    fn with_opportunity(mut self) -> Self {
        self.ok(open_opportunity(20));
        self
    }

    fn advance_to(&mut self, stage: Stage) {
        let o = OpportunityId(id(20));
        while self.state.opportunities[&o].stage < stage {
            let next = self.state.opportunities[&o].stage.next().unwrap();
            self.ok(change_stage(next, None));
        }
    }

    fn with_service_request(mut self) -> Self {
        self.ok(Command::CreateServiceRequest(CreateServiceRequest {
            service_request_id: ServiceRequestId(id(30)),
            kind: ServiceKind::Consultation,
            summary: "安装咨询".into(),
            request: "如何安装?".into(),
            contact_id: None,
        }));
        self
    }

    fn service_status(&self) -> ServiceStatus {
        self.state.service_requests[&ServiceRequestId(id(30))]
    }
}

fn open_opportunity(n: u128) -> Command {
    Command::OpenOpportunity(OpenOpportunity {
        opportunity_id: OpportunityId(id(n)),
        source: "referral".into(),
        title: "年度采购".into(),
        value: cny(1_000_000),
        probability: 30,
        expected_close: NaiveDate::from_ymd_opt(2026, 12, 31).unwrap(),
        contact_id: None,
        description: None,
    })
}

fn change_stage(to: Stage, reason: Option<&str>) -> Command {
    Command::ChangeStage(ChangeStage {
        opportunity_id: OpportunityId(id(20)),
        to,
        reason: reason.map(str::to_owned),
        probability: None,
    })
}

fn sr(n: u128) -> ServiceRequestId {
    ServiceRequestId(id(n))
}

fn invalid_field(e: &DomainError) -> &str {
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    e.field().unwrap()
}

// ------------------------------------------------------------ registration and profile

#[test]
fn nothing_but_registration_happens_to_an_unregistered_customer() {
    let mut s = Stream::new();
    let e = s.err(Command::RecordDelayMeasure(RecordDelayMeasure {
        measure: "call".into(),
    }));
    assert_eq!(e, DomainError::CustomerNotRegistered);
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn a_customer_registers_once() {
    let mut s = Stream::registered();
    assert_eq!(s.state.version, 1);
    let e = s.err(Command::RegisterCustomer(RegisterCustomer {
        profile: profile(),
        owner: UserId::new("am-li"),
    }));
    assert_eq!(e, DomainError::CustomerAlreadyRegistered);
    assert_eq!(e.kind(), ErrorKind::Conflict);
}

#[test]
fn ratings_are_one_to_five() {
    for (credit, satisfaction, field) in [
        (0, 3, "profile.credit"),
        (6, 3, "profile.credit"),
        (3, 9, "profile.satisfaction"),
    ] {
        let mut s = Stream::new();
        let e = s.err(Command::RegisterCustomer(RegisterCustomer {
            profile: CustomerProfile {
                credit,
                satisfaction,
                ..profile()
            },
            owner: UserId::new("am-li"),
        }));
        assert_eq!(invalid_field(&e), field);
    }
}

#[test]
fn a_customer_needs_a_name_and_an_owner() {
    let mut s = Stream::new();
    let e = s.err(Command::RegisterCustomer(RegisterCustomer {
        profile: CustomerProfile {
            name: "  ".into(),
            ..profile()
        },
        owner: UserId::new("am-li"),
    }));
    assert_eq!(invalid_field(&e), "profile.name");
    let e = s.err(Command::RegisterCustomer(RegisterCustomer {
        profile: profile(),
        owner: UserId::new(""),
    }));
    assert_eq!(invalid_field(&e), "owner");
}

#[test]
fn registration_amounts_are_not_negative() {
    let mut s = Stream::new();
    let e = s.err(Command::RegisterCustomer(RegisterCustomer {
        profile: CustomerProfile {
            registration: Registration {
                annual_turnover: Some(-1),
                ..Registration::default()
            },
            ..profile()
        },
        owner: UserId::new("am-li"),
    }));
    assert_eq!(invalid_field(&e), "profile.registration.annual_turnover");
}

#[test]
fn a_profile_change_carries_only_the_changed_fields() {
    let mut s = Stream::registered();
    let events = s.ok(Command::ChangeProfile(ChangeProfile {
        changes: ProfilePatch {
            name: Some(Some(profile().name)), // unchanged
            level: Some(Some(CustomerLevel::StrategicPartner)),
            credit: Some(Some(4)), // unchanged
            ..ProfilePatch::default()
        },
    }));
    let [CustomerEvent::ProfileChanged(e)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(
        e.changes,
        ProfileChanges {
            level: Some(CustomerLevel::StrategicPartner),
            ..ProfileChanges::default()
        }
    );
    assert_eq!(
        s.state.profile.as_ref().unwrap().level,
        CustomerLevel::StrategicPartner
    );
}

#[test]
fn a_change_to_the_current_values_appends_nothing() {
    let mut s = Stream::registered();
    let events = s.ok(Command::ChangeProfile(ChangeProfile {
        changes: ProfilePatch {
            region: Some(Some(profile().region)),
            ..ProfilePatch::default()
        },
    }));
    assert!(events.is_empty());
    assert!(s
        .ok(Command::ReassignOwner(ReassignOwner {
            to: UserId::new("am-li")
        }))
        .is_empty());
}

#[test]
fn profile_changes_are_validated() {
    let mut s = Stream::registered();
    let e = s.err(Command::ChangeProfile(ChangeProfile {
        changes: ProfilePatch {
            satisfaction: Some(Some(0)),
            ..ProfilePatch::default()
        },
    }));
    assert_eq!(invalid_field(&e), "changes.satisfaction");
    // a required field cannot be cleared
    let e = s.err(Command::ChangeProfile(ChangeProfile {
        changes: ProfilePatch {
            name: Some(None),
            ..ProfilePatch::default()
        },
    }));
    assert_eq!(invalid_field(&e), "changes.name");
}

/// `PATCH /v1/customers/{id}` is JSON Merge Patch (RFC 7396). The defect: after registering
/// with 14 registration fields, `{"registration": {"phone": "123"}}` left only the phone,
/// and `{"fax": null}` then left nothing.
#[test]
fn a_profile_change_merges_the_registration_block() {
    let mut s = Stream::new();
    let full: Registration = serde_json::from_value(serde_json::json!({
        "address": "杭州市西湖区文三路 1 号", "postcode": "310012", "phone": "0571-1", "fax": "0571-2",
        "website": "https://example.cn", "licence_number": "L-1", "legal_representative": "王",
        "registered_capital": 100, "annual_turnover": 200, "currency": "CNY", "bank": "工行",
        "bank_account": "6222", "local_tax_number": "T-L", "national_tax_number": "T-N"
    }))
    .unwrap();
    s.ok(Command::RegisterCustomer(RegisterCustomer {
        profile: CustomerProfile {
            registration: full.clone(),
            number: Some("C-1".into()),
            ..profile()
        },
        owner: UserId::new("am-li"),
    }));
    // one field set: the event carries exactly it; the other 13 stay
    let patch = |v: serde_json::Value| -> Command {
        Command::ChangeProfile(serde_json::from_value(v).unwrap())
    };
    let events = s.ok(patch(
        serde_json::json!({"changes": {"registration": {"phone": "123"}}}),
    ));
    let [CustomerEvent::ProfileChanged(e)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(
        e.changes,
        ProfileChanges {
            registration_changes: Some(Box::new(Registration {
                phone: Some("123".into()),
                ..Registration::default()
            })),
            ..ProfileChanges::default()
        }
    );
    let expected = Registration {
        phone: Some("123".into()),
        ..full.clone()
    };
    assert_eq!(s.state.profile.as_ref().unwrap().registration, expected);
    // null clears one optional field, and only it
    let events = s.ok(patch(
        serde_json::json!({"changes": {"registration": {"fax": null}}}),
    ));
    let [CustomerEvent::ProfileChanged(e)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(e.changes.cleared, vec!["registration.fax".to_owned()]);
    assert_eq!(e.changes.registration_changes, None);
    let expected = Registration {
        fax: None,
        ..expected
    };
    assert_eq!(s.state.profile.as_ref().unwrap().registration, expected);
    // clearing what is already clear, or setting what is already so, appends nothing
    assert!(s
        .ok(patch(
            serde_json::json!({"changes": {"registration": {"fax": null, "phone": "123"}}})
        ))
        .is_empty());
    // number: null clears it
    let events = s.ok(patch(serde_json::json!({"changes": {"number": null}})));
    let [CustomerEvent::ProfileChanged(e)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(e.changes.cleared, vec!["number".to_owned()]);
    assert_eq!(s.state.profile.as_ref().unwrap().number, None);
    // registration: null clears the whole block, naming each field cleared
    let events = s.ok(patch(
        serde_json::json!({"changes": {"registration": null}}),
    ));
    let [CustomerEvent::ProfileChanged(e)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(e.changes.cleared.len(), 13);
    assert_eq!(
        s.state.profile.as_ref().unwrap().registration,
        Registration::default()
    );
    // an unknown registration field is refused, naming it
    assert!(serde_json::from_value::<ChangeProfile>(
        serde_json::json!({"changes": {"registration": {"telex": "1"}}})
    )
    .is_err());
}

#[test]
fn reassigning_the_owner_records_from_and_to() {
    let mut s = Stream::registered();
    let events = s.ok(Command::ReassignOwner(ReassignOwner {
        to: UserId::new("am-zhao"),
    }));
    assert_eq!(
        events,
        vec![CustomerEvent::OwnerReassigned(OwnerReassigned {
            customer_id: CustomerId(id(1)),
            from: UserId::new("am-li"),
            to: UserId::new("am-zhao"),
        })]
    );
    assert_eq!(s.state.owner, Some(UserId::new("am-zhao")));
}

// ------------------------------------------------------------ contacts and touchpoints

#[test]
fn contacts_are_added_changed_and_removed() {
    let mut s = Stream::registered().with_contact();
    let c = ContactId(id(10));
    let e = s.err(Command::AddContact(AddContact {
        contact_id: c,
        contact: s.state.contacts[&c].clone(),
    }));
    assert_eq!(e.kind(), ErrorKind::Conflict);
    s.ok(Command::ChangeContact(ChangeContact {
        contact_id: c,
        changes: ContactChanges {
            position: Some("总经理".into()),
            ..ContactChanges::default()
        },
    }));
    assert_eq!(s.state.contacts[&c].position.as_deref(), Some("总经理"));
    s.ok(Command::RemoveContact(RemoveContact { contact_id: c }));
    let e = s.err(Command::RemoveContact(RemoveContact { contact_id: c }));
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(e.field(), Some("contact_id"));
}

#[test]
fn a_touchpoint_names_only_existing_contacts_and_opportunities() {
    let mut s = Stream::registered().with_contact().with_opportunity();
    let touchpoint = |contact: u128, opportunity: u128| {
        Command::RecordTouchpoint(RecordTouchpoint {
            touchpoint_id: TouchpointId(Uuid::now_v7()),
            touchpoint: Touchpoint {
                channel: Channel::PhoneCall {
                    direction: Direction::Inbound,
                    duration_seconds: 300,
                    wait_seconds: 12,
                    outcome: CallOutcome::Answered,
                },
                summary: "询价".into(),
                contact_id: Some(ContactId(id(contact))),
                opportunity_id: Some(OpportunityId(id(opportunity))),
            },
        })
    };
    assert_eq!(s.ok(touchpoint(10, 20)).len(), 1);
    assert_eq!(
        s.err(touchpoint(11, 20)).field(),
        Some("touchpoint.contact_id")
    );
    assert_eq!(
        s.err(touchpoint(10, 21)).field(),
        Some("touchpoint.opportunity_id")
    );
}

#[test]
fn every_channel_is_recorded() {
    let mut s = Stream::registered();
    let channels = vec![
        Channel::PhoneCall {
            direction: Direction::Outbound,
            duration_seconds: 60,
            wait_seconds: 0,
            outcome: CallOutcome::NoAnswer,
        },
        Channel::Email {
            direction: Direction::Inbound,
            subject: "报价".into(),
        },
        Channel::Visit {
            place: "客户办公室".into(),
        },
        Channel::Wechat {
            direction: Direction::Inbound,
        },
        Channel::WebForm {
            form: Some("contact-us".into()),
        },
        Channel::FaxLetter {
            direction: Direction::Outbound,
        },
    ];
    for channel in channels {
        let events = s.ok(Command::RecordTouchpoint(RecordTouchpoint {
            touchpoint_id: TouchpointId(Uuid::now_v7()),
            touchpoint: Touchpoint {
                channel,
                summary: "s".into(),
                contact_id: None,
                opportunity_id: None,
            },
        }));
        assert_eq!(events[0].event_type(), "crm.touchpoint.recorded.v1");
    }
    assert_eq!(s.state.version, 7);
    let e = s.err(Command::RecordTouchpoint(RecordTouchpoint {
        touchpoint_id: TouchpointId(Uuid::now_v7()),
        touchpoint: Touchpoint {
            channel: Channel::Visit { place: "".into() },
            summary: "s".into(),
            contact_id: None,
            opportunity_id: None,
        },
    }));
    assert_eq!(invalid_field(&e), "touchpoint.channel.place");
}

// ------------------------------------------------------------ complaints

#[test]
fn a_complaint_is_lodged_handled_then_closed() {
    let mut s = Stream::registered();
    let c = ComplaintId(id(40));
    s.ok(Command::LodgeComplaint(LodgeComplaint {
        complaint_id: c,
        category: ComplaintCategory::Product,
        sub_category: "quality".into(),
        urgency: Priority::High,
        importance: Priority::Normal,
        description: "外壳开裂".into(),
        contact_id: None,
    }));
    let close = || {
        Command::CloseComplaint(CloseComplaint {
            complaint_id: c,
            resolution: "换货".into(),
        })
    };
    assert_eq!(
        s.err(close()).kind(),
        ErrorKind::Conflict,
        "not handled yet"
    );
    let handle = || {
        Command::HandleComplaint(HandleComplaint {
            complaint_id: c,
            handling: "上门检查".into(),
            cause_analysis: None,
        })
    };
    s.ok(handle());
    s.ok(handle()); // handling has a history
    s.ok(close());
    assert_eq!(s.err(handle()).kind(), ErrorKind::Conflict, "closed");
    assert_eq!(s.err(close()).kind(), ErrorKind::Conflict, "closed");
}

#[test]
fn a_complaint_needs_a_sub_category_and_description() {
    let mut s = Stream::registered();
    let e = s.err(Command::LodgeComplaint(LodgeComplaint {
        complaint_id: ComplaintId(id(40)),
        category: ComplaintCategory::Staff,
        sub_category: "".into(),
        urgency: Priority::Low,
        importance: Priority::Low,
        description: "x".into(),
        contact_id: None,
    }));
    assert_eq!(invalid_field(&e), "sub_category");
}

// ------------------------------------------------------------ opportunities and the funnel

#[test]
fn an_opportunity_starts_in_qualification_and_moves_one_step_forward() {
    let mut s = Stream::registered().with_opportunity();
    let o = OpportunityId(id(20));
    assert_eq!(s.state.opportunities[&o].stage, Stage::Qualification);
    let e = s.err(change_stage(Stage::Evaluation, None));
    assert!(matches!(e, DomainError::StageNotAdjacent { .. }), "{e}");
    assert_eq!(e.field(), Some("to"));
    let events = s.ok(change_stage(Stage::Proposal, None));
    let [CustomerEvent::OpportunityStageChanged(changed)] = events.as_slice() else {
        panic!()
    };
    assert_eq!(
        (changed.from, changed.to),
        (Stage::Qualification, Stage::Proposal)
    );
    assert_eq!(
        s.err(change_stage(Stage::Proposal, None)).kind(),
        ErrorKind::Invalid,
        "same stage"
    );
}

#[test]
fn moving_back_one_step_needs_a_reason() {
    let mut s = Stream::registered().with_opportunity();
    s.advance_to(Stage::Evaluation);
    assert_eq!(
        invalid_field(&s.err(change_stage(Stage::Proposal, None))),
        "reason"
    );
    assert_eq!(
        invalid_field(&s.err(change_stage(Stage::Proposal, Some(" ")))),
        "reason"
    );
    assert!(matches!(
        s.err(change_stage(Stage::Qualification, Some("x"))),
        DomainError::StageNotAdjacent { .. }
    ));
    s.ok(change_stage(Stage::Proposal, Some("客户要求修改方案")));
    assert_eq!(
        s.state.opportunities[&OpportunityId(id(20))].stage,
        Stage::Proposal
    );
}

#[test]
fn probabilities_are_zero_to_hundred() {
    let mut s = Stream::registered();
    let Command::OpenOpportunity(mut open) = open_opportunity(20) else {
        unreachable!()
    };
    open.probability = 101;
    assert_eq!(
        invalid_field(&s.err(Command::OpenOpportunity(open.clone()))),
        "probability"
    );
    open.probability = 100;
    s.ok(Command::OpenOpportunity(open));
    let e = s.err(Command::ChangeStage(ChangeStage {
        opportunity_id: OpportunityId(id(20)),
        to: Stage::Proposal,
        reason: None,
        probability: Some(150),
    }));
    assert_eq!(invalid_field(&e), "probability");
}

#[test]
fn amounts_are_never_negative() {
    let mut s = Stream::registered();
    let Command::OpenOpportunity(mut open) = open_opportunity(20) else {
        unreachable!()
    };
    open.value = cny(-5);
    assert_eq!(
        invalid_field(&s.err(Command::OpenOpportunity(open.clone()))),
        "value.amount"
    );
    open.value = Money {
        amount: 5,
        currency: "rmb".into(),
    };
    assert_eq!(
        invalid_field(&s.err(Command::OpenOpportunity(open))),
        "value.currency"
    );
}

#[test]
fn an_opportunity_is_won_only_from_negotiation() {
    let mut s = Stream::registered().with_opportunity();
    let win = || {
        Command::WinOpportunity(WinOpportunity {
            opportunity_id: OpportunityId(id(20)),
            value: None,
        })
    };
    assert_eq!(s.err(win()).kind(), ErrorKind::Conflict);
    s.advance_to(Stage::Negotiation);
    let events = s.ok(win());
    let [CustomerEvent::OpportunityWon(won)] = events.as_slice() else {
        panic!()
    };
    assert_eq!(
        won.value,
        cny(1_000_000),
        "the estimate when no signed value is given"
    );
}

#[test]
fn nothing_happens_after_won_or_lost_except_reopen() {
    let mut s = Stream::registered().with_opportunity();
    let o = OpportunityId(id(20));
    s.ok(Command::LoseOpportunity(LoseOpportunity {
        opportunity_id: o,
        reason: "价格过高".into(),
    }));
    assert_eq!(s.state.opportunities[&o].status, OpportunityStatus::Lost);
    let refused = [
        change_stage(Stage::Proposal, None),
        Command::AssignOpportunity(AssignOpportunity {
            opportunity_id: o,
            owner: UserId::new("am-zhao"),
        }),
        Command::AddPlanItem(AddPlanItem {
            opportunity_id: o,
            plan_item_id: PlanItemId(id(50)),
            item: PlanItem {
                due_on: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
                action: "拜访".into(),
            },
        }),
        Command::WinOpportunity(WinOpportunity {
            opportunity_id: o,
            value: None,
        }),
        Command::LoseOpportunity(LoseOpportunity {
            opportunity_id: o,
            reason: "again".into(),
        }),
    ];
    for c in refused {
        assert_eq!(s.err(c.clone()).kind(), ErrorKind::Conflict, "{c:?}");
    }
    let events = s.ok(Command::ReopenOpportunity(ReopenOpportunity {
        opportunity_id: o,
        reason: "客户回心转意".into(),
    }));
    let [CustomerEvent::OpportunityReopened(r)] = events.as_slice() else {
        panic!()
    };
    assert_eq!(r.stage, Stage::Qualification, "reopened where it ended");
    assert_eq!(s.state.opportunities[&o].status, OpportunityStatus::Open);
    assert_eq!(
        s.err(Command::ReopenOpportunity(ReopenOpportunity {
            opportunity_id: o,
            reason: "x".into()
        }))
        .kind(),
        ErrorKind::Conflict,
        "an open opportunity is not reopened"
    );
}

#[test]
fn a_won_opportunity_keeps_its_stage_and_reopens_there() {
    let mut s = Stream::registered().with_opportunity();
    s.advance_to(Stage::Negotiation);
    let o = OpportunityId(id(20));
    s.ok(Command::WinOpportunity(WinOpportunity {
        opportunity_id: o,
        value: Some(cny(900_000)),
    }));
    s.ok(Command::ReopenOpportunity(ReopenOpportunity {
        opportunity_id: o,
        reason: "合同作废".into(),
    }));
    assert_eq!(s.state.opportunities[&o].stage, Stage::Negotiation);
}

#[test]
fn a_plan_item_gets_one_result() {
    let mut s = Stream::registered().with_opportunity();
    let o = OpportunityId(id(20));
    let p = PlanItemId(id(50));
    let result = || {
        Command::RecordPlanResult(RecordPlanResult {
            opportunity_id: o,
            plan_item_id: p,
            result: "客户满意".into(),
        })
    };
    assert_eq!(s.err(result()).kind(), ErrorKind::NotFound);
    s.ok(Command::AddPlanItem(AddPlanItem {
        opportunity_id: o,
        plan_item_id: p,
        item: PlanItem {
            due_on: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            action: "演示产品".into(),
        },
    }));
    s.ok(result());
    assert_eq!(s.err(result()).kind(), ErrorKind::Conflict);
}

#[test]
fn an_opportunity_id_is_used_once() {
    let mut s = Stream::registered().with_opportunity();
    assert_eq!(s.err(open_opportunity(20)).kind(), ErrorKind::Conflict);
}

// ------------------------------------------------------------ orders

fn order(number: &str, lines: Vec<OrderLine>, total: i64) -> Command {
    Command::PlaceOrder(PlaceOrder {
        order_number: OrderNumber(number.into()),
        lines,
        total: cny(total),
        delivery_address: None,
    })
}

fn line(quantity: u32, unit_price: i64) -> OrderLine {
    OrderLine {
        product: "打印机".into(),
        quantity,
        unit_price,
    }
}

#[test]
fn an_order_total_equals_its_lines() {
    let mut s = Stream::registered();
    s.ok(order(
        "SO-1",
        vec![line(2, 150_000), line(1, 20_000)],
        320_000,
    ));
    let e = s.err(order("SO-2", vec![line(2, 150_000)], 1));
    assert_eq!(invalid_field(&e), "total.amount");
    s.ok(order("SO-3", vec![], 5_000)); // a total without lines, as some ERPs send
}

#[test]
fn order_lines_are_validated() {
    let mut s = Stream::registered();
    assert_eq!(
        invalid_field(&s.err(order("SO-1", vec![line(0, 1)], 0))),
        "lines[0].quantity"
    );
    assert_eq!(
        invalid_field(&s.err(order("SO-1", vec![line(1, 1), line(1, -1)], 0))),
        "lines[1].unit_price"
    );
    assert_eq!(
        invalid_field(&s.err(order("SO-1", vec![], -1))),
        "total.amount"
    );
    // past the largest amount
    assert_eq!(
        invalid_field(&s.err(order("SO-1", vec![line(u32::MAX, i64::MAX)], 0))),
        "lines[0].unit_price"
    );
    // each within it, their product overflows
    assert_eq!(
        invalid_field(&s.err(order(
            "SO-1",
            vec![line(u32::MAX, domain::limits::MAX_AMOUNT)],
            0
        ))),
        "lines[0]"
    );
}

#[test]
fn an_order_number_is_placed_once() {
    let mut s = Stream::registered();
    s.ok(order("SO-1", vec![], 100));
    let e = s.err(order("SO-1", vec![], 100));
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(e.field(), Some("order_number"));
}

// ------------------------------------------------------------ service requests

fn assign(n: u128) -> Command {
    Command::AssignServiceRequest(AssignServiceRequest {
        service_request_id: sr(n),
        assignee: UserId::new("agent-chen"),
    })
}
fn handle(n: u128) -> Command {
    Command::HandleServiceRequest(HandleServiceRequest {
        service_request_id: sr(n),
        handling: "电话指导".into(),
    })
}
fn feedback(n: u128, satisfaction: u8) -> Command {
    Command::GiveServiceFeedback(GiveServiceFeedback {
        service_request_id: sr(n),
        result: "ok".into(),
        satisfaction,
    })
}
fn archive(n: u128) -> Command {
    Command::ArchiveServiceRequest(ArchiveServiceRequest {
        service_request_id: sr(n),
    })
}

#[test]
fn a_service_request_goes_create_assign_handle_feedback_archive() {
    let mut s = Stream::registered().with_service_request();
    assert_eq!(s.service_status(), ServiceStatus::Created);
    for c in [handle(30), feedback(30, 4), archive(30)] {
        assert_eq!(s.err(c).kind(), ErrorKind::Conflict);
    }
    s.ok(assign(30));
    for c in [feedback(30, 4), archive(30)] {
        assert_eq!(s.err(c).kind(), ErrorKind::Conflict);
    }
    s.ok(handle(30));
    assert_eq!(
        s.err(archive(30)).kind(),
        ErrorKind::Conflict,
        "no feedback yet"
    );
    s.ok(feedback(30, 3));
    assert_eq!(s.service_status(), ServiceStatus::Satisfied);
    s.ok(archive(30));
    assert_eq!(s.service_status(), ServiceStatus::Archived);
    for c in [assign(30), handle(30), feedback(30, 5), archive(30)] {
        assert_eq!(s.err(c).kind(), ErrorKind::Conflict);
    }
}

#[test]
fn feedback_below_three_sends_the_request_back_to_handling() {
    let mut s = Stream::registered().with_service_request();
    s.ok(assign(30));
    s.ok(handle(30));
    s.ok(feedback(30, 2));
    assert_eq!(s.service_status(), ServiceStatus::Assigned);
    assert_eq!(s.err(archive(30)).kind(), ErrorKind::Conflict);
    s.ok(handle(30));
    s.ok(feedback(30, 5));
    s.ok(archive(30));
}

#[test]
fn satisfaction_is_one_to_five() {
    let mut s = Stream::registered().with_service_request();
    s.ok(assign(30));
    s.ok(handle(30));
    assert_eq!(invalid_field(&s.err(feedback(30, 0))), "satisfaction");
    assert_eq!(invalid_field(&s.err(feedback(30, 6))), "satisfaction");
}

#[test]
fn an_unknown_service_request_is_not_found() {
    let mut s = Stream::registered();
    let e = s.err(assign(99));
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(e.field(), Some("service_request_id"));
}

// ------------------------------------------------------------ churn

fn warn(n: u128) -> Command {
    Command::RaiseChurnWarning(RaiseChurnWarning {
        churn_case_id: ChurnCaseId(id(n)),
        reason: "180 天无订单".into(),
        last_order_at: None,
    })
}
fn confirm() -> Command {
    Command::ConfirmChurn(ConfirmChurn {
        reason: "转向竞争对手".into(),
    })
}
fn reactivate() -> Command {
    Command::ReactivateCustomer(ReactivateCustomer {
        reason: "新订单".into(),
    })
}
fn delay() -> Command {
    Command::RecordDelayMeasure(RecordDelayMeasure {
        measure: "赠送保养服务".into(),
    })
}

#[test]
fn churn_is_confirmed_only_after_a_warning() {
    let mut s = Stream::registered();
    assert_eq!(s.err(confirm()).kind(), ErrorKind::Conflict);
    assert_eq!(s.err(delay()).kind(), ErrorKind::Conflict);
    s.ok(warn(60));
    assert_eq!(s.state.churn, ChurnStatus::AtRisk(ChurnCaseId(id(60))));
    assert_eq!(
        s.err(warn(61)).kind(),
        ErrorKind::Conflict,
        "one open case at a time"
    );
    s.ok(delay());
    s.ok(delay()); // several measures
    let events = s.ok(confirm());
    let [CustomerEvent::ChurnConfirmed(c)] = events.as_slice() else {
        panic!()
    };
    assert_eq!(
        c.churn_case_id,
        ChurnCaseId(id(60)),
        "the case of the warning"
    );
    assert_eq!(s.state.churn, ChurnStatus::Lost(ChurnCaseId(id(60))));
    assert_eq!(s.err(confirm()).kind(), ErrorKind::Conflict);
}

#[test]
fn a_customer_is_reactivated_from_at_risk_or_lost() {
    let mut s = Stream::registered();
    assert_eq!(
        s.err(reactivate()).kind(),
        ErrorKind::Conflict,
        "an active customer"
    );
    s.ok(warn(60));
    s.ok(reactivate());
    assert_eq!(s.state.churn, ChurnStatus::Active);
    s.ok(warn(61));
    s.ok(confirm());
    s.ok(reactivate());
    assert_eq!(s.state.churn, ChurnStatus::Active);
}

// ------------------------------------------------------------ sequence numbers

#[test]
fn sequence_numbers_are_contiguous() {
    let s = Stream::registered().with_contact().with_opportunity();
    assert_eq!(s.state.version, 3);
    let event = CustomerEvent::ContactRemoved(ContactRemoved {
        customer_id: CustomerId(id(1)),
        contact_id: ContactId(id(10)),
    });
    let e = Customer::apply_recorded(s.state.clone(), 5, &event).unwrap_err();
    assert_eq!(
        e,
        DomainError::OutOfSequence {
            expected: 4,
            got: 5
        }
    );
    let e = Customer::apply_recorded(s.state.clone(), 3, &event).unwrap_err();
    assert_eq!(
        e,
        DomainError::OutOfSequence {
            expected: 4,
            got: 3
        }
    );
    assert_eq!(
        Customer::apply_recorded(s.state.clone(), 4, &event)
            .unwrap()
            .version,
        4
    );
}

#[test]
fn an_event_of_another_customer_is_refused() {
    let s = Stream::registered();
    let event = CustomerEvent::ContactRemoved(ContactRemoved {
        customer_id: CustomerId(id(2)),
        contact_id: ContactId(id(10)),
    });
    assert!(matches!(
        Customer::apply_recorded(s.state, 2, &event),
        Err(DomainError::WrongStream { .. })
    ));
}

#[test]
fn events_are_stamped_with_the_stream_s_customer() {
    let mut s = Stream::registered()
        .with_contact()
        .with_opportunity()
        .with_service_request();
    for e in s.ok(warn(60)) {
        assert_eq!(e.customer_id(), CustomerId(id(1)));
    }
}
