//! Identifiers. Every entity inside a customer's stream has its own id type, so that an
//! opportunity id can never be passed where a contact id is expected.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A customer: the subject of a stream, and the Kafka key of every event in it.
    CustomerId
);
uuid_id!(
    /// A contact person (联系人) at a customer.
    ContactId
);
uuid_id!(
    /// A recorded touchpoint (交往记录) on any channel.
    TouchpointId
);
uuid_id!(
    /// A sales opportunity (销售机会).
    OpportunityId
);
uuid_id!(
    /// One dated item of an opportunity's development plan (客户开发计划).
    PlanItemId
);
uuid_id!(
    /// A service request (服务).
    ServiceRequestId
);
uuid_id!(
    /// A complaint (投诉).
    ComplaintId
);
uuid_id!(
    /// A churn case (客户流失): opened by a warning, ended by confirmation or reactivation.
    ChurnCaseId
);

/// A person or program known to the identity provider: an account manager, a director,
/// a channel adapter. Kept as the provider's subject string.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct UserId(pub String);

impl UserId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The order number given by the ERP (历史订单). Unique per customer stream.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct OrderNumber(pub String);

impl fmt::Display for OrderNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
