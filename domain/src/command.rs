//! Commands: what someone asks the customer stream to do. [`crate::decide`] accepts or
//! refuses each one against the customer's current state. Ids of new entities are chosen by
//! the caller, which makes a retried command recognisable.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::*;
use crate::values::*;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCustomer {
    pub profile: CustomerProfile,
    pub owner: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeProfile {
    /// JSON Merge Patch of the profile: absent unchanged, `null` cleared, `registration`
    /// merged.
    pub changes: ProfilePatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReassignOwner {
    pub to: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddContact {
    pub contact_id: ContactId,
    pub contact: ContactDetails,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeContact {
    pub contact_id: ContactId,
    pub changes: ContactChanges,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveContact {
    pub contact_id: ContactId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordTouchpoint {
    pub touchpoint_id: TouchpointId,
    pub touchpoint: Touchpoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LodgeComplaint {
    pub complaint_id: ComplaintId,
    pub category: ComplaintCategory,
    pub sub_category: String,
    pub urgency: Priority,
    pub importance: Priority,
    pub description: String,
    #[serde(default)]
    pub contact_id: Option<ContactId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandleComplaint {
    pub complaint_id: ComplaintId,
    pub handling: String,
    #[serde(default)]
    pub cause_analysis: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseComplaint {
    pub complaint_id: ComplaintId,
    pub resolution: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenOpportunity {
    pub opportunity_id: OpportunityId,
    pub source: String,
    pub title: String,
    pub value: Money,
    pub probability: u8,
    pub expected_close: NaiveDate,
    #[serde(default)]
    pub contact_id: Option<ContactId>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignOpportunity {
    pub opportunity_id: OpportunityId,
    pub owner: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeStage {
    pub opportunity_id: OpportunityId,
    pub to: Stage,
    /// Required when moving back.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub probability: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPlanItem {
    pub opportunity_id: OpportunityId,
    pub plan_item_id: PlanItemId,
    pub item: PlanItem,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordPlanResult {
    pub opportunity_id: OpportunityId,
    pub plan_item_id: PlanItemId,
    pub result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WinOpportunity {
    pub opportunity_id: OpportunityId,
    /// The signed value; the estimate when absent.
    #[serde(default)]
    pub value: Option<Money>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoseOpportunity {
    pub opportunity_id: OpportunityId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReopenOpportunity {
    pub opportunity_id: OpportunityId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    pub order_number: OrderNumber,
    #[serde(default)]
    pub lines: Vec<OrderLine>,
    pub total: Money,
    #[serde(default)]
    pub delivery_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceRequest {
    pub service_request_id: ServiceRequestId,
    pub kind: ServiceKind,
    pub summary: String,
    pub request: String,
    #[serde(default)]
    pub contact_id: Option<ContactId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignServiceRequest {
    pub service_request_id: ServiceRequestId,
    pub assignee: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandleServiceRequest {
    pub service_request_id: ServiceRequestId,
    pub handling: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GiveServiceFeedback {
    pub service_request_id: ServiceRequestId,
    pub result: String,
    pub satisfaction: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveServiceRequest {
    pub service_request_id: ServiceRequestId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RaiseChurnWarning {
    pub churn_case_id: ChurnCaseId,
    pub reason: String,
    #[serde(default)]
    pub last_order_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordDelayMeasure {
    pub measure: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmChurn {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReactivateCustomer {
    pub reason: String,
}

crate::stream_commands! {
    /// Every command a customer stream accepts. Each command's name is also its name in
    /// metrics, the audit trail (`command`) and the inbound topic's `ce_type`
    /// (`crm.command.<name>`).
    pub enum Command for crate::customer::Customer {
        RegisterCustomer = "register_customer",
        ChangeProfile = "change_profile",
        ReassignOwner = "reassign_owner",
        AddContact = "add_contact",
        ChangeContact = "change_contact",
        RemoveContact = "remove_contact",
        RecordTouchpoint = "record_touchpoint",
        LodgeComplaint = "lodge_complaint",
        HandleComplaint = "handle_complaint",
        CloseComplaint = "close_complaint",
        OpenOpportunity = "open_opportunity",
        AssignOpportunity = "assign_opportunity",
        ChangeStage = "change_stage",
        AddPlanItem = "add_plan_item",
        RecordPlanResult = "record_plan_result",
        WinOpportunity = "win_opportunity",
        LoseOpportunity = "lose_opportunity",
        ReopenOpportunity = "reopen_opportunity",
        PlaceOrder = "place_order",
        CreateServiceRequest = "create_service_request",
        AssignServiceRequest = "assign_service_request",
        HandleServiceRequest = "handle_service_request",
        GiveServiceFeedback = "give_service_feedback",
        ArchiveServiceRequest = "archive_service_request",
        RaiseChurnWarning = "raise_churn_warning",
        RecordDelayMeasure = "record_delay_measure",
        ConfirmChurn = "confirm_churn",
        ReactivateCustomer = "reactivate_customer",
    }
}
