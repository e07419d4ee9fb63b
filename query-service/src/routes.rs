//! The read routes, each declared once: its path and handler (every read route is a GET),
//! the operation of the permission table it is, its summary, parameters and answer (for lists,
//! the columns and the sorts), with the handler right below. The router, the parameter checks
//! and `/openapi.json` are all made from this table ([`routes`]).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, MethodRouter};
use chrono::Utc;
use domain::access::Visibility;
use domain::{Channel, EVENT_TYPES, ORGANISATION_EVENT_TYPES};
use infra::problem::Problem;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::access::{only_visible, owners, sees};
use crate::error::{QueryError, Result};
use crate::http::Ask;
use crate::list::{bind_all, Bind, ListQuery, Paging, MAX_LIMIT};
use crate::params::{period, Kind, ParamSpec};
use crate::App;

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
    /// The GET of `path`: its handler.
    pub handler: fn() -> MethodRouter<Arc<App>>,
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

/// The one JSON value a query answers, if any.
async fn one(app: &App, sql: &str, binds: &[Bind]) -> Result<Option<Value>> {
    let row: Option<(Value,)> = bind_all(sqlx::query_as(sql), binds)
        .fetch_optional(&app.pool)
        .await?;
    Ok(row.map(|(v,)| v))
}

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
    handler: || get(customers),
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

async fn customers(State(app): State<Arc<App>>, ask: Ask) -> Result<Response> {
    customers_of(&app, &ask, &CUSTOMERS).await
}

/// The customers list, also a segment's (whose path names the segment).
async fn customers_of(app: &App, ask: &Ask, spec: &RouteSpec) -> Result<Response> {
    let p = ask.params(spec)?;
    let (s, seen) = ask.reach(app, spec).await?;
    let mut q = ListQuery::new(CUSTOMER_COLUMNS);
    q.from(format!(
        "SELECT c.customer_id, c.number, c.name, c.kind, c.region, c.industry, c.level, c.credit,
                c.satisfaction, c.owner, c.registered_at, c.churn_status, c.order_count,
                c.order_total, c.last_order_at, c.last_sequence, c.last_event_at,
                coalesce(r.segment, 'no_purchases') AS segment, r.recency_days, r.frequency,
                r.monetary, r.r, r.f, r.m
           FROM {s}.customers c LEFT JOIN {s}.rfm r USING (customer_id)"
    ));
    q.any_of("t.owner", p.list("owner"))
        .any_of("t.level", p.list("level"))
        .any_of("t.region", p.list("region"))
        .any_of("t.churn_status", p.list("churn_status"));
    segment_filter(&mut q, &s, p.list("segment"));
    only_visible(&mut q, &seen, &s, Some("t.owner"));
    if let Some(text) = p.text("q") {
        let ph = q.bind(Bind::Text(like_pattern(text.trim())));
        q.filter(format!(
            "(t.name ILIKE {ph} OR EXISTS (SELECT 1 FROM {s}.contacts k
                                            WHERE k.customer_id = t.customer_id AND k.name ILIKE {ph}))"
        ));
    }
    q.paginate(spec.path, &CUSTOMER_PAGING, &p)?;
    ask.list(app, &q, "customers").await
}

/// Customers of these RFM segments, said so that PostgreSQL knows how many there are (from
/// the statistics of `rfm.segment`, which the derived `coalesce(…, 'no_purchases')` hides): a
/// page in name order then reads the name index and stops after a page, instead of joining
/// every customer and sorting.
fn segment_filter(q: &mut ListQuery, s: &str, segments: Vec<String>) {
    let (unscored, scored): (Vec<String>, Vec<String>) =
        segments.into_iter().partition(|g| g == "no_purchases");
    let mut terms = Vec::new();
    if !scored.is_empty() {
        let p = q.bind(Bind::Texts(scored));
        terms.push(format!(
            "EXISTS (SELECT 1 FROM {s}.rfm x WHERE x.customer_id = t.customer_id AND x.segment = ANY({p}::text[]))"
        ));
    }
    if !unscored.is_empty() {
        terms.push(format!(
            "NOT EXISTS (SELECT 1 FROM {s}.rfm x WHERE x.customer_id = t.customer_id)"
        ));
    }
    if !terms.is_empty() {
        q.filter(format!("({})", terms.join(" OR ")));
    }
}

fn like_pattern(text: &str) -> String {
    let mut out = String::from("%");
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

pub static SEGMENT_CUSTOMERS: RouteSpec = RouteSpec {
    path: "/v1/segments/rfm/{segment}/customers",
    handler: || get(segment_customers),
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

async fn segment_customers(State(app): State<Arc<App>>, ask: Ask) -> Result<Response> {
    customers_of(&app, &ask, &SEGMENT_CUSTOMERS).await
}

pub static CUSTOMER: RouteSpec = RouteSpec {
    path: "/v1/customers/{customer_id}",
    handler: || get(customer),
    operation: "customers.read",
    operation_id: "get_customer",
    summary: "A customer's 360° view: profile, contacts, touchpoints per channel, open opportunities, service, orders, RFM, churn",
    params: &[ParamSpec::path("customer_id", Kind::Uuid, "Customer id")],
    answer: Answer::Single,
};

async fn customer(State(app): State<Arc<App>>, ask: Ask) -> Result<Response> {
    let p = ask.path_params(&CUSTOMER)?;
    let id = p.uuid("customer_id")?.unwrap_or_default();
    let (s, seen) = ask.reach(&app, &CUSTOMER).await?;
    let v = one(
        &app,
        &format!("SELECT to_jsonb(v) FROM {s}.customer_360 v WHERE v.customer_id = $1"),
        &[Bind::Uuid(id)],
    )
    .await?
    .filter(|v| sees(&seen, v.get("owner").and_then(Value::as_str)))
    .ok_or_else(|| no_customer(id))?;
    ask.single(&v)
}

fn no_customer(id: Uuid) -> QueryError {
    Problem::not_found(format!("no customer {id}"))
        .field("customer_id")
        .into()
}

/// `Ok` when the customer exists and the caller sees it; the same 404 otherwise.
async fn visible_customer(app: &App, s: &str, seen: &Visibility, id: Uuid) -> Result<()> {
    let owner = one(
        app,
        &format!("SELECT to_jsonb(owner) FROM {s}.customers WHERE customer_id = $1"),
        &[Bind::Uuid(id)],
    )
    .await?;
    if sees(seen, owner.as_ref().and_then(Value::as_str)) {
        Ok(())
    } else {
        Err(no_customer(id))
    }
}

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
    handler: || get(timeline),
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

async fn timeline(State(app): State<Arc<App>>, ask: Ask) -> Result<Response> {
    let p = ask.params(&TIMELINE)?;
    let id = p.uuid("customer_id")?.unwrap_or_default();
    let (from, to) = period(&p, "from", "to")?;
    let (s, seen) = ask.reach(&app, &TIMELINE).await?;
    visible_customer(&app, &s, &seen, id).await?;
    let mut q = ListQuery::new(TIMELINE_COLUMNS);
    q.from(format!(
        "SELECT customer_id, sequence, event_id, occurred_at, event_type, category, channel,
                direction, summary, actor, subject_id
           FROM {s}.timeline"
    ));
    q.eq_uuid("t.customer_id", Some(id))
        .any_of("t.channel", p.list("channel"))
        .any_of("t.event_type", p.list("type"))
        .any_of("t.category", p.list("category"))
        .time_range("t.occurred_at", from, to);
    q.paginate(TIMELINE.path, &TIMELINE_PAGING, &p)?;
    ask.list(&app, &q, "timeline").await
}

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
    handler: || get(opportunities),
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

async fn opportunities(State(app): State<Arc<App>>, ask: Ask) -> Result<Response> {
    let p = ask.params(&OPPORTUNITIES)?;
    let from = p.date("expected_close_from")?;
    let to = p.date("expected_close_to")?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(Problem::bad_parameter(
                "expected_close_to",
                "must not be before expected_close_from",
            )
            .into());
        }
    }
    let (s, seen) = ask.reach(&app, &OPPORTUNITIES).await?;
    let mut q = ListQuery::new(OPPORTUNITY_COLUMNS);
    only_visible(&mut q, &seen, &s, None);
    q.from(format!(
        "SELECT o.opportunity_id, o.customer_id, c.name AS customer_name, o.title, o.source,
                o.amount, o.currency, o.probability, o.expected_close, o.owner, o.stage,
                o.stage_since, o.status, o.opened_at, o.closed_at, o.lost_reason
           FROM {s}.opportunities o LEFT JOIN {s}.customers c USING (customer_id)"
    ));
    q.any_of("t.stage", p.list("stage"))
        .any_of("t.owner", p.list("owner"))
        .any_of("t.status", p.list("status"))
        .eq_uuid("t.customer_id", p.uuid("customer")?);
    if let Some(f) = from {
        let ph = q.bind(Bind::Date(f));
        q.filter(format!("t.expected_close >= {ph}"));
    }
    if let Some(t) = to {
        let ph = q.bind(Bind::Date(t));
        q.filter(format!("t.expected_close <= {ph}"));
    }
    q.paginate(OPPORTUNITIES.path, &OPPORTUNITY_PAGING, &p)?;
    ask.list(&app, &q, "opportunities").await
}

pub static PIPELINE: RouteSpec = RouteSpec {
    path: "/v1/pipeline",
    handler: || get(pipeline),
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

async fn pipeline(State(app): State<Arc<App>>, ask: Ask) -> Result<Response> {
    let p = ask.params(&PIPELINE)?;
    let as_of = p.time("as_of")?.unwrap_or_else(Utc::now);
    let (s, seen) = ask.reach(&app, &PIPELINE).await?;
    // $2: the owners whose customers' opportunities count (NULL: all). Everything
    // comes from the pipeline unit's totals per customer owner (a few rows each) and,
    // for the longest time in a stage, one index probe per owner and stage.
    let v = one(
        &app,
        &format!(
            "WITH seen AS (
                 SELECT t.customer_owner FROM {s}.pipeline_owner_totals t
                  WHERE $2::text[] IS NULL
                 UNION ALL
                 SELECT unnest($2::text[])
             ),
             o AS (
                 SELECT coalesce(sum(t.open_count), 0)::bigint AS open_count,
                        coalesce(sum(t.won_count), 0)::bigint AS won_count,
                        coalesce(sum(t.lost_count), 0)::bigint AS lost_count,
                        sum(t.won_cycle_seconds) AS won_cycle_seconds
                   FROM {s}.pipeline_owner_totals t
                  WHERE $2::text[] IS NULL OR t.customer_owner = ANY($2::text[])
             ),
             st AS (
                 SELECT fs.ord, fs.stage,
                        coalesce(sum(t.reached), 0)::bigint AS reached,
                        coalesce(sum(t.visits), 0)::bigint AS visits,
                        sum(t.ended_seconds) AS ended_seconds,
                        coalesce(sum(t.open_count), 0)::bigint AS open_count,
                        coalesce(sum(t.open_amount), 0)::bigint AS open_amount,
                        sum(t.open_since_seconds) AS open_since_seconds
                   FROM {s}.funnel_stages fs
                   LEFT JOIN {s}.pipeline_stage_totals t
                          ON t.stage = fs.stage
                         AND ($2::text[] IS NULL OR t.customer_owner = ANY($2::text[]))
                  GROUP BY fs.ord, fs.stage
             ),
             funnel AS (
                 SELECT st.ord, st.stage, st.open_count, st.open_amount,
                        CASE WHEN st.stage = 'won' THEN o.won_count ELSE st.reached END
                            AS reached_count
                   FROM st, o
             )
             SELECT jsonb_build_object(
                'as_of', $1::timestamptz,
                'summary', (SELECT jsonb_build_object(
                        'open_count', o.open_count,
                        'won_count', o.won_count,
                        'lost_count', o.lost_count,
                        'win_rate', CASE WHEN o.won_count + o.lost_count = 0 THEN NULL
                                         ELSE o.won_count::float8 / (o.won_count + o.lost_count) END,
                        'avg_sales_cycle_days', CASE WHEN o.won_count = 0 THEN NULL
                                         ELSE (o.won_cycle_seconds / o.won_count / 86400)::float8 END)
                      FROM o),
                'funnel', (SELECT jsonb_agg(jsonb_build_object(
                        'ord', f.ord, 'stage', f.stage, 'open_count', f.open_count,
                        'open_amount', f.open_amount, 'reached_count', f.reached_count,
                        'conversion_to_next', f.conversion_to_next) ORDER BY f.ord)
                      FROM (SELECT f.*,
                                   CASE WHEN f.reached_count = 0 THEN NULL
                                        ELSE (lead(f.reached_count) OVER (ORDER BY f.ord))::float8
                                             / f.reached_count END AS conversion_to_next
                              FROM funnel f) f),
                'forecast', coalesce((SELECT jsonb_agg(to_jsonb(w) ORDER BY w.month, w.owner NULLS FIRST) FROM (
                        SELECT t.month, nullif(t.owner, '') AS owner,
                               sum(t.opportunities)::bigint AS opportunities,
                               sum(t.amount)::bigint AS amount,
                               sum(t.weighted_amount)::float8 AS weighted_amount
                          FROM {s}.pipeline_forecast t
                         WHERE $2::text[] IS NULL OR t.customer_owner = ANY($2::text[])
                         GROUP BY t.month, t.owner) w), '[]'),
                'time_in_stage', (SELECT jsonb_agg(jsonb_build_object(
                        'ord', st.ord, 'stage', st.stage,
                        'opportunities', st.reached,
                        'visits', st.visits,
                        'avg_days', CASE WHEN st.reached = 0 THEN NULL
                            ELSE ((st.ended_seconds + st.open_count * extract(epoch FROM $1::timestamptz)
                                   - st.open_since_seconds) / st.reached)::float8 / 86400 END,
                        'max_days', (SELECT max(x.seconds)::float8 / 86400 FROM (
                                SELECT (SELECT d.ended_seconds FROM {s}.stage_durations d
                                         WHERE d.customer_owner = seen.customer_owner
                                           AND d.stage = st.stage AND d.in_stage_since IS NULL
                                         ORDER BY d.ended_seconds DESC LIMIT 1) AS seconds
                                  FROM seen
                                UNION ALL
                                SELECT extract(epoch FROM $1::timestamptz)
                                       + (SELECT d.open_key FROM {s}.stage_durations d
                                           WHERE d.customer_owner = seen.customer_owner
                                             AND d.stage = st.stage AND d.in_stage_since IS NOT NULL
                                           ORDER BY d.open_key DESC LIMIT 1)
                                  FROM seen) x),
                        'open_avg_days', CASE WHEN st.open_count = 0 THEN NULL
                            ELSE ((st.open_count * extract(epoch FROM $1::timestamptz)
                                   - st.open_since_seconds) / st.open_count)::float8 / 86400 END)
                        ORDER BY st.ord)
                      FROM st WHERE st.stage <> 'won'),
                'open_alerts', (SELECT count(*) FROM {s}.stage_alerts a
                                 WHERE a.closed_at IS NULL
                                   AND ($2::text[] IS NULL OR EXISTS (
                                        SELECT 1 FROM {s}.customers c
                                         WHERE c.customer_id = a.customer_id
                                           AND c.owner = ANY($2::text[])))))"
        ),
        &[Bind::Time(as_of), Bind::OptTexts(owners(&seen))],
    )
    .await?
    .unwrap_or(Value::Null);
    ask.single(&v)
}

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
    handler: || get(alerts),
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

async fn alerts(State(app): State<Arc<App>>, ask: Ask) -> Result<Response> {
    let p = ask.params(&ALERTS)?;
    let (s, seen) = ask.reach(&app, &ALERTS).await?;
    let mut q = ListQuery::new(ALERT_COLUMNS);
    only_visible(&mut q, &seen, &s, None);
    q.from(format!(
        "SELECT a.alert_id,
                CASE WHEN a.closed_at IS NULL THEN 'open' ELSE 'closed' END AS status,
                a.opportunity_id, a.customer_id, c.name AS customer_name,
                coalesce(o.owner, c.owner) AS owner, a.stage, a.stage_since,
                a.threshold_days, a.due_at, a.opened_at, a.closed_at, a.closed_by
           FROM {s}.stage_alerts a
           LEFT JOIN {s}.opportunities o ON o.opportunity_id = a.opportunity_id
           LEFT JOIN {s}.customers c ON c.customer_id = a.customer_id"
    ));
    q.any_of("t.status", p.list("status"))
        .any_of("t.owner", p.list("owner"))
        .any_of("t.stage", p.list("stage"))
        .eq_uuid("t.customer_id", p.uuid("customer")?);
    q.paginate(ALERTS.path, &ALERT_PAGING, &p)?;
    ask.list(&app, &q, "alerts").await
}

// ------------------------------------------------------------------ RFM and churn

pub static SEGMENTS_RFM: RouteSpec = RouteSpec {
    path: "/v1/segments/rfm",
    handler: || get(segments),
    operation: "segments.read",
    operation_id: "list_rfm_segments",
    summary: "RFM segment sizes (customers without orders in the window: no_purchases)",
    params: &[],
    answer: Answer::List {
        columns: &["segment", "customers"],
        paging: None,
    },
};

async fn segments(State(app): State<Arc<App>>, ask: Ask) -> Result<Response> {
    ask.params(&SEGMENTS_RFM)?;
    let (s, seen) = ask.reach(&app, &SEGMENTS_RFM).await?;
    let mut q = ListQuery::new(&["segment", "customers"]);
    let segments = q.bind(Bind::Texts(
        SEGMENTS.iter().map(|s| (*s).to_owned()).collect(),
    ));
    let visible = q.bind(Bind::OptTexts(owners(&seen)));
    // the sizes of `rfm_segment_sizes`, over the customers the caller sees
    q.from(format!(
        "SELECT s.segment, count(c.customer_id) AS customers
           FROM unnest({segments}::text[]) AS s(segment)
           LEFT JOIN (SELECT c.customer_id, coalesce(r.segment, 'no_purchases') AS segment
                        FROM {s}.customers c LEFT JOIN {s}.rfm r USING (customer_id)
                       WHERE {visible}::text[] IS NULL OR c.owner = ANY({visible}::text[])) c
                  ON c.segment = s.segment
          GROUP BY s.segment"
    ))
    .order("t.segment");
    // how many customers were scored is a company-wide figure
    let hide = if matches!(seen, Visibility::All) {
        ""
    } else {
        " - 'scored'"
    };
    let run = one(
        &app,
        &format!("SELECT to_jsonb(r) - 'id' - 'orders_version'{hide} FROM {s}.rfm_runs r"),
        &[],
    )
    .await?;
    q.envelope
        .insert("rfm_run".into(), run.unwrap_or(Value::Null));
    ask.list(&app, &q, "rfm-segments").await
}

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
    handler: || get(churn),
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

async fn churn(State(app): State<Arc<App>>, ask: Ask) -> Result<Response> {
    let p = ask.params(&CHURN)?;
    let (s, seen) = ask.reach(&app, &CHURN).await?;
    let mut q = ListQuery::new(CHURN_COLUMNS);
    only_visible(&mut q, &seen, &s, None);
    q.from(format!(
        "SELECT k.churn_case_id, k.customer_id, c.name AS customer_name, c.owner, k.status,
                k.warned_at, k.warning_reason, k.last_order_at,
                coalesce((SELECT array_agg(m.measure ORDER BY m.sequence)
                            FROM {s}.churn_measures m
                           WHERE m.churn_case_id = k.churn_case_id), '{{}}') AS measures,
                k.confirmed_at, k.confirmed_reason, k.reactivated_at, k.reactivation_reason
           FROM {s}.churn_cases k LEFT JOIN {s}.customers c USING (customer_id)"
    ));
    q.any_of("t.status", p.list("status"))
        .any_of("t.owner", p.list("owner"))
        .eq_uuid("t.customer_id", p.uuid("customer")?);
    q.paginate(CHURN.path, &CHURN_PAGING, &p)?;
    ask.list(&app, &q, "churn").await
}

// ------------------------------------------------------------------ reports

pub static REPORT: RouteSpec = RouteSpec {
    path: "/v1/reports/{report}",
    handler: || get(report),
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

async fn report(State(app): State<Arc<App>>, ask: Ask) -> Result<Response> {
    // company-wide figures: the permission alone decides
    let p = ask.params(&REPORT)?;
    let name = p.text("report").unwrap_or_default();
    let (from, to) = period(&p, "from", "to")?;
    let s = app.schema().await?;
    let mut q;
    if name == "composition" {
        for bound in ["from", "to"] {
            if p.has(bound) {
                return Err(Problem::bad_parameter(
                    bound,
                    "the composition report counts today's customers; it takes no period",
                )
                .into());
            }
        }
        q = ListQuery::new(COMPOSITION_COLUMNS);
        q.from(format!(
            "SELECT 'level' AS dimension, level AS value, count(*) AS customers
               FROM {s}.customers GROUP BY level
             UNION ALL
             SELECT 'credit', credit::text, count(*) FROM {s}.customers GROUP BY credit
             UNION ALL
             SELECT 'satisfaction', satisfaction::text, count(*)
               FROM {s}.customers GROUP BY satisfaction"
        ))
        .order("CASE t.dimension WHEN 'level' THEN 0 WHEN 'credit' THEN 1 ELSE 2 END, t.value");
    } else {
        let from = from.ok_or_else(|| Problem::bad_parameter("from", "required"))?;
        let to = to.ok_or_else(|| Problem::bad_parameter("to", "required"))?;
        q = ListQuery::new(match name.as_str() {
            "contribution" => CONTRIBUTION_COLUMNS,
            "service" => SERVICE_COLUMNS,
            _ => CHURN_REPORT_COLUMNS,
        });
        let f = q.bind(Bind::Time(from));
        let t = q.bind(Bind::Time(to));
        q.envelope.insert("from".into(), json!(from));
        q.envelope.insert("to".into(), json!(to));
        match name.as_str() {
            "contribution" => q
                .from(format!(
                    "SELECT o.customer_id, coalesce(c.name, '') AS name, count(*) AS orders,
                            sum(o.amount)::bigint AS amount
                       FROM {s}.orders o LEFT JOIN {s}.customers c USING (customer_id)
                      WHERE o.ordered_at >= {f} AND o.ordered_at < {t}
                      GROUP BY o.customer_id, c.name"
                ))
                .order("t.amount DESC, t.customer_id"),
            "service" => q
                .from(format!(
                    "SELECT k.kind, count(r.service_request_id) AS requests
                       FROM (VALUES ('consultation'), ('complaint'), ('suggestion')) AS k(kind)
                       LEFT JOIN {s}.service_requests r
                              ON r.kind = k.kind AND r.created_at >= {f} AND r.created_at < {t}
                      GROUP BY k.kind"
                ))
                .order("t.kind"),
            _ => q
                .from(format!(
                    "SELECT k.customer_id, c.name, c.owner, k.churn_case_id, k.warned_at,
                            k.confirmed_at, k.confirmed_reason AS reason,
                            coalesce((SELECT array_agg(m.measure ORDER BY m.sequence)
                                        FROM {s}.churn_measures m
                                       WHERE m.churn_case_id = k.churn_case_id), '{{}}') AS measures
                       FROM {s}.churn_cases k JOIN {s}.customers c USING (customer_id)
                      WHERE k.status = 'lost' AND k.confirmed_at >= {f} AND k.confirmed_at < {t}"
                ))
                .order("t.confirmed_at, t.customer_id"),
        };
    }
    q.envelope.insert("report".into(), json!(name));
    ask.list(&app, &q, &format!("report-{name}")).await
}

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
    handler: || get(audit),
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

async fn audit(State(app): State<Arc<App>>, ask: Ask) -> Result<Response> {
    let p = ask.params(&AUDIT)?;
    let (from, to) = period(&p, "from", "to")?;
    let (s, seen) = ask.reach(&app, &AUDIT).await?;
    let mut q = ListQuery::new(AUDIT_COLUMNS);
    only_visible(&mut q, &seen, &s, None);
    q.from(format!(
        r#"SELECT event_id, customer_id, sequence, event_type, source, actor, occurred_at,
                  recorded_at, command, command_id, correlation_id, causation_id, topic,
                  "partition", "offset", changes
             FROM {s}.audit_trail"#
    ));
    q.eq_uuid("t.customer_id", p.uuid("customer")?)
        .any_of("t.actor", p.list("actor"))
        .any_of("t.event_type", p.list("type"))
        .eq_uuid("t.correlation_id", p.uuid("correlation")?)
        .time_range("t.recorded_at", from, to);
    q.paginate(AUDIT.path, &AUDIT_PAGING, &p)?;
    ask.list(&app, &q, "audit").await
}

pub static AUDIT_EVENT: RouteSpec = RouteSpec {
    path: "/v1/audit/events/{event_id}",
    handler: || get(audit_event),
    operation: "audit.read",
    operation_id: "get_audit_event",
    summary: "One change: the event, its command and sibling events, its causation chain and its Kafka position",
    params: &[ParamSpec::path("event_id", Kind::Uuid, "Event id (CloudEvents id)")],
    answer: Answer::Single,
};

async fn audit_event(State(app): State<Arc<App>>, ask: Ask) -> Result<Response> {
    let p = ask.path_params(&AUDIT_EVENT)?;
    let id = p.uuid("event_id")?.unwrap_or_default();
    let (s, seen) = ask.reach(&app, &AUDIT_EVENT).await?;
    let no_event = || Problem::not_found(format!("no event {id}")).field("event_id");
    // $2: the owners whose customers' events the caller sees (NULL: every event).
    // An event of a customer out of reach is "no event", as one that does not exist;
    // its causes and consequences elsewhere are left out the same way.
    let visible = |alias: &str| {
        format!(
            "($2::text[] IS NULL OR EXISTS (SELECT 1 FROM {s}.customers vc
                                            WHERE vc.customer_id = {alias}.customer_id
                                              AND vc.owner = ANY($2::text[])))"
        )
    };
    let seen_owners = owners(&seen);
    let v = one(
        &app,
        &format!(
            r#"WITH e AS (SELECT * FROM {s}.audit_trail x WHERE x.event_id = $1 AND {seen_x})
               SELECT jsonb_build_object(
                 'event', (SELECT to_jsonb(e) FROM e),
                 'position', (SELECT jsonb_build_object('topic', e.topic, 'partition', e."partition",
                                                        'offset', e."offset") FROM e),
                 'command', (SELECT jsonb_build_object(
                     'name', e.command, 'command_id', e.command_id,
                     'correlation_id', e.correlation_id,
                     'events', (SELECT jsonb_agg(jsonb_build_object(
                                    'event_id', a.event_id, 'sequence', a.sequence,
                                    'event_type', a.event_type, 'topic', a.topic,
                                    'partition', a."partition", 'offset', a."offset")
                                    ORDER BY a.sequence)
                                  FROM {s}.audit_trail a
                                 WHERE a.customer_id = e.customer_id
                                   AND a.correlation_id = e.correlation_id
                                   AND a.recorded_at = e.recorded_at
                                   AND a.command IS NOT DISTINCT FROM e.command
                                   AND a.command_id IS NOT DISTINCT FROM e.command_id))
                     FROM e),
                 'caused', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                         'event_id', a.event_id, 'customer_id', a.customer_id,
                                         'sequence', a.sequence, 'event_type', a.event_type)
                                         ORDER BY a.recorded_at, a.event_id)
                                       FROM {s}.audit_trail a WHERE a.causation_id = $1 AND {seen_a}), '[]'))
                 FROM e"#,
            seen_x = visible("x"),
            seen_a = visible("a"),
        ),
        &[Bind::Uuid(id), Bind::OptTexts(seen_owners.clone())],
    )
    .await?
    .ok_or_else(no_event)?;
    let chain: Vec<(i32, Uuid, Option<Value>)> = sqlx::query_as(&format!(
        "WITH RECURSIVE chain(id, depth) AS (
             SELECT a.causation_id, 1 FROM {s}.audit_trail a WHERE a.event_id = $1
             UNION ALL
             SELECT p.causation_id, c.depth + 1
               FROM chain c JOIN {s}.audit_trail p ON p.event_id = c.id
              WHERE c.depth < 64)
         SELECT c.depth, c.id, CASE WHEN {seen_p} THEN to_jsonb(p) END FROM chain c
           LEFT JOIN {s}.audit_trail p ON p.event_id = c.id
          WHERE c.id IS NOT NULL ORDER BY c.depth",
        seen_p = visible("p"),
    ))
    .bind(id)
    .bind(seen_owners)
    .fetch_all(&app.pool)
    .await?;
    let chain: Vec<Value> = chain
        .into_iter()
        .map(|(depth, id, event)| json!({"depth": depth, "causation_id": id, "event": event}))
        .collect();
    let mut body = match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    body.insert("causation_chain".into(), Value::Array(chain));
    ask.single(&Value::Object(body))
}

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
