#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Random command sequences never break an invariant, and `evolve` applied to `decide`'s
//! output always gives a state the next `decide` can work from.

use chrono::NaiveDate;
use domain::state::{ChurnStatus, OpportunityStatus};
use domain::*;
use proptest::prelude::*;
use uuid::Uuid;

const CUSTOMER: u128 = 1;

fn id(kind: u128, n: u8) -> Uuid {
    Uuid::from_u128(kind << 64 | u128::from(n))
}

fn cny(amount: i64) -> Money {
    Money {
        amount,
        currency: "CNY".into(),
    }
}

fn text(empty: bool) -> String {
    if empty {
        " ".into()
    } else {
        "文本".into()
    }
}

fn stage() -> impl Strategy<Value = Stage> {
    prop::sample::select(Stage::ALL.to_vec())
}

/// Commands over small pools of ids, so that sequences hit existing and missing entities,
/// valid and invalid values, in every order.
fn command() -> impl Strategy<Value = Command> {
    let n = 0u8..3;
    prop_oneof![
        (1u8..=5, 0u8..=6).prop_map(|(credit, satisfaction)| Command::RegisterCustomer(
            RegisterCustomer {
                profile: CustomerProfile {
                    kind: CustomerKind::Company,
                    number: None,
                    name: "客户".into(),
                    region: "华北".into(),
                    industry: "retail".into(),
                    level: CustomerLevel::Ordinary,
                    credit,
                    satisfaction,
                    registration: Registration::default(),
                },
                owner: UserId::new("am"),
            }
        )),
        (0u8..=6).prop_map(|credit| Command::ChangeProfile(ChangeProfile {
            changes: ProfilePatch {
                credit: Some(Some(credit)),
                ..ProfilePatch::default()
            }
        })),
        (0u8..3).prop_map(|o| Command::ReassignOwner(ReassignOwner {
            to: UserId::new(format!("am-{o}"))
        })),
        (n.clone(), any::<bool>()).prop_map(|(c, empty)| Command::AddContact(AddContact {
            contact_id: ContactId(id(2, c)),
            contact: ContactDetails {
                name: text(empty),
                gender: None,
                position: None,
                office_phone: None,
                mobile: None,
                email: None,
                memo: None
            },
        })),
        n.clone()
            .prop_map(|c| Command::RemoveContact(RemoveContact {
                contact_id: ContactId(id(2, c))
            })),
        (prop::option::of(n.clone()), prop::option::of(n.clone())).prop_map(|(c, o)| {
            Command::RecordTouchpoint(RecordTouchpoint {
                touchpoint_id: TouchpointId(Uuid::nil()),
                touchpoint: Touchpoint {
                    channel: Channel::Wechat {
                        direction: Direction::Inbound,
                    },
                    summary: "s".into(),
                    contact_id: c.map(|c| ContactId(id(2, c))),
                    opportunity_id: o.map(|o| OpportunityId(id(3, o))),
                },
            })
        }),
        (n.clone(), 0u8..=120, -10i64..1000).prop_map(|(o, probability, amount)| {
            Command::OpenOpportunity(OpenOpportunity {
                opportunity_id: OpportunityId(id(3, o)),
                source: "web".into(),
                title: "t".into(),
                value: cny(amount),
                probability,
                expected_close: NaiveDate::from_ymd_opt(2027, 1, 1).unwrap(),
                contact_id: None,
                description: None,
            })
        }),
        (
            n.clone(),
            stage(),
            any::<bool>(),
            prop::option::of(0u8..=120)
        )
            .prop_map(
                |(o, to, reason, probability)| Command::ChangeStage(ChangeStage {
                    opportunity_id: OpportunityId(id(3, o)),
                    to,
                    reason: reason.then(|| "why".into()),
                    probability,
                })
            ),
        (n.clone(), n.clone()).prop_map(|(o, p)| Command::AddPlanItem(AddPlanItem {
            opportunity_id: OpportunityId(id(3, o)),
            plan_item_id: PlanItemId(id(4, p)),
            item: PlanItem {
                due_on: NaiveDate::from_ymd_opt(2026, 5, 1).unwrap(),
                action: "a".into()
            },
        })),
        (n.clone(), n.clone()).prop_map(|(o, p)| Command::RecordPlanResult(RecordPlanResult {
            opportunity_id: OpportunityId(id(3, o)),
            plan_item_id: PlanItemId(id(4, p)),
            result: "r".into(),
        })),
        (n.clone(), prop::option::of(-10i64..1000)).prop_map(|(o, v)| Command::WinOpportunity(
            WinOpportunity {
                opportunity_id: OpportunityId(id(3, o)),
                value: v.map(cny)
            }
        )),
        (n.clone(), any::<bool>()).prop_map(|(o, empty)| Command::LoseOpportunity(
            LoseOpportunity {
                opportunity_id: OpportunityId(id(3, o)),
                reason: text(empty)
            }
        )),
        n.clone()
            .prop_map(|o| Command::ReopenOpportunity(ReopenOpportunity {
                opportunity_id: OpportunityId(id(3, o)),
                reason: "r".into()
            })),
        (n.clone(), -5i64..100, 0u32..3).prop_map(|(k, price, quantity)| Command::PlaceOrder(
            PlaceOrder {
                order_number: OrderNumber(format!("SO-{k}")),
                lines: vec![OrderLine {
                    product: "p".into(),
                    quantity,
                    unit_price: price
                }],
                total: cny(price * i64::from(quantity)),
                delivery_address: None,
            }
        )),
        n.clone()
            .prop_map(|s| Command::CreateServiceRequest(CreateServiceRequest {
                service_request_id: ServiceRequestId(id(5, s)),
                kind: ServiceKind::Complaint,
                summary: "s".into(),
                request: "r".into(),
                contact_id: None,
            })),
        n.clone()
            .prop_map(|s| Command::AssignServiceRequest(AssignServiceRequest {
                service_request_id: ServiceRequestId(id(5, s)),
                assignee: UserId::new("agent")
            })),
        n.clone()
            .prop_map(|s| Command::HandleServiceRequest(HandleServiceRequest {
                service_request_id: ServiceRequestId(id(5, s)),
                handling: "h".into()
            })),
        (n.clone(), 0u8..=6).prop_map(|(s, satisfaction)| Command::GiveServiceFeedback(
            GiveServiceFeedback {
                service_request_id: ServiceRequestId(id(5, s)),
                result: "r".into(),
                satisfaction
            }
        )),
        n.clone()
            .prop_map(|s| Command::ArchiveServiceRequest(ArchiveServiceRequest {
                service_request_id: ServiceRequestId(id(5, s))
            })),
        n.clone()
            .prop_map(|c| Command::LodgeComplaint(LodgeComplaint {
                complaint_id: ComplaintId(id(6, c)),
                category: ComplaintCategory::Service,
                sub_category: "fees".into(),
                urgency: Priority::High,
                importance: Priority::Low,
                description: "d".into(),
                contact_id: None,
            })),
        n.clone()
            .prop_map(|c| Command::HandleComplaint(HandleComplaint {
                complaint_id: ComplaintId(id(6, c)),
                handling: "h".into(),
                cause_analysis: None
            })),
        n.clone()
            .prop_map(|c| Command::CloseComplaint(CloseComplaint {
                complaint_id: ComplaintId(id(6, c)),
                resolution: "r".into()
            })),
        n.clone()
            .prop_map(|c| Command::RaiseChurnWarning(RaiseChurnWarning {
                churn_case_id: ChurnCaseId(id(7, c)),
                reason: "r".into(),
                last_order_at: None
            })),
        Just(Command::RecordDelayMeasure(RecordDelayMeasure {
            measure: "m".into()
        })),
        Just(Command::ConfirmChurn(ConfirmChurn { reason: "r".into() })),
        Just(Command::ReactivateCustomer(ReactivateCustomer {
            reason: "r".into()
        })),
    ]
}

fn money_ok(m: &Money) -> bool {
    m.amount >= 0 && m.currency.len() == 3
}

/// What every decided event must satisfy, given the state it was decided on.
fn check_event(before: &CustomerState, event: &CustomerEvent) -> Result<(), TestCaseError> {
    prop_assert_eq!(event.customer_id(), before.customer_id);
    match event {
        CustomerEvent::OpportunityStageChanged(e) => {
            let o = &before.opportunities[&e.opportunity_id];
            prop_assert_eq!(o.status, OpportunityStatus::Open);
            prop_assert_eq!(o.stage, e.from);
            let forward = e.from.next() == Some(e.to);
            let back = e.from.previous() == Some(e.to);
            prop_assert!(forward || back, "{:?} -> {:?}", e.from, e.to);
            if back {
                prop_assert!(e.reason.as_deref().is_some_and(|r| !r.trim().is_empty()));
            }
            prop_assert!(e.probability.is_none_or(|p| p <= 100));
        }
        CustomerEvent::OpportunityOpened(e) => {
            prop_assert!(e.probability <= 100);
            prop_assert!(money_ok(&e.value));
        }
        CustomerEvent::OpportunityWon(e) => {
            let o = &before.opportunities[&e.opportunity_id];
            prop_assert_eq!(o.status, OpportunityStatus::Open);
            prop_assert_eq!(o.stage, Stage::Negotiation);
            prop_assert!(money_ok(&e.value));
        }
        CustomerEvent::OpportunityAssigned(e) => {
            prop_assert_eq!(
                before.opportunities[&e.opportunity_id].status,
                OpportunityStatus::Open
            );
        }
        CustomerEvent::PlanItemAdded(e) => {
            prop_assert_eq!(
                before.opportunities[&e.opportunity_id].status,
                OpportunityStatus::Open
            );
        }
        CustomerEvent::OpportunityReopened(e) => {
            prop_assert_ne!(
                before.opportunities[&e.opportunity_id].status,
                OpportunityStatus::Open
            );
        }
        CustomerEvent::OrderPlaced(e) => {
            prop_assert!(money_ok(&e.total));
            prop_assert!(e.lines.iter().all(|l| l.quantity > 0 && l.unit_price >= 0));
            prop_assert!(!before.orders.contains(&e.order_number));
        }
        CustomerEvent::ServiceFeedbackGiven(e) => prop_assert!((1..=5).contains(&e.satisfaction)),
        CustomerEvent::ChurnConfirmed(_) | CustomerEvent::ChurnDelayMeasureRecorded(_) => {
            prop_assert!(matches!(before.churn, ChurnStatus::AtRisk(_)));
        }
        CustomerEvent::CustomerReactivated(_) => prop_assert_ne!(before.churn, ChurnStatus::Active),
        CustomerEvent::CustomerRegistered(e) => {
            prop_assert!(!before.is_registered());
            prop_assert!(
                (1..=5).contains(&e.profile.credit) && (1..=5).contains(&e.profile.satisfaction)
            );
        }
        _ => prop_assert!(before.is_registered()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_invariant(commands in prop::collection::vec(command(), 1..80)) {
        let customer_id = CustomerId(Uuid::from_u128(CUSTOMER));
        let mut state = CustomerState::new(customer_id);
        let mut log: Vec<(u64, CustomerEvent)> = Vec::new();
        for command in &commands {
            let before = state.clone();
            match decide(&state, command) {
                Ok(events) => {
                    // deciding is deterministic
                    prop_assert_eq!(decide(&before, command), Ok(events.clone()));
                    for event in &events {
                        check_event(&state, event)?;
                        let sequence = state.next_sequence();
                        state = Customer::apply_recorded(state, sequence, event)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        log.push((sequence, event.clone()));
                    }
                }
                Err(error) => {
                    // a refusal explains itself and names a field where it is about one
                    prop_assert!(!error.to_string().is_empty());
                    if error.kind() == ErrorKind::Invalid {
                        prop_assert!(error.field().is_some(), "{}", error);
                    }
                    let internal = matches!(error, DomainError::OutOfSequence { .. } | DomainError::WrongStream { .. });
                    prop_assert!(!internal, "{}", error);
                }
            }
        }
        // sequence numbers are 1, 2, 3, ... without gaps or duplicates
        for (i, (sequence, _)) in log.iter().enumerate() {
            prop_assert_eq!(*sequence, i as u64 + 1);
        }
        prop_assert_eq!(state.version, log.len() as u64);
        // replaying the stream from scratch gives the same state
        let replayed = log.iter().try_fold(CustomerState::new(customer_id), |s, (seq, e)| Customer::apply_recorded(s, *seq, e));
        prop_assert_eq!(replayed.as_ref(), Ok(&state));
        // state invariants
        for o in state.opportunities.values() {
            if o.status == OpportunityStatus::Won {
                prop_assert_eq!(o.stage, Stage::Negotiation);
            }
            prop_assert!(money_ok(&o.value));
        }
        // the evolved state still accepts what it must: a plain touchpoint once registered
        let touchpoint = Command::RecordTouchpoint(RecordTouchpoint {
            touchpoint_id: TouchpointId(Uuid::nil()),
            touchpoint: Touchpoint { channel: Channel::WebForm { form: None }, summary: "s".into(), contact_id: None, opportunity_id: None },
        });
        prop_assert_eq!(decide(&state, &touchpoint).is_ok(), state.is_registered());
    }

    #[test]
    fn a_command_that_appended_nothing_changes_nothing(commands in prop::collection::vec(command(), 1..40)) {
        let mut state = CustomerState::new(CustomerId(Uuid::from_u128(CUSTOMER)));
        for command in &commands {
            if let Ok(events) = decide(&state, command) {
                for e in &events {
                    state = evolve(state, e);
                }
                if events.is_empty() {
                    // asking again for what is already so is also a no-op
                    prop_assert_eq!(decide(&state, command), Ok(vec![]));
                }
            }
        }
    }
}
