//! The current state of one customer's stream, and `evolve`: how each event changes it.
//! The state holds only what `decide` needs to accept or refuse the next command.

use std::collections::{BTreeMap, BTreeSet};

use crate::event::CustomerEvent;
use crate::ids::*;
use crate::values::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpportunityStatus {
    Open,
    Won,
    Lost,
}

impl OpportunityStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OpportunityStatus::Open => "open",
            OpportunityStatus::Won => "won",
            OpportunityStatus::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpportunityState {
    pub stage: Stage,
    pub status: OpportunityStatus,
    pub value: Money,
    pub owner: Option<UserId>,
    /// Plan items, and whether their result has been recorded.
    pub plan_items: BTreeMap<PlanItemId, bool>,
}

/// create → assign → handle → feedback → archive; feedback below 3 goes back to `Assigned`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceStatus {
    Created,
    Assigned,
    Handled,
    /// Feedback of 3 or more: ready to archive.
    Satisfied,
    Archived,
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::Created => "created",
            ServiceStatus::Assigned => "assigned",
            ServiceStatus::Handled => "handled",
            ServiceStatus::Satisfied => "satisfied",
            ServiceStatus::Archived => "archived",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComplaintStatus {
    Lodged,
    Handled,
    Closed,
}

impl ComplaintStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ComplaintStatus::Lodged => "lodged",
            ComplaintStatus::Handled => "handled",
            ComplaintStatus::Closed => "closed",
        }
    }
}

/// Where the customer stands on churn (客户流失).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChurnStatus {
    Active,
    AtRisk(ChurnCaseId),
    Lost(ChurnCaseId),
}

impl ChurnStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChurnStatus::Active => "active",
            ChurnStatus::AtRisk(_) => "at_risk",
            ChurnStatus::Lost(_) => "lost",
        }
    }
}

/// One customer's stream, folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerState {
    pub customer_id: CustomerId,
    /// Sequence number of the last event applied; 0 for an empty stream.
    pub version: u64,
    pub profile: Option<CustomerProfile>,
    pub owner: Option<UserId>,
    pub contacts: BTreeMap<ContactId, ContactDetails>,
    pub opportunities: BTreeMap<OpportunityId, OpportunityState>,
    pub service_requests: BTreeMap<ServiceRequestId, ServiceStatus>,
    pub complaints: BTreeMap<ComplaintId, ComplaintStatus>,
    pub orders: BTreeSet<OrderNumber>,
    pub churn: ChurnStatus,
}

impl CustomerState {
    /// The state of a stream with no events yet.
    pub fn new(customer_id: CustomerId) -> Self {
        CustomerState {
            customer_id,
            version: 0,
            profile: None,
            owner: None,
            contacts: BTreeMap::new(),
            opportunities: BTreeMap::new(),
            service_requests: BTreeMap::new(),
            complaints: BTreeMap::new(),
            orders: BTreeSet::new(),
            churn: ChurnStatus::Active,
        }
    }

    pub fn is_registered(&self) -> bool {
        self.profile.is_some()
    }

    /// The sequence number the next appended event gets.
    pub fn next_sequence(&self) -> u64 {
        self.version + 1
    }
}

/// Applies one event. Events are facts, so `evolve` never refuses one; it is total.
pub fn evolve(mut state: CustomerState, event: &CustomerEvent) -> CustomerState {
    state.version += 1;
    match event {
        CustomerEvent::CustomerRegistered(e) => {
            state.profile = Some(e.profile.clone());
            state.owner = Some(e.owner.clone());
        }
        CustomerEvent::ProfileChanged(e) => {
            if let Some(profile) = state.profile.as_mut() {
                apply_profile_changes(profile, &e.changes);
            }
        }
        CustomerEvent::OwnerReassigned(e) => state.owner = Some(e.to.clone()),
        CustomerEvent::ContactAdded(e) => {
            state.contacts.insert(e.contact_id, e.contact.clone());
        }
        CustomerEvent::ContactChanged(e) => {
            if let Some(contact) = state.contacts.get_mut(&e.contact_id) {
                apply_contact_changes(contact, &e.changes);
            }
        }
        CustomerEvent::ContactRemoved(e) => {
            state.contacts.remove(&e.contact_id);
        }
        CustomerEvent::TouchpointRecorded(_) => {}
        CustomerEvent::ComplaintLodged(e) => {
            state
                .complaints
                .insert(e.complaint_id, ComplaintStatus::Lodged);
        }
        CustomerEvent::ComplaintHandled(e) => {
            state
                .complaints
                .insert(e.complaint_id, ComplaintStatus::Handled);
        }
        CustomerEvent::ComplaintClosed(e) => {
            state
                .complaints
                .insert(e.complaint_id, ComplaintStatus::Closed);
        }
        CustomerEvent::OpportunityOpened(e) => {
            state.opportunities.insert(
                e.opportunity_id,
                OpportunityState {
                    stage: Stage::Qualification,
                    status: OpportunityStatus::Open,
                    value: e.value.clone(),
                    owner: None,
                    plan_items: BTreeMap::new(),
                },
            );
        }
        CustomerEvent::OpportunityAssigned(e) => {
            if let Some(o) = state.opportunities.get_mut(&e.opportunity_id) {
                o.owner = Some(e.owner.clone());
            }
        }
        CustomerEvent::OpportunityStageChanged(e) => {
            if let Some(o) = state.opportunities.get_mut(&e.opportunity_id) {
                o.stage = e.to;
            }
        }
        CustomerEvent::PlanItemAdded(e) => {
            if let Some(o) = state.opportunities.get_mut(&e.opportunity_id) {
                o.plan_items.insert(e.plan_item_id, false);
            }
        }
        CustomerEvent::PlanResultRecorded(e) => {
            if let Some(o) = state.opportunities.get_mut(&e.opportunity_id) {
                o.plan_items.insert(e.plan_item_id, true);
            }
        }
        CustomerEvent::OpportunityWon(e) => {
            if let Some(o) = state.opportunities.get_mut(&e.opportunity_id) {
                o.status = OpportunityStatus::Won;
                o.value = e.value.clone();
            }
        }
        CustomerEvent::OpportunityLost(e) => {
            if let Some(o) = state.opportunities.get_mut(&e.opportunity_id) {
                o.status = OpportunityStatus::Lost;
            }
        }
        CustomerEvent::OpportunityReopened(e) => {
            if let Some(o) = state.opportunities.get_mut(&e.opportunity_id) {
                o.status = OpportunityStatus::Open;
                o.stage = e.stage;
            }
        }
        CustomerEvent::OrderPlaced(e) => {
            state.orders.insert(e.order_number.clone());
        }
        CustomerEvent::ServiceRequestCreated(e) => {
            state
                .service_requests
                .insert(e.service_request_id, ServiceStatus::Created);
        }
        CustomerEvent::ServiceRequestAssigned(e) => {
            state
                .service_requests
                .insert(e.service_request_id, ServiceStatus::Assigned);
        }
        CustomerEvent::ServiceRequestHandled(e) => {
            state
                .service_requests
                .insert(e.service_request_id, ServiceStatus::Handled);
        }
        CustomerEvent::ServiceFeedbackGiven(e) => {
            let next = if e.satisfaction >= crate::policy::SATISFIED_FROM {
                ServiceStatus::Satisfied
            } else {
                ServiceStatus::Assigned
            };
            state.service_requests.insert(e.service_request_id, next);
        }
        CustomerEvent::ServiceRequestArchived(e) => {
            state
                .service_requests
                .insert(e.service_request_id, ServiceStatus::Archived);
        }
        CustomerEvent::ChurnWarningRaised(e) => state.churn = ChurnStatus::AtRisk(e.churn_case_id),
        CustomerEvent::ChurnDelayMeasureRecorded(_) => {}
        CustomerEvent::ChurnConfirmed(e) => state.churn = ChurnStatus::Lost(e.churn_case_id),
        CustomerEvent::CustomerReactivated(_) => state.churn = ChurnStatus::Active,
    }
    state
}

/// Overwrites the fields present in `changes`.
pub fn apply_profile_changes(profile: &mut CustomerProfile, changes: &ProfileChanges) {
    set_if_some(&mut profile.name, &changes.name);
    set_if_some(&mut profile.region, &changes.region);
    set_if_some(&mut profile.industry, &changes.industry);
    set_if_some(&mut profile.level, &changes.level);
    set_if_some(&mut profile.credit, &changes.credit);
    set_if_some(&mut profile.satisfaction, &changes.satisfaction);
    set_if_some(&mut profile.registration, &changes.registration);
    if changes.number.is_some() {
        profile.number = changes.number.clone();
    }
    if let Some(set) = &changes.registration_changes {
        profile.registration = merge_registration(&profile.registration, set, &[]);
    }
    for path in &changes.cleared {
        match path.strip_prefix("registration.") {
            Some(field) => {
                profile.registration =
                    merge_registration(&profile.registration, &Registration::default(), &[field]);
            }
            None if path == "number" => profile.number = None,
            None => {}
        }
    }
}

/// `current` with the fields present in `set` set, and the fields named in `clear` cleared.
pub fn merge_registration(
    current: &Registration,
    set: &Registration,
    clear: &[&str],
) -> Registration {
    let as_map = |r: &Registration| match serde_json::to_value(r) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let mut merged = as_map(current);
    for (k, v) in as_map(set) {
        merged.insert(k, v);
    }
    for field in clear {
        merged.remove(*field);
    }
    serde_json::from_value(serde_json::Value::Object(merged)).unwrap_or_else(|_| current.clone())
}

/// Overwrites the fields present in `changes`.
pub fn apply_contact_changes(contact: &mut ContactDetails, changes: &ContactChanges) {
    set_if_some(&mut contact.name, &changes.name);
    let optional = [
        (&mut contact.position, &changes.position),
        (&mut contact.office_phone, &changes.office_phone),
        (&mut contact.mobile, &changes.mobile),
        (&mut contact.email, &changes.email),
        (&mut contact.memo, &changes.memo),
    ];
    for (field, change) in optional {
        if change.is_some() {
            field.clone_from(change);
        }
    }
    if changes.gender.is_some() {
        contact.gender = changes.gender;
    }
}

fn set_if_some<T: Clone>(field: &mut T, change: &Option<T>) {
    if let Some(value) = change {
        field.clone_from(value);
    }
}
