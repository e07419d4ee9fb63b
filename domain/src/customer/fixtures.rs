//! What the customer's rule tests share: ids, a profile, a registered customer with a
//! contact, an opportunity or a service request.

use chrono::NaiveDate;
use uuid::Uuid;

use crate::command::*;
use crate::customer::Customer;
use crate::error::{DomainError, ErrorKind};
use crate::ids::*;
use crate::scenario::Scenario;
use crate::values::*;

pub(crate) fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

pub(crate) fn profile() -> CustomerProfile {
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

pub(crate) fn cny(amount: i64) -> Money {
    Money {
        amount,
        currency: "CNY".into(),
    }
}

/// The field of an `Invalid` refusal.
pub(crate) fn invalid_field(e: &DomainError) -> &str {
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    e.field().unwrap()
}

pub(crate) fn open_opportunity(n: u128) -> Command {
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

pub(crate) fn change_stage(to: Stage, reason: Option<&str>) -> Command {
    Command::ChangeStage(ChangeStage {
        opportunity_id: OpportunityId(id(20)),
        to,
        reason: reason.map(str::to_owned),
        probability: None,
    })
}

pub(crate) fn warn(n: u128) -> Command {
    Command::RaiseChurnWarning(RaiseChurnWarning {
        churn_case_id: ChurnCaseId(id(n)),
        reason: "180 天无订单".into(),
        last_order_at: None,
    })
}

/// Customer `id(1)`, as the services drive it.
impl Scenario<Customer> {
    /// Customer `id(1)` before registering.
    pub(crate) fn customer() -> Self {
        Scenario::new(CustomerId(id(1)))
    }

    /// Customer `id(1)`, registered with [`profile`] and owned by `am-li`.
    pub(crate) fn registered() -> Self {
        Self::customer().given_commands([Command::RegisterCustomer(RegisterCustomer {
            profile: profile(),
            owner: UserId::new("am-li"),
        })])
    }

    /// With contact `id(10)`, 王芳.
    pub(crate) fn with_contact(self) -> Self {
        self.given_commands([Command::AddContact(AddContact {
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
        })])
    }

    /// With opportunity `id(20)`, in qualification.
    pub(crate) fn with_opportunity(self) -> Self {
        self.given_commands([open_opportunity(20)])
    }

    /// Opportunity `id(20)` moved forward to `stage`.
    pub(crate) fn advance_to(&mut self, stage: Stage) {
        let o = OpportunityId(id(20));
        while self.state().opportunities[&o].stage < stage {
            let next = self.state().opportunities[&o].stage.next().unwrap();
            self.accept(change_stage(next, None));
        }
    }

    /// With service request `id(30)`, created.
    pub(crate) fn with_service_request(self) -> Self {
        self.given_commands([Command::CreateServiceRequest(CreateServiceRequest {
            service_request_id: ServiceRequestId(id(30)),
            kind: ServiceKind::Consultation,
            summary: "安装咨询".into(),
            request: "如何安装?".into(),
            contact_id: None,
        })])
    }
}
