//! Value types shared by commands and events: the vocabulary of DOMAIN.md.

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// A company or a private person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CustomerKind {
    Company,
    Person,
}

/// Customer level (客户等级) from the data dictionary of seed 001.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CustomerLevel {
    Ordinary,
    Large,
    Key,
    CooperationPartner,
    StrategicPartner,
}

impl CustomerLevel {
    pub const ALL: [CustomerLevel; 5] = [
        CustomerLevel::Ordinary,
        CustomerLevel::Large,
        CustomerLevel::Key,
        CustomerLevel::CooperationPartner,
        CustomerLevel::StrategicPartner,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            CustomerLevel::Ordinary => "ordinary",
            CustomerLevel::Large => "large",
            CustomerLevel::Key => "key",
            CustomerLevel::CooperationPartner => "cooperation_partner",
            CustomerLevel::StrategicPartner => "strategic_partner",
        }
    }
}

/// The registration details of a company (the `cst_customer` columns of seed 001).
/// Every field is optional: a private person has none of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Registration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fax: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub website: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_representative: Option<String>,
    /// Registered capital, in minor units of `currency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_capital: Option<i64>,
    /// Annual turnover, in minor units of `currency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annual_turnover: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_tax_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub national_tax_number: Option<String>,
}

/// What a customer is: the fields set at registration and changed by `ProfileChanged`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerProfile {
    pub kind: CustomerKind,
    /// The customer number (客户编号) of the reference system, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    pub name: String,
    pub region: String,
    pub industry: String,
    pub level: CustomerLevel,
    /// Credit rating (信用度), 1–5.
    #[schemars(range(min = 1, max = 5))]
    pub credit: u8,
    /// Satisfaction (满意度), 1–5.
    #[schemars(range(min = 1, max = 5))]
    pub satisfaction: u8,
    #[serde(default)]
    pub registration: Registration,
}

/// A partial profile: only the fields that changed are present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProfileChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub industry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<CustomerLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub credit: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub satisfaction: Option<u8>,
    /// The whole registration block, replaced: how changes were recorded before `PATCH`
    /// followed JSON Merge Patch. New events use `registration_changes` and `cleared`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    /// Registration fields this change set; the others are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_changes: Option<Box<Registration>>,
    /// Optional fields this change cleared, by path: `number`, `registration.fax`, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cleared: Vec<String>,
}

/// Deserializes a JSON Merge Patch member: absent → `None` (unchanged, with
/// `#[serde(default)]`), `null` → `Some(None)` (cleared), a value → `Some(Some(value))`.
pub fn patch_member<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A change to a customer's profile as JSON Merge Patch (RFC 7396): a field absent is
/// unchanged, `null` clears an optional field (required ones cannot be cleared), and
/// `registration` is merged field by field, not replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub number: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    /// Required: a value, never `null`.
    #[schemars(with = "String")]
    pub name: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    /// Required: a value, never `null`.
    #[schemars(with = "String")]
    pub region: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    /// Required: a value, never `null`.
    #[schemars(with = "String")]
    pub industry: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    /// Required: a value, never `null`.
    #[schemars(with = "CustomerLevel")]
    pub level: Option<Option<CustomerLevel>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    /// Required: a value, never `null`.
    #[schemars(with = "u8", range(min = 1, max = 5))]
    pub credit: Option<Option<u8>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    /// Required: a value, never `null`.
    #[schemars(with = "u8", range(min = 1, max = 5))]
    pub satisfaction: Option<Option<u8>>,
    /// Merged field by field; `null` clears every registration field.
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub registration: Option<Option<RegistrationPatch>>,
}

/// A merge patch of the registration block: each field absent (unchanged), `null` (cleared)
/// or a value (set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrationPatch {
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub address: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub postcode: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub phone: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub fax: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub website: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub licence_number: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub legal_representative: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub registered_capital: Option<Option<i64>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub annual_turnover: Option<Option<i64>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub currency: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub bank: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub bank_account: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub local_tax_number: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "patch_member",
        skip_serializing_if = "Option::is_none"
    )]
    pub national_tax_number: Option<Option<String>>,
}

impl ProfileChanges {
    pub fn is_empty(&self) -> bool {
        self == &ProfileChanges::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Gender {
    Female,
    Male,
    Other,
}

/// A contact person's details (`cst_linkman`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContactDetails {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<Gender>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub office_phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
}

/// A partial contact: only the fields that changed are present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContactChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<Gender>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub office_phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
}

impl ContactChanges {
    pub fn is_empty(&self) -> bool {
        self == &ContactChanges::default()
    }
}

/// Which way a contact went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// How a phone call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    Answered,
    NoAnswer,
    Busy,
    Voicemail,
    Abandoned,
}

/// The channel a touchpoint came through, with what that channel knows about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Channel {
    /// Call centre or direct line: inbound or outbound, with duration and wait time.
    PhoneCall {
        direction: Direction,
        duration_seconds: u32,
        wait_seconds: u32,
        outcome: CallOutcome,
    },
    Email {
        direction: Direction,
        subject: String,
    },
    /// Face to face (拜访).
    Visit {
        place: String,
    },
    Wechat {
        direction: Direction,
    },
    WebForm {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        form: Option<String>,
    },
    FaxLetter {
        direction: Direction,
    },
}

impl Channel {
    /// The channel's name as used in read models and filters.
    pub fn name(&self) -> &'static str {
        match self {
            Channel::PhoneCall { .. } => "phone_call",
            Channel::Email { .. } => "email",
            Channel::Visit { .. } => "visit",
            Channel::Wechat { .. } => "wechat",
            Channel::WebForm { .. } => "web_form",
            Channel::FaxLetter { .. } => "fax_letter",
        }
    }

    pub const NAMES: [&'static str; 6] = [
        "phone_call",
        "email",
        "visit",
        "wechat",
        "web_form",
        "fax_letter",
    ];
}

/// A touchpoint (交往记录): a contact with the customer on some channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Touchpoint {
    pub channel: Channel,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<crate::ids::ContactId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opportunity_id: Option<crate::ids::OpportunityId>,
}

/// What a complaint is about (投诉分类).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ComplaintCategory {
    /// quality, price, performance
    Product,
    /// attitude
    Staff,
    /// quality, fees
    Service,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
    Critical,
}

/// The stages of the sales funnel (销售漏斗), in order. Winning (合同签订) and losing end it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// 机会建立
    Qualification,
    /// 方案提供
    Proposal,
    /// 方案评估
    Evaluation,
    /// 商务谈判
    Negotiation,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Qualification,
        Stage::Proposal,
        Stage::Evaluation,
        Stage::Negotiation,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn next(self) -> Option<Stage> {
        Stage::ALL.get(self.index() + 1).copied()
    }

    pub fn previous(self) -> Option<Stage> {
        self.index()
            .checked_sub(1)
            .and_then(|i| Stage::ALL.get(i).copied())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Qualification => "qualification",
            Stage::Proposal => "proposal",
            Stage::Evaluation => "evaluation",
            Stage::Negotiation => "negotiation",
        }
    }
}

/// An amount of money in minor units (cents, fen) of an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Money {
    /// Minor units; never negative.
    #[schemars(range(min = 0))]
    pub amount: i64,
    /// ISO 4217 code, three upper-case letters.
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: String,
}

/// One line of an ERP order: product × quantity × unit price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLine {
    pub product: String,
    #[schemars(range(min = 1))]
    pub quantity: u32,
    /// Minor units of the order's currency; never negative.
    #[schemars(range(min = 0))]
    pub unit_price: i64,
}

/// Type of a service request (服务类型).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    Consultation,
    Complaint,
    Suggestion,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Consultation => "consultation",
            ServiceKind::Complaint => "complaint",
            ServiceKind::Suggestion => "suggestion",
        }
    }
}

/// A dated item of an opportunity's development plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlanItem {
    pub due_on: NaiveDate,
    pub action: String,
}

/// Who owns what: used by `OwnerReassigned` and `OpportunityAssigned`.
pub type Owner = UserId;
