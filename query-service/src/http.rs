//! The HTTP API: one handler per route of [`crate::routes`], the authentication,
//! read-your-writes and metrics middleware, the operational endpoints and the OpenAPI document.
//!
//! Every handler first checks the route's operation against the permission table (403), then
//! reads only what the caller's reach allows ([`crate::access`]): lists leave the customers the
//! caller does not see out, and a single resource of such a customer is 404, word for word
//! the answer for one that does not exist.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use domain::access::{Principal, Visibility};
use infra::auth::{require_authentication, Authenticated};
use infra::problem::Problem;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::access::{only_visible, owners, permit, sees, visibility};
use crate::error::{QueryError, Result};
use crate::list::{bind_all, fnv64, Bind, ListQuery};
use crate::params::{period, In, Params};
use crate::position::{parse_positions, wait_for, MIN_POSITION_NAME};
use crate::routes::*;
use crate::App;

type RawQuery = std::result::Result<Query<Vec<(String, String)>>, QueryRejection>;
type RawPath = std::result::Result<Path<Vec<(String, String)>>, PathRejection>;

/// The query-service's router. Mount it as is (the `crm` one-process binary merges it beside
/// the command API on another listener).
pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route(CUSTOMERS.path, get(customers))
        .route(CUSTOMER.path, get(customer))
        .route(TIMELINE.path, get(timeline))
        .route(OPPORTUNITIES.path, get(opportunities))
        .route(PIPELINE.path, get(pipeline))
        .route(ALERTS.path, get(alerts))
        .route(SEGMENTS_RFM.path, get(segments))
        .route(SEGMENT_CUSTOMERS.path, get(segment_customers))
        .route(CHURN.path, get(churn))
        .route(REPORT.path, get(report))
        .route(AUDIT.path, get(audit))
        .route(AUDIT_EVENT.path, get(audit_event))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            read_your_writes,
        ));
    Router::new()
        .merge(v1)
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        // Closed by default: every route but the open ones (`infra::auth::OPEN_PATHS`) needs
        // a caller; inside `track`, so that 401s are counted per route too.
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            require_authentication::<Arc<App>>,
        ))
        .route_layer(middleware::from_fn_with_state(app.clone(), track))
        .fallback(|| async { Problem::not_found("no such resource") })
        .layer(middleware::map_response(infra::headers::security_headers))
        .with_state(app)
}

// ------------------------------------------------------------------ middleware

/// Latency per route template, method and status.
async fn track(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    app.metrics
        .request_seconds
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `CRM-Min-Position`: waits until the live read model has applied the position.
async fn read_your_writes(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let wanted = match parse_positions(request.headers()) {
        Ok(w) => w,
        Err(p) => return p.into_response(),
    };
    if !wanted.is_empty() {
        let started = Instant::now();
        let outcome = wait_for(
            &app.pool,
            &app.checkpoints,
            &app.projection,
            wanted,
            app.max_wait,
        )
        .await;
        let label = match &outcome {
            Ok(()) => "reached",
            Err(QueryError::Problem(_)) => "timed_out",
            Err(_) => "error",
        };
        app.metrics.position_waits.with_label_values(&[label]).inc();
        app.metrics
            .position_wait_seconds
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = outcome {
            return e.into_response();
        }
    }
    next.run(request).await
}

// ------------------------------------------------------------------ helpers

fn reply(result: Result<Response>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn params(spec: &'static RouteSpec, query: RawQuery, path: Option<RawPath>) -> Result<Params> {
    let Query(query) = query.map_err(|e| Problem::bad_parameter("query", e.body_text()))?;
    let path = match path {
        Some(p) => {
            let Path(p) = p.map_err(|e| {
                let name = spec
                    .params
                    .iter()
                    .find(|s| s.location == In::Path)
                    .map_or("path", |s| s.name);
                Problem::bad_parameter(name, e.body_text())
            })?;
            p
        }
        None => Vec::new(),
    };
    Ok(Params::parse(spec.params, query, path)?)
}

/// How the client wants a list: CSV when `text/csv` ranks above JSON in `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

fn format(headers: &HeaderMap) -> Format {
    let mut best: Option<(f32, Format)> = None;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(text) = value.to_str() else { continue };
        for range in text.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let f = match media.as_str() {
                "text/csv" | "text/*" => Format::Csv,
                "application/json" | "application/*" | "*/*" => Format::Json,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, f));
            }
        }
    }
    best.map_or(Format::Json, |(_, f)| f)
}

async fn list(app: &App, headers: &HeaderMap, q: &ListQuery, name: &str) -> Result<Response> {
    match format(headers) {
        Format::Csv => q.csv(&app.pool, name).await,
        Format::Json => q.json(&app.pool).await,
    }
}

/// One resource as JSON with a strong `ETag` (a hash of the body); `304` when
/// `If-None-Match` names it.
fn single(headers: &HeaderMap, value: &Value) -> Result<Response> {
    if format(headers) == Format::Csv {
        return Err(Problem::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-acceptable",
            "Not acceptable",
        )
        .field("Accept")
        .detail("this resource is JSON only; CSV is offered for lists")
        .into());
    }
    let body = serde_json::to_vec(value)?;
    let etag = format!("\"{:016x}\"", fnv64(&body));
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag);
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/json")],
            axum::body::Body::from(body),
        )
            .into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // what a caller sees depends on who they are: no shared cache may keep it
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static("authorization, x-api-key"),
    );
    Ok(response)
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

async fn one(app: &App, sql: &str, binds: &[Bind]) -> Result<Option<Value>> {
    let row: Option<(Value,)> = bind_all(sqlx::query_as(sql), binds)
        .fetch_optional(&app.pool)
        .await?;
    Ok(row.map(|(v,)| v))
}

// ------------------------------------------------------------------ customers

async fn customers(
    State(app): State<Arc<App>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    query: RawQuery,
) -> Response {
    reply(customers_of(&app, &caller, &headers, &CUSTOMERS, query, None).await)
}

async fn segment_customers(
    State(app): State<Arc<App>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    path: RawPath,
    query: RawQuery,
) -> Response {
    reply(
        customers_of(
            &app,
            &caller,
            &headers,
            &SEGMENT_CUSTOMERS,
            query,
            Some(path),
        )
        .await,
    )
}

async fn customers_of(
    app: &App,
    caller: &Principal,
    headers: &HeaderMap,
    spec: &'static RouteSpec,
    query: RawQuery,
    path: Option<RawPath>,
) -> Result<Response> {
    permit(caller, spec.operation)?;
    let p = params(spec, query, path)?;
    let s = app.schema().await?;
    let seen = visibility(app, &s, caller, spec.operation).await?;
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
    list(app, headers, &q, "customers").await
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

fn no_customer(id: Uuid) -> QueryError {
    Problem::not_found(format!("no customer {id}"))
        .field("customer_id")
        .into()
}

async fn customer(
    State(app): State<Arc<App>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    path: RawPath,
) -> Response {
    reply(
        async {
            permit(&caller, CUSTOMER.operation)?;
            let p = params(&CUSTOMER, Ok(Query(Vec::new())), Some(path))?;
            let id = p.uuid("customer_id")?.unwrap_or_default();
            let s = app.schema().await?;
            let seen = visibility(&app, &s, &caller, CUSTOMER.operation).await?;
            let v = one(
                &app,
                &format!("SELECT to_jsonb(v) FROM {s}.customer_360 v WHERE v.customer_id = $1"),
                &[Bind::Uuid(id)],
            )
            .await?
            .filter(|v| sees(&seen, v.get("owner").and_then(Value::as_str)))
            .ok_or_else(|| no_customer(id))?;
            single(&headers, &v)
        }
        .await,
    )
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

async fn timeline(
    State(app): State<Arc<App>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    path: RawPath,
    query: RawQuery,
) -> Response {
    reply(
        async {
            permit(&caller, TIMELINE.operation)?;
            let p = params(&TIMELINE, query, Some(path))?;
            let id = p.uuid("customer_id")?.unwrap_or_default();
            let (from, to) = period(&p, "from", "to")?;
            let s = app.schema().await?;
            let seen = visibility(&app, &s, &caller, TIMELINE.operation).await?;
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
            list(&app, &headers, &q, "timeline").await
        }
        .await,
    )
}

// ------------------------------------------------------------------ pipeline

async fn opportunities(
    State(app): State<Arc<App>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    query: RawQuery,
) -> Response {
    reply(
        async {
            permit(&caller, OPPORTUNITIES.operation)?;
            let p = params(&OPPORTUNITIES, query, None)?;
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
            let s = app.schema().await?;
            let seen = visibility(&app, &s, &caller, OPPORTUNITIES.operation).await?;
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
            list(&app, &headers, &q, "opportunities").await
        }
        .await,
    )
}

async fn pipeline(
    State(app): State<Arc<App>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    query: RawQuery,
) -> Response {
    reply(
        async {
            permit(&caller, PIPELINE.operation)?;
            let p = params(&PIPELINE, query, None)?;
            let as_of = p.time("as_of")?.unwrap_or_else(Utc::now);
            let s = app.schema().await?;
            let seen = visibility(&app, &s, &caller, PIPELINE.operation).await?;
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
            single(&headers, &v)
        }
        .await,
    )
}

async fn alerts(
    State(app): State<Arc<App>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    query: RawQuery,
) -> Response {
    reply(
        async {
            permit(&caller, ALERTS.operation)?;
            let p = params(&ALERTS, query, None)?;
            let s = app.schema().await?;
            let seen = visibility(&app, &s, &caller, ALERTS.operation).await?;
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
            list(&app, &headers, &q, "alerts").await
        }
        .await,
    )
}

// ------------------------------------------------------------------ RFM and churn

async fn segments(
    State(app): State<Arc<App>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    query: RawQuery,
) -> Response {
    reply(
        async {
            permit(&caller, SEGMENTS_RFM.operation)?;
            params(&SEGMENTS_RFM, query, None)?;
            let s = app.schema().await?;
            let seen = visibility(&app, &s, &caller, SEGMENTS_RFM.operation).await?;
            let mut q = ListQuery::new(&["segment", "customers"]);
            let segments = q.bind(Bind::Texts(SEGMENTS.iter().map(|s| (*s).to_owned()).collect()));
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
            let hide = if matches!(seen, Visibility::All) { "" } else { " - 'scored'" };
            let run = one(
                &app,
                &format!(
                    "SELECT to_jsonb(r) - 'id' - 'orders_version'{hide} FROM {s}.rfm_runs r"
                ),
                &[],
            )
            .await?;
            q.envelope
                .insert("rfm_run".into(), run.unwrap_or(Value::Null));
            list(&app, &headers, &q, "rfm-segments").await
        }
        .await,
    )
}

async fn churn(
    State(app): State<Arc<App>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    query: RawQuery,
) -> Response {
    reply(
        async {
            permit(&caller, CHURN.operation)?;
            let p = params(&CHURN, query, None)?;
            let s = app.schema().await?;
            let seen = visibility(&app, &s, &caller, CHURN.operation).await?;
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
            list(&app, &headers, &q, "churn").await
        }
        .await,
    )
}

// ------------------------------------------------------------------ reports

async fn report(
    State(app): State<Arc<App>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    path: RawPath,
    query: RawQuery,
) -> Response {
    reply(
        async {
            // company-wide figures: the permission alone decides
            permit(&caller, REPORT.operation)?;
            let p = params(&REPORT, query, Some(path))?;
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
            list(&app, &headers, &q, &format!("report-{name}")).await
        }
        .await,
    )
}

// ------------------------------------------------------------------ audit

async fn audit(
    State(app): State<Arc<App>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    query: RawQuery,
) -> Response {
    reply(
        async {
            permit(&caller, AUDIT.operation)?;
            let p = params(&AUDIT, query, None)?;
            let (from, to) = period(&p, "from", "to")?;
            let s = app.schema().await?;
            let seen = visibility(&app, &s, &caller, AUDIT.operation).await?;
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
            list(&app, &headers, &q, "audit").await
        }
        .await,
    )
}

async fn audit_event(
    State(app): State<Arc<App>>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    path: RawPath,
) -> Response {
    reply(
        async {
            permit(&caller, AUDIT_EVENT.operation)?;
            let p = params(&AUDIT_EVENT, Ok(Query(Vec::new())), Some(path))?;
            let id = p.uuid("event_id")?.unwrap_or_default();
            let s = app.schema().await?;
            let seen = visibility(&app, &s, &caller, AUDIT_EVENT.operation).await?;
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
                .map(|(depth, id, event)| {
                    json!({"depth": depth, "causation_id": id, "event": event})
                })
                .collect();
            let mut body = match v {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            body.insert("causation_chain".into(), Value::Array(chain));
            single(&headers, &Value::Object(body))
        }
        .await,
    )
}

// ------------------------------------------------------------------ operations

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.schema().await {
        Ok(schema) => Json(json!({
            "status": "ready",
            "projection": app.projection,
            "schema": schema,
        }))
        .into_response(),
        Err(e) => {
            let mut p = e.problem();
            p.title = format!("Not ready: {}", p.title);
            p.into_response()
        }
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

// ------------------------------------------------------------------ OpenAPI

/// The roles the permission table grants an operation, for the OpenAPI document.
fn roles_of(operation: &str) -> Vec<&'static str> {
    domain::access::permission(operation)
        .map(|p| p.roles.iter().map(|r| r.as_str()).collect())
        .unwrap_or_default()
}

/// What the caller sees of a route, by role, for the OpenAPI document.
fn reach_of(operation: &str) -> String {
    let Some(p) = domain::access::permission(operation) else {
        return "No role may use it.".to_owned();
    };
    if p.scope == domain::access::Scope::Aggregate {
        return "Company-wide figures: every role allowed sees the same.".to_owned();
    }
    let reach: Vec<String> = p
        .roles
        .iter()
        .map(|r| format!("{}: {}", r.as_str(), r.reach().as_str()))
        .collect();
    format!(
        "What each allowed role sees: {}. Customers out of reach are left out of lists; a single resource of one answers 404, as if it did not exist.",
        reach.join("; ")
    )
}

fn problem_response(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

/// The OpenAPI 3.1 description, generated from the route table (the same table that checks
/// every request's parameters), so it cannot drift from the code.
pub fn openapi() -> Value {
    let mut paths = Map::new();
    for r in routes() {
        let mut parameters: Vec<Value> = r
            .params
            .iter()
            .map(|p| {
                let mut v = json!({
                    "name": p.name,
                    "in": if p.location == In::Path { "path" } else { "query" },
                    "required": p.required,
                    "description": p.description,
                    "schema": p.schema(),
                });
                if p.multi {
                    if let Value::Object(m) = &mut v {
                        m.insert("style".into(), json!("form"));
                        m.insert("explode".into(), json!(false));
                    }
                }
                v
            })
            .collect();
        parameters.push(json!({
            "name": MIN_POSITION_NAME, "in": "header", "required": false,
            "description": "Read-your-writes: topic:partition:offset (a command's crm-position), comma separated for several; the answer waits until the read model has applied it, or is 503 with Retry-After",
            // empty is no header; a topic or partition the platform does not have is 400
            "schema": {"type": "string", "pattern": "^([^:,]*customer-events:[0-9]+:[0-9]+(, *[^:,]*customer-events:[0-9]+:[0-9]+)*)?$"}
        }));
        let mut responses = Map::new();
        match r.answer {
            Answer::List { columns, paging } => {
                parameters.push(json!({"name": "Accept", "in": "header", "required": false,
                    "description": "text/csv for CSV (every matching row, streamed), application/json otherwise",
                    "schema": {"type": "string"}}));
                let item = json!({"type": "object", "properties": columns.iter()
                    .map(|c| ((*c).to_owned(), json!({})))
                    .collect::<Map<String, Value>>()});
                let mut page = json!({"type": "object", "required": ["items"], "properties": {
                    "items": {"type": "array", "items": item}}});
                if paging.is_some() {
                    if let Some(props) = page.get_mut("properties").and_then(Value::as_object_mut) {
                        props.insert(
                            "next_cursor".into(),
                            json!({"type": ["string", "null"], "description": "Pass as `cursor` for the next page; null on the last page"}),
                        );
                    }
                }
                if r.path.contains('{') {
                    // a list of one customer's items: that customer may not exist (or be out
                    // of reach, which looks the same)
                    responses.insert("404".into(), problem_response("No such customer"));
                }
                responses.insert("200".into(), json!({"description": "The list", "content": {
                    "application/json": {"schema": page},
                    // a media type object has no `description` (OpenAPI 3.1 §4.8.14): it goes
                    // on the schema
                    "text/csv": {"schema": {"type": "string", "description": format!("Header row, then one row per item{}; text starting with = + - @ is prefixed with ' (spreadsheets would run it as a formula)", if columns.is_empty() { String::new() } else { format!(": {}", columns.join(",")) })}}
                }}));
            }
            Answer::Single => {
                parameters.push(json!({"name": "If-None-Match", "in": "header", "required": false,
                    "description": "An ETag of an earlier answer: 304 when unchanged", "schema": {"type": "string"}}));
                responses.insert(
                    "200".into(),
                    json!({"description": "The resource",
                    "headers": {"ETag": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"type": "object"}}}}),
                );
                responses.insert(
                    "304".into(),
                    json!({"description": "Not modified (If-None-Match)"}),
                );
                responses.insert("404".into(), problem_response("No such resource"));
                responses.insert(
                    "406".into(),
                    problem_response("CSV asked for a single resource"),
                );
            }
        }
        responses.insert(
            "400".into(),
            problem_response("A parameter or header is malformed or unknown; `field` names it"),
        );
        responses.insert(
            "503".into(),
            problem_response("The read model has not reached CRM-Min-Position in time, or no live version / database; see Retry-After"),
        );
        responses.insert(
            "401".into(),
            problem_response("No valid credentials: missing, expired, forged, wrong issuer or audience (WWW-Authenticate: Bearer)"),
        );
        responses.insert(
            "403".into(),
            problem_response(&format!(
                "None of the caller's roles may use `{}` (allowed: {})",
                r.operation,
                roles_of(r.operation).join(", ")
            )),
        );
        if matches!(r.answer, Answer::Single) && r.params.iter().any(|p| p.location == In::Path) {
            responses.insert(
                "404".into(),
                problem_response("No such resource, or one of a customer outside the caller's reach (the same answer)"),
            );
        }
        let operation = |operation_id: String, parameters: Vec<Value>| {
            json!({"get": {
                "operationId": operation_id,
                "summary": r.summary,
                "description": format!("Operation `{}`, allowed to: {}. {}", r.operation, roles_of(r.operation).join(", "), reach_of(r.operation)),
                "x-crm-operation": r.operation,
                "x-crm-roles": roles_of(r.operation),
                "security": [{"bearer": []}, {"apiKey": []}],
                "parameters": parameters,
                "responses": responses,
            }})
        };
        if r.path == REPORT.path {
            // one path per report: composition takes no period, the others require one
            for report in REPORTS {
                let params: Vec<Value> = parameters
                    .iter()
                    .filter(|p| p["name"] != "report")
                    .filter(|p| {
                        *report != "composition" || (p["name"] != "from" && p["name"] != "to")
                    })
                    .cloned()
                    .map(|mut p| {
                        if p["name"] == "from" || p["name"] == "to" {
                            p["required"] = json!(true);
                        }
                        p
                    })
                    .collect();
                paths.insert(
                    r.path.replace("{report}", report),
                    operation(format!("{}_{report}", r.operation_id), params),
                );
            }
            continue;
        }
        paths.insert(
            r.path.to_owned(),
            operation(r.operation_id.to_owned(), parameters),
        );
    }
    for (path, summary) in [
        ("/healthz", "Liveness"),
        (
            "/readyz",
            "Ready when the database answers and the projection has a live version",
        ),
        (
            "/metrics",
            "Prometheus metrics (latency histograms per route)",
        ),
        ("/openapi.json", "This document"),
    ] {
        paths.insert(
            path.into(),
            json!({"get": {"summary": summary, "security": [], "responses": {"200": {"description": "OK"},
                   "503": problem_response("Not ready")}}}),
        );
    }
    json!({
        "openapi": "3.1.0",
        "security": [{"bearer": []}, {"apiKey": []}],
        "info": {"title": "CRM query-service", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Read models of the CRM over HTTP: customers, timelines, pipeline, alerts, RFM, churn, reports and the audit trail. Every error is RFC 9457 problem+json naming the parameter at fault. Every route but /healthz, /readyz, /metrics and /openapi.json needs credentials (401 otherwise); each is one query operation of the permission table (`x-crm-operation`, allowed roles in `x-crm-roles`; 403 for the others), and answers only about the customers within the caller's reach."},
        "paths": paths,
        "components": {"schemas": {"Problem": {"type": "object", "description": "RFC 9457 problem details", "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "The parameter or header at fault"},
            "operation": {"type": "string", "description": "With 403: the operation the caller's roles may not use"}}}},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "HS256 or RS256; `iss`, `aud`, `exp` checked; `sub` is the caller; roles in the `roles` claim"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key", "description": "Configured keys (`--api-keys key=subject:role`), for programs"}
            }}
    })
}
