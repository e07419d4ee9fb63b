//! The events of a customer's stream. Each one is an immutable fact about one customer and
//! carries that customer's id; the envelope (see [`crate::envelope`]) adds who, when and where.
//!
//! The list at the bottom of this file is the one place that names every event with its
//! CloudEvents type (`crm.<aggregate>.<fact>.v<N>`): the enum, the type names, decoding and the
//! JSON Schemas are all generated from it ([`crate::stream_events!`]).

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::*;
use crate::values::*;

// ---------------------------------------------------------------- customer

/// A customer (company or person) was registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerRegistered {
    pub customer_id: CustomerId,
    pub profile: CustomerProfile,
    /// The account manager (客户经理) who owns the customer.
    pub owner: UserId,
}

/// Some profile fields changed; only those are present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProfileChanged {
    pub customer_id: CustomerId,
    pub changes: ProfileChanges,
}

/// The customer moved to another account manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OwnerReassigned {
    pub customer_id: CustomerId,
    pub from: UserId,
    pub to: UserId,
}

// ---------------------------------------------------------------- contacts

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContactAdded {
    pub customer_id: CustomerId,
    pub contact_id: ContactId,
    pub contact: ContactDetails,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContactChanged {
    pub customer_id: CustomerId,
    pub contact_id: ContactId,
    pub changes: ContactChanges,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContactRemoved {
    pub customer_id: CustomerId,
    pub contact_id: ContactId,
}

// ---------------------------------------------------------------- touchpoints

/// A contact on any channel. Its business time is the envelope's occurred-at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TouchpointRecorded {
    pub customer_id: CustomerId,
    pub touchpoint_id: TouchpointId,
    pub touchpoint: Touchpoint,
}

// ---------------------------------------------------------------- complaints

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ComplaintLodged {
    pub customer_id: CustomerId,
    pub complaint_id: ComplaintId,
    pub category: ComplaintCategory,
    /// e.g. quality, price, performance (product); attitude (staff); quality, fees (service).
    pub sub_category: String,
    pub urgency: Priority,
    pub importance: Priority,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<ContactId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ComplaintHandled {
    pub customer_id: CustomerId,
    pub complaint_id: ComplaintId,
    pub handling: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause_analysis: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ComplaintClosed {
    pub customer_id: CustomerId,
    pub complaint_id: ComplaintId,
    pub resolution: String,
}

// ---------------------------------------------------------------- opportunities

/// A sales opportunity was opened; it starts in `qualification`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpportunityOpened {
    pub customer_id: CustomerId,
    pub opportunity_id: OpportunityId,
    /// Where it came from: campaign, referral, inbound call, ...
    pub source: String,
    pub title: String,
    pub value: Money,
    /// Success probability in percent, 0–100.
    #[schemars(range(min = 0, max = 100))]
    pub probability: u8,
    pub expected_close: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<ContactId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A director assigned the opportunity to an account manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpportunityAssigned {
    pub customer_id: CustomerId,
    pub opportunity_id: OpportunityId,
    pub owner: UserId,
}

/// The opportunity moved one stage along the funnel (forward, or back with a reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpportunityStageChanged {
    pub customer_id: CustomerId,
    pub opportunity_id: OpportunityId,
    pub from: Stage,
    pub to: Stage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A new success probability, when the move changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub probability: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlanItemAdded {
    pub customer_id: CustomerId,
    pub opportunity_id: OpportunityId,
    pub plan_item_id: PlanItemId,
    pub item: PlanItem,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlanResultRecorded {
    pub customer_id: CustomerId,
    pub opportunity_id: OpportunityId,
    pub plan_item_id: PlanItemId,
    pub result: String,
}

/// Contract signed (合同签订): development succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpportunityWon {
    pub customer_id: CustomerId,
    pub opportunity_id: OpportunityId,
    /// The signed value, which may differ from the estimate.
    pub value: Money,
}

/// Development failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpportunityLost {
    pub customer_id: CustomerId,
    pub opportunity_id: OpportunityId,
    pub stage: Stage,
    pub reason: String,
}

/// A won or lost opportunity was opened again, in the stage where it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpportunityReopened {
    pub customer_id: CustomerId,
    pub opportunity_id: OpportunityId,
    pub stage: Stage,
    pub reason: String,
}

// ---------------------------------------------------------------- orders

/// An order from the ERP: the monetary input of RFM. Its order date is the occurred-at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    pub customer_id: CustomerId,
    pub order_number: OrderNumber,
    pub lines: Vec<OrderLine>,
    /// The order total; equals the sum of the lines when lines are given.
    pub total: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_address: Option<String>,
}

// ---------------------------------------------------------------- service requests

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceRequestCreated {
    pub customer_id: CustomerId,
    pub service_request_id: ServiceRequestId,
    pub kind: ServiceKind,
    pub summary: String,
    pub request: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<ContactId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceRequestAssigned {
    pub customer_id: CustomerId,
    pub service_request_id: ServiceRequestId,
    pub assignee: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceRequestHandled {
    pub customer_id: CustomerId,
    pub service_request_id: ServiceRequestId,
    pub handling: String,
}

/// The customer's feedback. Below 3 the request goes back to handling (seed 001).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceFeedbackGiven {
    pub customer_id: CustomerId,
    pub service_request_id: ServiceRequestId,
    pub result: String,
    #[schemars(range(min = 1, max = 5))]
    pub satisfaction: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceRequestArchived {
    pub customer_id: CustomerId,
    pub service_request_id: ServiceRequestId,
}

// ---------------------------------------------------------------- churn

/// The churn rule (or a person) flagged the customer as about to be lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChurnWarningRaised {
    pub customer_id: CustomerId,
    pub churn_case_id: ChurnCaseId,
    pub reason: String,
    /// Business time of the last order when the warning was raised, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_order_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A delaying measure (暂缓流失) the account manager took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChurnDelayMeasureRecorded {
    pub customer_id: CustomerId,
    pub churn_case_id: ChurnCaseId,
    pub measure: String,
}

/// The loss was confirmed (确定流失).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChurnConfirmed {
    pub customer_id: CustomerId,
    pub churn_case_id: ChurnCaseId,
    pub reason: String,
}

/// An at-risk or lost customer is active again; the churn case ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerReactivated {
    pub customer_id: CustomerId,
    pub churn_case_id: ChurnCaseId,
    pub reason: String,
}

// ---------------------------------------------------------------- the list

crate::stream_events! {
    /// Every fact that can happen in a customer's stream.
    pub enum CustomerEvent;
    stream = field customer_id;
    CustomerRegistered(CustomerRegistered) = "crm.customer.registered.v1";
    ProfileChanged(ProfileChanged) = "crm.customer.profile_changed.v1";
    OwnerReassigned(OwnerReassigned) = "crm.customer.owner_reassigned.v1";
    ContactAdded(ContactAdded) = "crm.contact.added.v1";
    ContactChanged(ContactChanged) = "crm.contact.changed.v1";
    ContactRemoved(ContactRemoved) = "crm.contact.removed.v1";
    TouchpointRecorded(TouchpointRecorded) = "crm.touchpoint.recorded.v1";
    ComplaintLodged(ComplaintLodged) = "crm.complaint.lodged.v1";
    ComplaintHandled(ComplaintHandled) = "crm.complaint.handled.v1";
    ComplaintClosed(ComplaintClosed) = "crm.complaint.closed.v1";
    OpportunityOpened(OpportunityOpened) = "crm.opportunity.opened.v1";
    OpportunityAssigned(OpportunityAssigned) = "crm.opportunity.assigned.v1";
    OpportunityStageChanged(OpportunityStageChanged) = "crm.opportunity.stage_changed.v1";
    PlanItemAdded(PlanItemAdded) = "crm.opportunity.plan_item_added.v1";
    PlanResultRecorded(PlanResultRecorded) = "crm.opportunity.plan_result_recorded.v1";
    OpportunityWon(OpportunityWon) = "crm.opportunity.won.v1";
    OpportunityLost(OpportunityLost) = "crm.opportunity.lost.v1";
    OpportunityReopened(OpportunityReopened) = "crm.opportunity.reopened.v1";
    OrderPlaced(OrderPlaced) = "crm.order.placed.v1";
    ServiceRequestCreated(ServiceRequestCreated) = "crm.service_request.created.v1";
    ServiceRequestAssigned(ServiceRequestAssigned) = "crm.service_request.assigned.v1";
    ServiceRequestHandled(ServiceRequestHandled) = "crm.service_request.handled.v1";
    ServiceFeedbackGiven(ServiceFeedbackGiven) = "crm.service_request.feedback_given.v1";
    ServiceRequestArchived(ServiceRequestArchived) = "crm.service_request.archived.v1";
    ChurnWarningRaised(ChurnWarningRaised) = "crm.churn.warning_raised.v1";
    ChurnDelayMeasureRecorded(ChurnDelayMeasureRecorded) = "crm.churn.delay_measure_recorded.v1";
    ChurnConfirmed(ChurnConfirmed) = "crm.churn.confirmed.v1";
    CustomerReactivated(CustomerReactivated) = "crm.churn.customer_reactivated.v1";
}

impl CustomerEvent {
    /// The customer this event is about: the stream it belongs to.
    pub fn customer_id(&self) -> CustomerId {
        crate::stream::Events::stream(self)
    }
}

/// Every current event type, in the order of the list.
pub const EVENT_TYPES: &[&str] = <CustomerEvent as crate::stream::Events>::TYPES;

/// The JSON Schema (draft 2020-12) of each current event type.
pub fn event_schemas() -> Vec<(&'static str, schemars::Schema)> {
    <CustomerEvent as crate::stream::Events>::schemas()
}

/// Why a body could not be turned into an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("body of `{event_type}` does not match its schema: {reason}")]
    Body { event_type: String, reason: String },
}
