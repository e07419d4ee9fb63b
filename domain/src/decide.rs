//! `decide`: accept or refuse a command against the customer's current state, and say which
//! events it causes. Pure: the same state and command always give the same answer.

use crate::command::*;
use crate::error::DomainError;
use crate::event::*;
use crate::ids::*;
use crate::state::*;
use crate::values::*;

type Decision = Result<Vec<CustomerEvent>, DomainError>;

/// Decides one command. An empty `Ok` means the command asked for what is already so (a
/// profile change to the current values): nothing to append.
pub fn decide(state: &CustomerState, command: &Command) -> Decision {
    crate::limits::check_values(command)?;
    let customer_id = state.customer_id;
    if let Command::RegisterCustomer(c) = command {
        if state.is_registered() {
            return Err(DomainError::CustomerAlreadyRegistered);
        }
        validate_profile(&c.profile, "profile")?;
        non_empty(&c.owner.0, "owner")?;
        return one(CustomerRegistered {
            customer_id,
            profile: c.profile.clone(),
            owner: c.owner.clone(),
        });
    }
    let Some(profile) = state.profile.as_ref() else {
        return Err(DomainError::CustomerNotRegistered);
    };

    match command {
        Command::RegisterCustomer(_) => Err(DomainError::CustomerAlreadyRegistered),

        Command::ChangeProfile(c) => {
            let changes = profile_diff(profile, &c.changes)?;
            validate_profile_changes(&changes)?;
            if changes.is_empty() {
                return Ok(vec![]);
            }
            one(ProfileChanged {
                customer_id,
                changes,
            })
        }

        Command::ReassignOwner(c) => {
            non_empty(&c.to.0, "to")?;
            match &state.owner {
                Some(owner) if owner == &c.to => Ok(vec![]),
                owner => one(OwnerReassigned {
                    customer_id,
                    from: owner.clone().unwrap_or_else(|| UserId::new("")),
                    to: c.to.clone(),
                }),
            }
        }

        Command::AddContact(c) => {
            if state.contacts.contains_key(&c.contact_id) {
                return Err(exists("contact", "contact_id", c.contact_id));
            }
            non_empty(&c.contact.name, "contact.name")?;
            one(ContactAdded {
                customer_id,
                contact_id: c.contact_id,
                contact: c.contact.clone(),
            })
        }

        Command::ChangeContact(c) => {
            let current = contact(state, c.contact_id, "contact_id")?;
            let changes = contact_diff(current, &c.changes);
            if let Some(name) = &changes.name {
                non_empty(name, "changes.name")?;
            }
            if changes.is_empty() {
                return Ok(vec![]);
            }
            one(ContactChanged {
                customer_id,
                contact_id: c.contact_id,
                changes,
            })
        }

        Command::RemoveContact(c) => {
            contact(state, c.contact_id, "contact_id")?;
            one(ContactRemoved {
                customer_id,
                contact_id: c.contact_id,
            })
        }

        Command::RecordTouchpoint(c) => {
            let t = &c.touchpoint;
            if let Some(id) = t.contact_id {
                contact(state, id, "touchpoint.contact_id")?;
            }
            if let Some(id) = t.opportunity_id {
                opportunity(state, id, "touchpoint.opportunity_id")?;
            }
            if let Channel::Visit { place } = &t.channel {
                non_empty(place, "touchpoint.channel.place")?;
            }
            one(TouchpointRecorded {
                customer_id,
                touchpoint_id: c.touchpoint_id,
                touchpoint: t.clone(),
            })
        }

        Command::LodgeComplaint(c) => {
            if state.complaints.contains_key(&c.complaint_id) {
                return Err(exists("complaint", "complaint_id", c.complaint_id));
            }
            non_empty(&c.sub_category, "sub_category")?;
            non_empty(&c.description, "description")?;
            if let Some(id) = c.contact_id {
                contact(state, id, "contact_id")?;
            }
            one(ComplaintLodged {
                customer_id,
                complaint_id: c.complaint_id,
                category: c.category,
                sub_category: c.sub_category.clone(),
                urgency: c.urgency,
                importance: c.importance,
                description: c.description.clone(),
                contact_id: c.contact_id,
            })
        }

        Command::HandleComplaint(c) => {
            let status = complaint(state, c.complaint_id)?;
            if status == ComplaintStatus::Closed {
                return Err(transition("complaint", status.as_str(), "handle"));
            }
            non_empty(&c.handling, "handling")?;
            one(ComplaintHandled {
                customer_id,
                complaint_id: c.complaint_id,
                handling: c.handling.clone(),
                cause_analysis: c.cause_analysis.clone(),
            })
        }

        Command::CloseComplaint(c) => {
            let status = complaint(state, c.complaint_id)?;
            if status != ComplaintStatus::Handled {
                return Err(transition("complaint", status.as_str(), "close"));
            }
            non_empty(&c.resolution, "resolution")?;
            one(ComplaintClosed {
                customer_id,
                complaint_id: c.complaint_id,
                resolution: c.resolution.clone(),
            })
        }

        Command::OpenOpportunity(c) => {
            if state.opportunities.contains_key(&c.opportunity_id) {
                return Err(exists("opportunity", "opportunity_id", c.opportunity_id));
            }
            non_empty(&c.title, "title")?;
            non_empty(&c.source, "source")?;
            validate_money(&c.value, "value")?;
            probability(c.probability, "probability")?;
            if let Some(id) = c.contact_id {
                contact(state, id, "contact_id")?;
            }
            one(OpportunityOpened {
                customer_id,
                opportunity_id: c.opportunity_id,
                source: c.source.clone(),
                title: c.title.clone(),
                value: c.value.clone(),
                probability: c.probability,
                expected_close: c.expected_close,
                contact_id: c.contact_id,
                description: c.description.clone(),
            })
        }

        Command::AssignOpportunity(c) => {
            let o = open_opportunity(state, c.opportunity_id, "assign")?;
            non_empty(&c.owner.0, "owner")?;
            if o.owner.as_ref() == Some(&c.owner) {
                return Ok(vec![]);
            }
            one(OpportunityAssigned {
                customer_id,
                opportunity_id: c.opportunity_id,
                owner: c.owner.clone(),
            })
        }

        Command::ChangeStage(c) => {
            let o = open_opportunity(state, c.opportunity_id, "change stage")?;
            if let Some(p) = c.probability {
                probability(p, "probability")?;
            }
            let reason = if o.stage.next() == Some(c.to) {
                c.reason.clone()
            } else if o.stage.previous() == Some(c.to) {
                match c.reason.as_deref().map(str::trim) {
                    Some(r) if !r.is_empty() => c.reason.clone(),
                    _ => {
                        return Err(DomainError::invalid(
                            "reason",
                            "moving an opportunity back a stage needs a reason",
                        ))
                    }
                }
            } else {
                return Err(DomainError::StageNotAdjacent {
                    from: o.stage.as_str().to_owned(),
                    to: c.to.as_str().to_owned(),
                });
            };
            one(OpportunityStageChanged {
                customer_id,
                opportunity_id: c.opportunity_id,
                from: o.stage,
                to: c.to,
                reason,
                probability: c.probability,
            })
        }

        Command::AddPlanItem(c) => {
            let o = open_opportunity(state, c.opportunity_id, "add a plan item")?;
            if o.plan_items.contains_key(&c.plan_item_id) {
                return Err(exists("plan item", "plan_item_id", c.plan_item_id));
            }
            non_empty(&c.item.action, "item.action")?;
            one(PlanItemAdded {
                customer_id,
                opportunity_id: c.opportunity_id,
                plan_item_id: c.plan_item_id,
                item: c.item.clone(),
            })
        }

        Command::RecordPlanResult(c) => {
            let o = open_opportunity(state, c.opportunity_id, "record a plan result")?;
            match o.plan_items.get(&c.plan_item_id) {
                None => return Err(not_found("plan item", "plan_item_id", c.plan_item_id)),
                Some(true) => return Err(transition("plan item", "done", "record a result")),
                Some(false) => {}
            }
            non_empty(&c.result, "result")?;
            one(PlanResultRecorded {
                customer_id,
                opportunity_id: c.opportunity_id,
                plan_item_id: c.plan_item_id,
                result: c.result.clone(),
            })
        }

        Command::WinOpportunity(c) => {
            let o = open_opportunity(state, c.opportunity_id, "win")?;
            if o.stage != Stage::Negotiation {
                return Err(transition(
                    "opportunity",
                    o.stage.as_str(),
                    "win before negotiation",
                ));
            }
            let value = c.value.clone().unwrap_or_else(|| o.value.clone());
            validate_money(&value, "value")?;
            one(OpportunityWon {
                customer_id,
                opportunity_id: c.opportunity_id,
                value,
            })
        }

        Command::LoseOpportunity(c) => {
            let o = open_opportunity(state, c.opportunity_id, "lose")?;
            non_empty(&c.reason, "reason")?;
            one(OpportunityLost {
                customer_id,
                opportunity_id: c.opportunity_id,
                stage: o.stage,
                reason: c.reason.clone(),
            })
        }

        Command::ReopenOpportunity(c) => {
            let o = opportunity(state, c.opportunity_id, "opportunity_id")?;
            if o.status == OpportunityStatus::Open {
                return Err(transition("opportunity", "open", "reopen"));
            }
            non_empty(&c.reason, "reason")?;
            one(OpportunityReopened {
                customer_id,
                opportunity_id: c.opportunity_id,
                stage: o.stage,
                reason: c.reason.clone(),
            })
        }

        Command::PlaceOrder(c) => {
            non_empty(&c.order_number.0, "order_number")?;
            if state.orders.contains(&c.order_number) {
                return Err(exists("order", "order_number", &c.order_number));
            }
            validate_money(&c.total, "total")?;
            validate_order_lines(&c.lines, c.total.amount)?;
            one(OrderPlaced {
                customer_id,
                order_number: c.order_number.clone(),
                lines: c.lines.clone(),
                total: c.total.clone(),
                delivery_address: c.delivery_address.clone(),
            })
        }

        Command::CreateServiceRequest(c) => {
            if state.service_requests.contains_key(&c.service_request_id) {
                return Err(exists(
                    "service request",
                    "service_request_id",
                    c.service_request_id,
                ));
            }
            non_empty(&c.summary, "summary")?;
            non_empty(&c.request, "request")?;
            if let Some(id) = c.contact_id {
                contact(state, id, "contact_id")?;
            }
            one(ServiceRequestCreated {
                customer_id,
                service_request_id: c.service_request_id,
                kind: c.kind,
                summary: c.summary.clone(),
                request: c.request.clone(),
                contact_id: c.contact_id,
            })
        }

        Command::AssignServiceRequest(c) => {
            let status = service_request(state, c.service_request_id)?;
            if !matches!(status, ServiceStatus::Created | ServiceStatus::Assigned) {
                return Err(transition("service request", status.as_str(), "assign"));
            }
            non_empty(&c.assignee.0, "assignee")?;
            one(ServiceRequestAssigned {
                customer_id,
                service_request_id: c.service_request_id,
                assignee: c.assignee.clone(),
            })
        }

        Command::HandleServiceRequest(c) => {
            let status = service_request(state, c.service_request_id)?;
            if status != ServiceStatus::Assigned {
                return Err(transition("service request", status.as_str(), "handle"));
            }
            non_empty(&c.handling, "handling")?;
            one(ServiceRequestHandled {
                customer_id,
                service_request_id: c.service_request_id,
                handling: c.handling.clone(),
            })
        }

        Command::GiveServiceFeedback(c) => {
            let status = service_request(state, c.service_request_id)?;
            if status != ServiceStatus::Handled {
                return Err(transition(
                    "service request",
                    status.as_str(),
                    "give feedback",
                ));
            }
            rating(c.satisfaction, "satisfaction")?;
            one(ServiceFeedbackGiven {
                customer_id,
                service_request_id: c.service_request_id,
                result: c.result.clone(),
                satisfaction: c.satisfaction,
            })
        }

        Command::ArchiveServiceRequest(c) => {
            let status = service_request(state, c.service_request_id)?;
            if status != ServiceStatus::Satisfied {
                return Err(transition("service request", status.as_str(), "archive"));
            }
            one(ServiceRequestArchived {
                customer_id,
                service_request_id: c.service_request_id,
            })
        }

        Command::RaiseChurnWarning(c) => {
            if state.churn != ChurnStatus::Active {
                return Err(transition(
                    "customer",
                    state.churn.as_str(),
                    "raise a churn warning",
                ));
            }
            non_empty(&c.reason, "reason")?;
            one(ChurnWarningRaised {
                customer_id,
                churn_case_id: c.churn_case_id,
                reason: c.reason.clone(),
                last_order_at: c.last_order_at,
            })
        }

        Command::RecordDelayMeasure(c) => {
            let ChurnStatus::AtRisk(churn_case_id) = state.churn else {
                return Err(transition(
                    "customer",
                    state.churn.as_str(),
                    "record a delaying measure",
                ));
            };
            non_empty(&c.measure, "measure")?;
            one(ChurnDelayMeasureRecorded {
                customer_id,
                churn_case_id,
                measure: c.measure.clone(),
            })
        }

        Command::ConfirmChurn(c) => {
            let ChurnStatus::AtRisk(churn_case_id) = state.churn else {
                return Err(transition(
                    "customer",
                    state.churn.as_str(),
                    "confirm churn without a warning",
                ));
            };
            non_empty(&c.reason, "reason")?;
            one(ChurnConfirmed {
                customer_id,
                churn_case_id,
                reason: c.reason.clone(),
            })
        }

        Command::ReactivateCustomer(c) => {
            let (ChurnStatus::AtRisk(churn_case_id) | ChurnStatus::Lost(churn_case_id)) =
                state.churn
            else {
                return Err(transition("customer", state.churn.as_str(), "reactivate"));
            };
            non_empty(&c.reason, "reason")?;
            one(CustomerReactivated {
                customer_id,
                churn_case_id,
                reason: c.reason.clone(),
            })
        }
    }
}

fn one(event: impl Into<CustomerEvent>) -> Decision {
    Ok(vec![event.into()])
}

// ---------------------------------------------------------------- lookups

fn contact<'a>(
    state: &'a CustomerState,
    id: ContactId,
    field: &'static str,
) -> Result<&'a ContactDetails, DomainError> {
    state
        .contacts
        .get(&id)
        .ok_or_else(|| not_found("contact", field, id))
}

fn opportunity<'a>(
    state: &'a CustomerState,
    id: OpportunityId,
    field: &'static str,
) -> Result<&'a OpportunityState, DomainError> {
    state
        .opportunities
        .get(&id)
        .ok_or_else(|| not_found("opportunity", field, id))
}

/// Nothing happens to a won or lost opportunity but reopening.
fn open_opportunity<'a>(
    state: &'a CustomerState,
    id: OpportunityId,
    action: &'static str,
) -> Result<&'a OpportunityState, DomainError> {
    let o = opportunity(state, id, "opportunity_id")?;
    if o.status != OpportunityStatus::Open {
        return Err(transition("opportunity", o.status.as_str(), action));
    }
    Ok(o)
}

fn service_request(
    state: &CustomerState,
    id: ServiceRequestId,
) -> Result<ServiceStatus, DomainError> {
    state
        .service_requests
        .get(&id)
        .copied()
        .ok_or_else(|| not_found("service request", "service_request_id", id))
}

fn complaint(state: &CustomerState, id: ComplaintId) -> Result<ComplaintStatus, DomainError> {
    state
        .complaints
        .get(&id)
        .copied()
        .ok_or_else(|| not_found("complaint", "complaint_id", id))
}

fn not_found(entity: &'static str, field: &'static str, id: impl ToString) -> DomainError {
    DomainError::NotFound {
        entity,
        field,
        id: id.to_string(),
    }
}

fn exists(entity: &'static str, field: &'static str, id: impl ToString) -> DomainError {
    DomainError::AlreadyExists {
        entity,
        field,
        id: id.to_string(),
    }
}

fn transition(entity: &'static str, state: &str, action: &'static str) -> DomainError {
    DomainError::InvalidTransition {
        entity,
        state: state.to_owned(),
        action,
    }
}

// ---------------------------------------------------------------- value rules

fn non_empty(value: &str, field: &str) -> Result<(), DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    Ok(())
}

fn rating(value: u8, field: &str) -> Result<(), DomainError> {
    if !(1..=5).contains(&value) {
        return Err(DomainError::invalid(
            field,
            format!("must be 1 to 5, got {value}"),
        ));
    }
    Ok(())
}

fn probability(value: u8, field: &str) -> Result<(), DomainError> {
    if value > 100 {
        return Err(DomainError::invalid(
            field,
            format!("must be 0 to 100, got {value}"),
        ));
    }
    Ok(())
}

fn validate_money(money: &Money, field: &str) -> Result<(), DomainError> {
    if money.amount < 0 {
        return Err(DomainError::invalid(
            format!("{field}.amount"),
            format!("must not be negative, got {}", money.amount),
        ));
    }
    currency(&money.currency, &format!("{field}.currency"))
}

fn currency(code: &str, field: &str) -> Result<(), DomainError> {
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(DomainError::invalid(
            field,
            format!("must be an ISO 4217 code such as CNY, got {code:?}"),
        ));
    }
    Ok(())
}

fn validate_order_lines(lines: &[OrderLine], total: i64) -> Result<(), DomainError> {
    let mut sum: i64 = 0;
    for (i, line) in lines.iter().enumerate() {
        non_empty(&line.product, &format!("lines[{i}].product"))?;
        if line.quantity == 0 {
            return Err(DomainError::invalid(
                format!("lines[{i}].quantity"),
                "must be at least 1",
            ));
        }
        if line.unit_price < 0 {
            return Err(DomainError::invalid(
                format!("lines[{i}].unit_price"),
                "must not be negative",
            ));
        }
        let amount = line
            .unit_price
            .checked_mul(i64::from(line.quantity))
            .and_then(|a| sum.checked_add(a));
        sum = amount
            .ok_or_else(|| DomainError::invalid(format!("lines[{i}]"), "amount overflows"))?;
    }
    if !lines.is_empty() && sum != total {
        return Err(DomainError::invalid(
            "total.amount",
            format!("must equal the sum of the lines ({sum}), got {total}"),
        ));
    }
    Ok(())
}

fn validate_profile(profile: &CustomerProfile, prefix: &str) -> Result<(), DomainError> {
    non_empty(&profile.name, &format!("{prefix}.name"))?;
    non_empty(&profile.region, &format!("{prefix}.region"))?;
    rating(profile.credit, &format!("{prefix}.credit"))?;
    rating(profile.satisfaction, &format!("{prefix}.satisfaction"))?;
    validate_registration(&profile.registration, &format!("{prefix}.registration"))
}

fn validate_registration(r: &Registration, prefix: &str) -> Result<(), DomainError> {
    for (value, name) in [
        (r.registered_capital, "registered_capital"),
        (r.annual_turnover, "annual_turnover"),
    ] {
        if value.is_some_and(|v| v < 0) {
            return Err(DomainError::invalid(
                format!("{prefix}.{name}"),
                "must not be negative",
            ));
        }
    }
    if let Some(code) = &r.currency {
        currency(code, &format!("{prefix}.currency"))?;
    }
    Ok(())
}

fn validate_profile_changes(c: &ProfileChanges) -> Result<(), DomainError> {
    if let Some(name) = &c.name {
        non_empty(name, "changes.name")?;
    }
    if let Some(region) = &c.region {
        non_empty(region, "changes.region")?;
    }
    if let Some(v) = c.credit {
        rating(v, "changes.credit")?;
    }
    if let Some(v) = c.satisfaction {
        rating(v, "changes.satisfaction")?;
    }
    if let Some(r) = &c.registration {
        validate_registration(r, "changes.registration")?;
    }
    if let Some(r) = &c.registration_changes {
        validate_registration(r, "changes.registration")?;
    }
    Ok(())
}

/// Applies a merge patch to the current profile and keeps only what differs: the fields set,
/// the registration fields set, and the optional fields cleared.
fn profile_diff(
    current: &CustomerProfile,
    patch: &ProfilePatch,
) -> Result<ProfileChanges, DomainError> {
    fn required<T: Clone + PartialEq>(
        current: &T,
        patch: &Option<Option<T>>,
        field: &str,
    ) -> Result<Option<T>, DomainError> {
        match patch {
            None => Ok(None),
            Some(None) => Err(DomainError::invalid(
                format!("changes.{field}"),
                "is required and cannot be cleared (null)",
            )),
            Some(Some(v)) => Ok(Some(v.clone()).filter(|v| v != current)),
        }
    }
    let mut cleared = Vec::new();
    let number = match &patch.number {
        None => None,
        Some(None) => {
            if current.number.is_some() {
                cleared.push("number".to_owned());
            }
            None
        }
        Some(Some(n)) => Some(n.clone()).filter(|n| current.number.as_ref() != Some(n)),
    };
    let mut registration_changes = None;
    let registration_patch = match &patch.registration {
        None => None,
        // null: every registration field cleared
        Some(None) => Some(serde_json::Map::new()),
        Some(Some(p)) => match serde_json::to_value(p) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            _ => None,
        },
    };
    if let Some(members) = registration_patch {
        let current_map = match serde_json::to_value(&current.registration) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let clear_all = patch.registration == Some(None);
        let mut set = serde_json::Map::new();
        for (k, v) in &members {
            if v.is_null() {
                if current_map.contains_key(k) {
                    cleared.push(format!("registration.{k}"));
                }
            } else if current_map.get(k) != Some(v) {
                set.insert(k.clone(), v.clone());
            }
        }
        if clear_all {
            cleared.extend(current_map.keys().map(|k| format!("registration.{k}")));
        }
        if !set.is_empty() {
            registration_changes = Some(Box::new(
                serde_json::from_value::<Registration>(serde_json::Value::Object(set))
                    .map_err(|e| DomainError::invalid("changes.registration", e.to_string()))?,
            ));
        }
    }
    Ok(ProfileChanges {
        number,
        name: required(&current.name, &patch.name, "name")?,
        region: required(&current.region, &patch.region, "region")?,
        industry: required(&current.industry, &patch.industry, "industry")?,
        level: required(&current.level, &patch.level, "level")?,
        credit: required(&current.credit, &patch.credit, "credit")?,
        satisfaction: required(&current.satisfaction, &patch.satisfaction, "satisfaction")?,
        registration: None,
        registration_changes,
        cleared,
    })
}

/// Keeps only the fields that differ from the current contact.
fn contact_diff(current: &ContactDetails, wanted: &ContactChanges) -> ContactChanges {
    let opt =
        |cur: &Option<String>, w: &Option<String>| changed(cur, &w.clone().map(Some)).flatten();
    ContactChanges {
        name: changed(&current.name, &wanted.name),
        gender: changed(&current.gender, &wanted.gender.map(Some)).flatten(),
        position: opt(&current.position, &wanted.position),
        office_phone: opt(&current.office_phone, &wanted.office_phone),
        mobile: opt(&current.mobile, &wanted.mobile),
        email: opt(&current.email, &wanted.email),
        memo: opt(&current.memo, &wanted.memo),
    }
}

fn changed<T: Clone + PartialEq>(current: &T, wanted: &Option<T>) -> Option<T> {
    wanted.as_ref().filter(|w| *w != current).cloned()
}
