//! How an event reads in a customer's timeline: category, channel, summary, subject.

use domain::*;

/// One timeline line.
pub(crate) struct Line {
    pub category: &'static str,
    pub channel: Option<&'static str>,
    pub direction: Option<&'static str>,
    pub summary: String,
    pub subject_id: Option<String>,
}

pub(crate) fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

pub(crate) fn kind(k: CustomerKind) -> &'static str {
    match k {
        CustomerKind::Company => "company",
        CustomerKind::Person => "person",
    }
}

pub(crate) fn gender(g: Gender) -> &'static str {
    match g {
        Gender::Female => "female",
        Gender::Male => "male",
        Gender::Other => "other",
    }
}

pub(crate) fn priority(p: Priority) -> &'static str {
    match p {
        Priority::Low => "low",
        Priority::Normal => "normal",
        Priority::High => "high",
        Priority::Critical => "critical",
    }
}

pub(crate) fn complaint_category(c: ComplaintCategory) -> &'static str {
    match c {
        ComplaintCategory::Product => "product",
        ComplaintCategory::Staff => "staff",
        ComplaintCategory::Service => "service",
    }
}

fn money(m: &Money) -> String {
    format!("{}.{:02} {}", m.amount / 100, m.amount % 100, m.currency)
}

fn state(summary: String, subject: impl ToString) -> Line {
    Line {
        category: "state_change",
        channel: None,
        direction: None,
        summary,
        subject_id: Some(subject.to_string()),
    }
}

pub(crate) fn describe(event: &CustomerEvent) -> Line {
    use CustomerEvent as E;
    match event {
        E::CustomerRegistered(e) => state(
            format!(
                "Registered {} ({}), owner {}",
                e.profile.name,
                e.profile.level.as_str(),
                e.owner
            ),
            e.customer_id,
        ),
        E::ProfileChanged(e) => {
            let mut fields = Vec::new();
            let c = &e.changes;
            for (name, present) in [
                ("number", c.number.is_some()),
                ("name", c.name.is_some()),
                ("region", c.region.is_some()),
                ("industry", c.industry.is_some()),
                ("level", c.level.is_some()),
                ("credit", c.credit.is_some()),
                ("satisfaction", c.satisfaction.is_some()),
                (
                    "registration",
                    c.registration.is_some() || c.registration_changes.is_some(),
                ),
            ] {
                if present {
                    fields.push(name.to_owned());
                }
            }
            fields.extend(c.cleared.iter().map(|p| format!("{p} cleared")));
            state(
                format!("Profile changed: {}", fields.join(", ")),
                e.customer_id,
            )
        }
        E::OwnerReassigned(e) => state(format!("Owner {} → {}", e.from, e.to), e.customer_id),
        E::ContactAdded(e) => state(format!("Contact {} added", e.contact.name), e.contact_id),
        E::ContactChanged(e) => state("Contact changed".to_owned(), e.contact_id),
        E::ContactRemoved(e) => state("Contact removed".to_owned(), e.contact_id),
        E::TouchpointRecorded(e) => {
            let t = &e.touchpoint;
            let dir = match &t.channel {
                Channel::PhoneCall { direction: d, .. }
                | Channel::Email { direction: d, .. }
                | Channel::Wechat { direction: d }
                | Channel::FaxLetter { direction: d } => Some(direction(*d)),
                Channel::Visit { .. } | Channel::WebForm { .. } => None,
            };
            Line {
                category: "touchpoint",
                channel: Some(t.channel.name()),
                direction: dir,
                summary: t.summary.clone(),
                subject_id: Some(e.touchpoint_id.to_string()),
            }
        }
        E::ComplaintLodged(e) => state(
            format!(
                "Complaint ({}/{}): {}",
                complaint_category(e.category),
                e.sub_category,
                e.description
            ),
            e.complaint_id,
        ),
        E::ComplaintHandled(e) => {
            state(format!("Complaint handled: {}", e.handling), e.complaint_id)
        }
        E::ComplaintClosed(e) => state(
            format!("Complaint closed: {}", e.resolution),
            e.complaint_id,
        ),
        E::OpportunityOpened(e) => state(
            format!(
                "Opportunity {} opened, {} at {}%",
                e.title,
                money(&e.value),
                e.probability
            ),
            e.opportunity_id,
        ),
        E::OpportunityAssigned(e) => state(
            format!("Opportunity assigned to {}", e.owner),
            e.opportunity_id,
        ),
        E::OpportunityStageChanged(e) => state(
            match &e.reason {
                Some(r) => format!("Stage {} → {} ({r})", e.from.as_str(), e.to.as_str()),
                None => format!("Stage {} → {}", e.from.as_str(), e.to.as_str()),
            },
            e.opportunity_id,
        ),
        E::PlanItemAdded(e) => state(
            format!("Plan item due {}: {}", e.item.due_on, e.item.action),
            e.opportunity_id,
        ),
        E::PlanResultRecorded(e) => state(format!("Plan result: {}", e.result), e.opportunity_id),
        E::OpportunityWon(e) => state(
            format!("Opportunity won, {}", money(&e.value)),
            e.opportunity_id,
        ),
        E::OpportunityLost(e) => state(
            format!("Opportunity lost in {}: {}", e.stage.as_str(), e.reason),
            e.opportunity_id,
        ),
        E::OpportunityReopened(e) => state(
            format!("Opportunity reopened in {}: {}", e.stage.as_str(), e.reason),
            e.opportunity_id,
        ),
        E::OrderPlaced(e) => state(
            format!("Order {}, {}", e.order_number, money(&e.total)),
            &e.order_number,
        ),
        E::ServiceRequestCreated(e) => state(
            format!("Service request ({}): {}", e.kind.as_str(), e.summary),
            e.service_request_id,
        ),
        E::ServiceRequestAssigned(e) => state(
            format!("Service request assigned to {}", e.assignee),
            e.service_request_id,
        ),
        E::ServiceRequestHandled(e) => state(
            format!("Service request handled: {}", e.handling),
            e.service_request_id,
        ),
        E::ServiceFeedbackGiven(e) => state(
            format!("Service feedback {}/5: {}", e.satisfaction, e.result),
            e.service_request_id,
        ),
        E::ServiceRequestArchived(e) => {
            state("Service request archived".to_owned(), e.service_request_id)
        }
        E::ChurnWarningRaised(e) => state(format!("Churn warning: {}", e.reason), e.churn_case_id),
        E::ChurnDelayMeasureRecorded(e) => {
            state(format!("Delaying measure: {}", e.measure), e.churn_case_id)
        }
        E::ChurnConfirmed(e) => state(format!("Churn confirmed: {}", e.reason), e.churn_case_id),
        E::CustomerReactivated(e) => state(format!("Reactivated: {}", e.reason), e.churn_case_id),
    }
}
