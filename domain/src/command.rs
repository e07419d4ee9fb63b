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

/// Every command a customer stream accepts. Each variant's name is also its name in
/// metrics, the audit trail (`command`) and the inbound topic's `ce_type`
/// (`crm.command.<snake_name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    RegisterCustomer(RegisterCustomer),
    ChangeProfile(ChangeProfile),
    ReassignOwner(ReassignOwner),
    AddContact(AddContact),
    ChangeContact(ChangeContact),
    RemoveContact(RemoveContact),
    RecordTouchpoint(RecordTouchpoint),
    LodgeComplaint(LodgeComplaint),
    HandleComplaint(HandleComplaint),
    CloseComplaint(CloseComplaint),
    OpenOpportunity(OpenOpportunity),
    AssignOpportunity(AssignOpportunity),
    ChangeStage(ChangeStage),
    AddPlanItem(AddPlanItem),
    RecordPlanResult(RecordPlanResult),
    WinOpportunity(WinOpportunity),
    LoseOpportunity(LoseOpportunity),
    ReopenOpportunity(ReopenOpportunity),
    PlaceOrder(PlaceOrder),
    CreateServiceRequest(CreateServiceRequest),
    AssignServiceRequest(AssignServiceRequest),
    HandleServiceRequest(HandleServiceRequest),
    GiveServiceFeedback(GiveServiceFeedback),
    ArchiveServiceRequest(ArchiveServiceRequest),
    RaiseChurnWarning(RaiseChurnWarning),
    RecordDelayMeasure(RecordDelayMeasure),
    ConfirmChurn(ConfirmChurn),
    ReactivateCustomer(ReactivateCustomer),
}

impl Command {
    /// The command's name, as in metrics and the audit trail.
    pub fn name(&self) -> &'static str {
        match self {
            Command::RegisterCustomer(_) => "register_customer",
            Command::ChangeProfile(_) => "change_profile",
            Command::ReassignOwner(_) => "reassign_owner",
            Command::AddContact(_) => "add_contact",
            Command::ChangeContact(_) => "change_contact",
            Command::RemoveContact(_) => "remove_contact",
            Command::RecordTouchpoint(_) => "record_touchpoint",
            Command::LodgeComplaint(_) => "lodge_complaint",
            Command::HandleComplaint(_) => "handle_complaint",
            Command::CloseComplaint(_) => "close_complaint",
            Command::OpenOpportunity(_) => "open_opportunity",
            Command::AssignOpportunity(_) => "assign_opportunity",
            Command::ChangeStage(_) => "change_stage",
            Command::AddPlanItem(_) => "add_plan_item",
            Command::RecordPlanResult(_) => "record_plan_result",
            Command::WinOpportunity(_) => "win_opportunity",
            Command::LoseOpportunity(_) => "lose_opportunity",
            Command::ReopenOpportunity(_) => "reopen_opportunity",
            Command::PlaceOrder(_) => "place_order",
            Command::CreateServiceRequest(_) => "create_service_request",
            Command::AssignServiceRequest(_) => "assign_service_request",
            Command::HandleServiceRequest(_) => "handle_service_request",
            Command::GiveServiceFeedback(_) => "give_service_feedback",
            Command::ArchiveServiceRequest(_) => "archive_service_request",
            Command::RaiseChurnWarning(_) => "raise_churn_warning",
            Command::RecordDelayMeasure(_) => "record_delay_measure",
            Command::ConfirmChurn(_) => "confirm_churn",
            Command::ReactivateCustomer(_) => "reactivate_customer",
        }
    }
}

macro_rules! into_command {
    ($($name:ident),* $(,)?) => {
        $(
            impl From<$name> for Command {
                fn from(c: $name) -> Self {
                    Command::$name(c)
                }
            }
        )*
    };
}

into_command!(
    RegisterCustomer,
    ChangeProfile,
    ReassignOwner,
    AddContact,
    ChangeContact,
    RemoveContact,
    RecordTouchpoint,
    LodgeComplaint,
    HandleComplaint,
    CloseComplaint,
    OpenOpportunity,
    AssignOpportunity,
    ChangeStage,
    AddPlanItem,
    RecordPlanResult,
    WinOpportunity,
    LoseOpportunity,
    ReopenOpportunity,
    PlaceOrder,
    CreateServiceRequest,
    AssignServiceRequest,
    HandleServiceRequest,
    GiveServiceFeedback,
    ArchiveServiceRequest,
    RaiseChurnWarning,
    RecordDelayMeasure,
    ConfirmChurn,
    ReactivateCustomer
);
