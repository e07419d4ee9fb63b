//! The HTTP plumbing of the read routes (each declared once, beside its handler, in
//! [`crate::routes`]): the router, the authentication, read-your-writes and metrics middleware,
//! what every handler starts from ([`Ask`]), content negotiation, the operational endpoints and
//! the OpenAPI document, all made from the same tables.
//!
//! Every handler answers `Result<_, QueryError>` and uses `?`: an error is the RFC 9457
//! problem+json of [`QueryError`]. Every handler first checks the route's operation against the
//! permission table (403), then reads only what the caller's reach allows ([`crate::access`]):
//! lists leave the customers the caller does not see out, and a single resource of such a
//! customer is 404, word for word the answer for one that does not exist.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use domain::access::{Principal, Visibility};
use infra::auth::{require_authentication, Authenticated};
use infra::problem::Problem;
use serde_json::{json, Map, Value};

use crate::access::{permit, visibility};
use crate::error::{QueryError, Result};
use crate::list::{fnv64, ListQuery};
use crate::params::{In, Params};
use crate::position::{parse_positions, wait_for, MIN_POSITION_NAME};
use crate::routes::{routes, Answer, RouteSpec, REPORT, REPORTS};
use crate::App;

/// The operational routes, open to every caller (`infra::auth::OPEN_PATHS`): path, summary
/// (for the OpenAPI document) and handler.
type Operational = (&'static str, &'static str, fn() -> MethodRouter<Arc<App>>);
const OPERATIONAL: [Operational; 4] = [
    ("/healthz", "Liveness", || {
        get(|| async { Json(json!({"status": "ok"})) })
    }),
    (
        "/readyz",
        "Ready when the database answers and the projection has a live version",
        || get(readyz),
    ),
    (
        "/metrics",
        "Prometheus metrics (latency histograms per route)",
        || get(metrics),
    ),
    ("/openapi.json", "This document", || {
        get(|| async { Json(openapi()) })
    }),
];

/// The query-service's router, made from the route tables. Mount it as is (the `crm`
/// one-process binary merges it beside the command API on another listener).
pub fn router(app: Arc<App>) -> Router {
    let v1 = routes()
        .into_iter()
        .fold(Router::new(), |v1, r| v1.route(r.path, (r.handler)()))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            read_your_writes,
        ));
    OPERATIONAL
        .into_iter()
        .fold(Router::new().merge(v1), |router, (path, _, handler)| {
            router.route(path, handler())
        })
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
async fn read_your_writes(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Result<Response> {
    let wanted = parse_positions(request.headers())?;
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
        outcome?;
    }
    Ok(next.run(request).await)
}

// ------------------------------------------------------------------ what a handler starts from

/// What a read handler starts from: the caller, the request's headers, and its path and query
/// string as sent, checked against the route's parameters by [`Ask::params`].
pub struct Ask {
    pub caller: Arc<Principal>,
    pub headers: HeaderMap,
    query: std::result::Result<Query<Vec<(String, String)>>, QueryRejection>,
    path: std::result::Result<Path<Vec<(String, String)>>, PathRejection>,
}

impl FromRequestParts<Arc<App>> for Ask {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> std::result::Result<Self, Response> {
        let Authenticated(caller) = Authenticated::from_request_parts(parts, app).await?;
        Ok(Ask {
            caller,
            headers: parts.headers.clone(),
            query: Query::from_request_parts(parts, app).await,
            path: Path::from_request_parts(parts, app).await,
        })
    }
}

impl Ask {
    /// 403 unless one of the caller's roles may use the route's operation; then the route's
    /// parameters from the path and the query string (400 naming the one at fault).
    pub fn params(&self, spec: &RouteSpec) -> Result<Params> {
        self.parse(spec, true)
    }

    /// [`Ask::params`] of a single resource named by its path: its query string is not read.
    pub fn path_params(&self, spec: &RouteSpec) -> Result<Params> {
        self.parse(spec, false)
    }

    fn parse(&self, spec: &RouteSpec, with_query: bool) -> Result<Params> {
        permit(&self.caller, spec.operation)?;
        let query = match &self.query {
            _ if !with_query => Vec::new(),
            Ok(Query(q)) => q.clone(),
            Err(e) => return Err(Problem::bad_parameter("query", e.body_text()).into()),
        };
        let path = match (
            spec.params.iter().find(|s| s.location == In::Path),
            &self.path,
        ) {
            (None, _) => Vec::new(),
            (Some(_), Ok(Path(p))) => p.clone(),
            (Some(param), Err(e)) => {
                return Err(Problem::bad_parameter(param.name, e.body_text()).into())
            }
        };
        Ok(Params::parse(spec.params, query, path)?)
    }

    /// The live version's schema and the customers the caller sees there for the route's
    /// operation.
    pub async fn reach(&self, app: &App, spec: &RouteSpec) -> Result<(String, Visibility)> {
        let s = app.schema().await?;
        let seen = visibility(app, &s, &self.caller, spec.operation).await?;
        Ok((s, seen))
    }

    /// A list as the client wants it: JSON or CSV (`Accept`), named `name` as a file.
    pub async fn list(&self, app: &App, q: &ListQuery, name: &str) -> Result<Response> {
        match format(&self.headers) {
            Format::Csv => q.csv(&app.pool, name).await,
            Format::Json => q.json(&app.pool).await,
        }
    }

    /// One resource as JSON with a strong `ETag` (a hash of the body); `304` when
    /// `If-None-Match` names it.
    pub fn single(&self, value: &Value) -> Result<Response> {
        let headers = &self.headers;
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

// ------------------------------------------------------------------ operations

async fn readyz(State(app): State<Arc<App>>) -> Result<Json<Value>> {
    let schema = app.schema().await.map_err(|e| {
        let mut p = e.problem();
        p.title = format!("Not ready: {}", p.title);
        QueryError::from(p)
    })?;
    Ok(Json(json!({
        "status": "ready",
        "projection": app.projection,
        "schema": schema,
    })))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
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
        // every read route is a GET: its handler in the table is `get(…)`
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
    for (path, summary, _) in OPERATIONAL {
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
