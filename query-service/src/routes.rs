//! The route table: every route with its parameters, answer shape and, for lists, the columns
//! and the sorts. The router, the parameter checks and `/openapi.json` are all made from it.

use domain::{Channel, EVENT_TYPES, ORGANISATION_EVENT_TYPES};

use crate::list::{Paging, MAX_LIMIT};
use crate::params::{Kind, ParamSpec};

/// What a route answers.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// A list: JSON `{items, next_cursor}` (when paginated) or CSV with these columns.
    List {
        columns: &'static [&'static str],
        paging: Option<&'static Paging>,
    },
    /// One resource, with an `ETag`.
    Single,
}

#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    pub path: &'static str,
    /// The query operation of the permission table (`domain::access::PERMISSIONS`) the route
    /// is: the caller needs a role that may use it (else 403), and sees what its reach allows.
    pub operation: &'static str,
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub params: &'static [ParamSpec],
    pub answer: Answer,
}

pub const LEVELS: &[&str] = &[
    "ordinary",
    "large",
    "key",
    "cooperation_partner",
    "strategic_partner",
];
pub const SEGMENTS: &[&str] = &[
    "champions",
    "loyal",
    "potential_loyalists",
    "new",
    "promising",
    "need_attention",
    "about_to_sleep",
    "at_risk",
    "cant_lose_them",
    "hibernating",
    "no_purchases",
];
pub const STAGES: &[&str] = &["qualification", "proposal", "evaluation", "negotiation"];
pub const CHURN_STATUSES: &[&str] = &["active", "at_risk", "lost"];
pub const CASE_STATUSES: &[&str] = &["at_risk", "lost", "reactivated"];
pub const OPPORTUNITY_STATUSES: &[&str] = &["open", "won", "lost"];
pub const ALERT_STATUSES: &[&str] = &["open", "closed"];
pub const CATEGORIES: &[&str] = &["touchpoint", "state_change"];
pub const REPORTS: &[&str] = &["contribution", "composition", "service", "churn"];

const LIMIT: ParamSpec = ParamSpec::query(
    "limit",
    Kind::Int {
        min: 1,
        max: MAX_LIMIT,
    },
    "Rows per page (default 100). With text/csv: at most this many rows (default: all)",
);
const CURSOR: ParamSpec = ParamSpec::query(
    "cursor",
    Kind::Cursor,
    "The next_cursor of the previous page; valid only with the same filters and sort",
);

// ------------------------------------------------------------------ customers

pub const CUSTOMER_COLUMNS: &[&str] = &[
    "customer_id",
    "number",
    "name",
    "kind",
    "region",
    "industry",
    "level",
    "credit",
    "satisfaction",
    "owner",
    "registered_at",
    "churn_status",
    "order_count",
    "order_total",
    "last_order_at",
    "last_sequence",
    "last_event_at",
    "segment",
    "recency_days",
    "frequency",
    "monetary",
    "r",
    "f",
    "m",
];
pub static CUSTOMER_PAGING: Paging = Paging {
    sorts: &[
        ("name", "t.name", "text"),
        ("registered_at", "t.registered_at", "timestamptz"),
        ("last_event_at", "t.last_event_at", "timestamptz"),
        ("order_total", "t.order_total", "bigint"),
        ("customer_id", "t.customer_id", "uuid"),
    ],
    default: "name",
    tiebreak: ("t.customer_id", "uuid"),
};
const CUSTOMER_SORT: ParamSpec = ParamSpec::query(
    "sort",
    Kind::Sort(&[
        "name",
        "registered_at",
        "last_event_at",
        "order_total",
        "customer_id",
    ]),
    "Sort key (default name); `-` prefix for descending",
);
const CUSTOMER_FILTERS: [ParamSpec; 5] = [
    ParamSpec::query("owner", Kind::Text { max: 200 }, "Account manager").multi(),
    ParamSpec::query("level", Kind::Enum(LEVELS), "Customer level").multi(),
    ParamSpec::query("region", Kind::Text { max: 200 }, "Region").multi(),
    ParamSpec::query("churn_status", Kind::Enum(CHURN_STATUSES), "Churn status").multi(),
    ParamSpec::query(
        "q",
        Kind::Text { max: 200 },
        "Text search (case-insensitive substring) in the customer's and its contacts' names",
    ),
];
pub static CUSTOMERS: RouteSpec = RouteSpec {
    path: "/v1/customers",
    operation: "customers.list",
    operation_id: "list_customers",
    summary: "Customers, filtered, sorted and paginated",
    params: &[
        CUSTOMER_FILTERS[0],
        ParamSpec::query("segment", Kind::Enum(SEGMENTS), "RFM segment").multi(),
        CUSTOMER_FILTERS[1],
        CUSTOMER_FILTERS[2],
        CUSTOMER_FILTERS[3],
        CUSTOMER_FILTERS[4],
        CUSTOMER_SORT,
        LIMIT,
        CURSOR,
    ],
    answer: Answer::List {
        columns: CUSTOMER_COLUMNS,
        paging: Some(&CUSTOMER_PAGING),
    },
};
pub static SEGMENT_CUSTOMERS: RouteSpec = RouteSpec {
    path: "/v1/segments/rfm/{segment}/customers",
    operation: "segments.read",
    operation_id: "list_segment_customers",
    summary: "The customers of one RFM segment",
    params: &[
        ParamSpec::path("segment", Kind::Enum(SEGMENTS), "RFM segment"),
        CUSTOMER_FILTERS[0],
        CUSTOMER_FILTERS[1],
        CUSTOMER_FILTERS[2],
        CUSTOMER_FILTERS[3],
        CUSTOMER_FILTERS[4],
        CUSTOMER_SORT,
        LIMIT,
        CURSOR,
    ],
    answer: Answer::List {
        columns: CUSTOMER_COLUMNS,
        paging: Some(&CUSTOMER_PAGING),
    },
};
pub static CUSTOMER: RouteSpec = RouteSpec {
    path: "/v1/customers/{customer_id}",
    operation: "customers.read",
    operation_id: "get_customer",
    summary: "A customer's 360° view: profile, contacts, touchpoints per channel, open opportunities, service, orders, RFM, churn",
    params: &[ParamSpec::path("customer_id", Kind::Uuid, "Customer id")],
    answer: Answer::Single,
};

// ------------------------------------------------------------------ timeline

pub const TIMELINE_COLUMNS: &[&str] = &[
    "customer_id",
    "sequence",
    "event_id",
    "occurred_at",
    "event_type",
    "category",
    "channel",
    "direction",
    "summary",
    "actor",
    "subject_id",
];
pub static TIMELINE_PAGING: Paging = Paging {
    sorts: &[("occurred_at", "t.occurred_at", "timestamptz")],
    default: "occurred_at",
    tiebreak: ("t.sequence", "bigint"),
};
pub static TIMELINE: RouteSpec = RouteSpec {
    path: "/v1/customers/{customer_id}/timeline",
    operation: "timeline.read",
    operation_id: "get_timeline",
    summary: "A customer's timeline in business time (occurred-at)",
    params: &[
        ParamSpec::path("customer_id", Kind::Uuid, "Customer id"),
        ParamSpec::query("channel", Kind::Enum(&Channel::NAMES), "Touchpoint channel").multi(),
        ParamSpec::query("type", Kind::Enum(EVENT_TYPES), "Event type").multi(),
        ParamSpec::query(
            "category",
            Kind::Enum(CATEGORIES),
            "touchpoint or state_change",
        )
        .multi(),
        ParamSpec::query("from", Kind::Time, "Occurred at or after"),
        ParamSpec::query("to", Kind::Time, "Occurred before"),
        ParamSpec::query(
            "sort",
            Kind::Sort(&["occurred_at"]),
            "occurred_at (default, oldest first) or -occurred_at",
        ),
        LIMIT,
        CURSOR,
    ],
    answer: Answer::List {
        columns: TIMELINE_COLUMNS,
        paging: Some(&TIMELINE_PAGING),
    },
};

// ------------------------------------------------------------------ pipeline

pub const OPPORTUNITY_COLUMNS: &[&str] = &[
    "opportunity_id",
    "customer_id",
    "customer_name",
    "title",
    "source",
    "amount",
    "currency",
    "probability",
    "expected_close",
    "owner",
    "stage",
    "stage_since",
    "status",
    "opened_at",
    "closed_at",
    "lost_reason",
];
pub static OPPORTUNITY_PAGING: Paging = Paging {
    sorts: &[
        ("expected_close", "t.expected_close", "date"),
        ("amount", "t.amount", "bigint"),
        ("stage_since", "t.stage_since", "timestamptz"),
        ("opened_at", "t.opened_at", "timestamptz"),
    ],
    default: "expected_close",
    tiebreak: ("t.opportunity_id", "uuid"),
};
pub static OPPORTUNITIES: RouteSpec = RouteSpec {
    path: "/v1/opportunities",
    operation: "opportunities.list",
    operation_id: "list_opportunities",
    summary: "Sales opportunities",
    params: &[
        ParamSpec::query("stage", Kind::Enum(STAGES), "Current stage").multi(),
        ParamSpec::query("owner", Kind::Text { max: 200 }, "Assigned account manager").multi(),
        ParamSpec::query(
            "status",
            Kind::Enum(OPPORTUNITY_STATUSES),
            "open, won or lost",
        )
        .multi(),
        ParamSpec::query("customer", Kind::Uuid, "Customer id"),
        ParamSpec::query(
            "expected_close_from",
            Kind::Date,
            "Expected close on or after",
        ),
        ParamSpec::query(
            "expected_close_to",
            Kind::Date,
            "Expected close on or before",
        ),
        ParamSpec::query(
            "sort",
            Kind::Sort(&["expected_close", "amount", "stage_since", "opened_at"]),
            "Sort key (default expected_close); `-` prefix for descending",
        ),
        LIMIT,
        CURSOR,
    ],
    answer: Answer::List {
        columns: OPPORTUNITY_COLUMNS,
        paging: Some(&OPPORTUNITY_PAGING),
    },
};
pub static PIPELINE: RouteSpec = RouteSpec {
    path: "/v1/pipeline",
    operation: "pipeline.read",
    operation_id: "get_pipeline",
    summary: "Funnel per stage with conversion, win rate, sales cycle, weighted forecast and time in stage",
    params: &[ParamSpec::query(
        "as_of",
        Kind::Time,
        "Time in stage of stays in progress is measured to this time (default now)",
    )],
    answer: Answer::Single,
};

pub const ALERT_COLUMNS: &[&str] = &[
    "alert_id",
    "status",
    "opportunity_id",
    "customer_id",
    "customer_name",
    "owner",
    "stage",
    "stage_since",
    "threshold_days",
    "due_at",
    "opened_at",
    "closed_at",
    "closed_by",
];
pub static ALERT_PAGING: Paging = Paging {
    sorts: &[
        ("opened_at", "t.opened_at", "timestamptz"),
        ("due_at", "t.due_at", "timestamptz"),
    ],
    default: "opened_at",
    tiebreak: ("t.alert_id", "uuid"),
};
pub static ALERTS: RouteSpec = RouteSpec {
    path: "/v1/alerts",
    operation: "alerts.list",
    operation_id: "list_alerts",
    summary: "Stage-duration alerts (an opportunity too long in a stage), open and closed",
    params: &[
        ParamSpec::query("status", Kind::Enum(ALERT_STATUSES), "open or closed").multi(),
        ParamSpec::query(
            "owner",
            Kind::Text { max: 200 },
            "The opportunity's owner (the customer's when unassigned)",
        )
        .multi(),
        ParamSpec::query("stage", Kind::Enum(STAGES), "Stage").multi(),
        ParamSpec::query("customer", Kind::Uuid, "Customer id"),
        ParamSpec::query(
            "sort",
            Kind::Sort(&["opened_at", "due_at"]),
            "Sort key (default opened_at)",
        ),
        LIMIT,
        CURSOR,
    ],
    answer: Answer::List {
        columns: ALERT_COLUMNS,
        paging: Some(&ALERT_PAGING),
    },
};

// ------------------------------------------------------------------ RFM and churn

pub static SEGMENTS_RFM: RouteSpec = RouteSpec {
    path: "/v1/segments/rfm",
    operation: "segments.read",
    operation_id: "list_rfm_segments",
    summary: "RFM segment sizes (customers without orders in the window: no_purchases)",
    params: &[],
    answer: Answer::List {
        columns: &["segment", "customers"],
        paging: None,
    },
};

pub const CHURN_COLUMNS: &[&str] = &[
    "churn_case_id",
    "customer_id",
    "customer_name",
    "owner",
    "status",
    "warned_at",
    "warning_reason",
    "last_order_at",
    "measures",
    "confirmed_at",
    "confirmed_reason",
    "reactivated_at",
    "reactivation_reason",
];
pub static CHURN_PAGING: Paging = Paging {
    sorts: &[("warned_at", "t.warned_at", "timestamptz")],
    default: "warned_at",
    tiebreak: ("t.churn_case_id", "uuid"),
};
pub static CHURN: RouteSpec = RouteSpec {
    path: "/v1/churn",
    operation: "churn.read",
    operation_id: "list_churn_cases",
    summary: "Churn warnings and cases, with the delaying measures taken",
    params: &[
        ParamSpec::query(
            "status",
            Kind::Enum(CASE_STATUSES),
            "at_risk (warned), lost (confirmed) or reactivated",
        )
        .multi(),
        ParamSpec::query(
            "owner",
            Kind::Text { max: 200 },
            "The customer's account manager",
        )
        .multi(),
        ParamSpec::query("customer", Kind::Uuid, "Customer id"),
        ParamSpec::query(
            "sort",
            Kind::Sort(&["warned_at"]),
            "warned_at (default) or -warned_at",
        ),
        LIMIT,
        CURSOR,
    ],
    answer: Answer::List {
        columns: CHURN_COLUMNS,
        paging: Some(&CHURN_PAGING),
    },
};

// ------------------------------------------------------------------ reports

pub static REPORT: RouteSpec = RouteSpec {
    path: "/v1/reports/{report}",
    operation: "reports.read",
    operation_id: "get_report",
    summary: "The four reports: contribution (orders per customer), composition (customers by level, credit, satisfaction), service (requests per type), churn (lost customers and reasons). Periods are [from, to) in business time; composition takes none",
    params: &[
        ParamSpec::path("report", Kind::Enum(REPORTS), "Which report"),
        ParamSpec::query("from", Kind::Time, "Period start (required except for composition)"),
        ParamSpec::query("to", Kind::Time, "Period end, exclusive (required except for composition)"),
    ],
    answer: Answer::List {
        columns: &[],
        paging: None,
    },
};
pub const CONTRIBUTION_COLUMNS: &[&str] = &["customer_id", "name", "orders", "amount"];
pub const COMPOSITION_COLUMNS: &[&str] = &["dimension", "value", "customers"];
pub const SERVICE_COLUMNS: &[&str] = &["kind", "requests"];
pub const CHURN_REPORT_COLUMNS: &[&str] = &[
    "customer_id",
    "name",
    "owner",
    "churn_case_id",
    "warned_at",
    "confirmed_at",
    "reason",
    "measures",
];

// ------------------------------------------------------------------ audit

pub const AUDIT_COLUMNS: &[&str] = &[
    "event_id",
    "customer_id",
    "sequence",
    "event_type",
    "source",
    "actor",
    "occurred_at",
    "recorded_at",
    "command",
    "command_id",
    "correlation_id",
    "causation_id",
    "topic",
    "partition",
    "offset",
    "changes",
];
const AUDIT_TYPE_COUNT: usize = EVENT_TYPES.len() + ORGANISATION_EVENT_TYPES.len();

/// Every event type the audit trail holds: the customers' streams' and the organisation
/// stream's (teams).
pub const AUDIT_EVENT_TYPES: [&str; AUDIT_TYPE_COUNT] = {
    let mut out = [""; AUDIT_TYPE_COUNT];
    let mut i = 0;
    while i < EVENT_TYPES.len() {
        out[i] = EVENT_TYPES[i];
        i += 1;
    }
    let mut j = 0;
    while j < ORGANISATION_EVENT_TYPES.len() {
        out[i + j] = ORGANISATION_EVENT_TYPES[j];
        j += 1;
    }
    out
};

pub static AUDIT_PAGING: Paging = Paging {
    sorts: &[("recorded_at", "t.recorded_at", "timestamptz")],
    default: "recorded_at",
    tiebreak: ("t.event_id", "uuid"),
};
pub static AUDIT: RouteSpec = RouteSpec {
    path: "/v1/audit",
    operation: "audit.read",
    operation_id: "list_audit_trail",
    summary: "The audit trail: every change, who made it, when (recorded), from which command",
    params: &[
        ParamSpec::query("customer", Kind::Uuid, "Customer id"),
        ParamSpec::query("actor", Kind::Text { max: 200 }, "Who made the change").multi(),
        ParamSpec::query(
            "type",
            Kind::Enum(&AUDIT_EVENT_TYPES),
            "Event type (customers' and the organisation's)",
        )
        .multi(),
        ParamSpec::query("correlation", Kind::Uuid, "Correlation id"),
        ParamSpec::query("from", Kind::Time, "Recorded at or after"),
        ParamSpec::query("to", Kind::Time, "Recorded before"),
        ParamSpec::query(
            "sort",
            Kind::Sort(&["recorded_at"]),
            "recorded_at (default) or -recorded_at",
        ),
        LIMIT,
        CURSOR,
    ],
    answer: Answer::List {
        columns: AUDIT_COLUMNS,
        paging: Some(&AUDIT_PAGING),
    },
};
pub static AUDIT_EVENT: RouteSpec = RouteSpec {
    path: "/v1/audit/events/{event_id}",
    operation: "audit.read",
    operation_id: "get_audit_event",
    summary: "One change: the event, its command and sibling events, its causation chain and its Kafka position",
    params: &[ParamSpec::path("event_id", Kind::Uuid, "Event id (CloudEvents id)")],
    answer: Answer::Single,
};

/// Every read route, in the order of the OpenAPI document.
pub fn routes() -> [&'static RouteSpec; 12] {
    [
        &CUSTOMERS,
        &CUSTOMER,
        &TIMELINE,
        &OPPORTUNITIES,
        &PIPELINE,
        &ALERTS,
        &SEGMENTS_RFM,
        &SEGMENT_CUSTOMERS,
        &CHURN,
        &REPORT,
        &AUDIT,
        &AUDIT_EVENT,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::policy::rfm::Segment;
    use domain::{CustomerLevel, Stage};

    #[test]
    fn vocabularies_match_the_domain() {
        let levels: Vec<&str> = CustomerLevel::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(levels, LEVELS);
        let segments: Vec<&str> = Segment::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(segments, SEGMENTS);
        let stages: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(stages, STAGES);
    }

    #[test]
    fn every_route_is_a_query_of_the_permission_table_and_every_query_has_a_route() {
        use domain::access::{permission, OperationKind, PERMISSIONS};
        for r in routes() {
            let p = permission(r.operation)
                .unwrap_or_else(|| panic!("{}: `{}` is not in the table", r.path, r.operation));
            assert_eq!(p.kind, OperationKind::Query, "{}", r.path);
        }
        for p in PERMISSIONS
            .iter()
            .filter(|p| p.kind == OperationKind::Query)
        {
            assert!(
                routes().iter().any(|r| r.operation == p.operation),
                "the query `{}` has no route",
                p.operation
            );
        }
    }

    #[test]
    fn sort_parameters_match_the_paging() {
        for r in routes() {
            let Answer::List {
                paging: Some(paging),
                ..
            } = r.answer
            else {
                continue;
            };
            let sort = r.params.iter().find(|p| p.name == "sort");
            let Some(ParamSpec {
                kind: Kind::Sort(names),
                ..
            }) = sort
            else {
                panic!("{} has no sort parameter", r.path);
            };
            assert_eq!(*names, paging.sort_names().as_slice(), "{}", r.path);
            assert!(
                names.contains(&paging.default.trim_start_matches('-')),
                "{}",
                r.path
            );
        }
    }
}
