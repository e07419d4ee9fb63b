//! The HTTP API: one resource route per command, the batch ingest endpoint, the organisation
//! (teams) routes, and the operational endpoints. Every route but `/healthz`, `/readyz` and
//! `/metrics` needs an authenticated caller ([`infra::auth::require_authentication`]); a route
//! whose command the caller's roles may not use answers 403 (the permission table,
//! [`domain::access::PERMISSIONS`]); a customer outside the caller's reach answers 404, exactly
//! like one that does not exist. Every route parses, then hands a [`CommandRequest`] to
//! [`CustomerStreams`](crate::streams::CustomerStreams); nothing here decides anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodFilter, MethodRouter};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use domain::access::{Principal, INGEST_TOUCHPOINTS};
use domain::{
    Aggregate, Command, CommandName, Commands, Customer, CustomerId, DomainError, ErrorKind,
    Organisation, OrganisationCommand, StreamKey,
};
use infra::auth::{forbidden, require_authentication, Authenticated};
use infra::problem::Problem;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::streams::{
    fingerprint, fingerprint_of_json, Caller, CommandError, CommandRequest, Numbers, Outcome,
    Request, Via,
};
use crate::App;

/// The header that carries a command's log position, for read-your-writes queries.
pub const POSITION_HEADER: &str = "crm-position";
/// Most touchpoints one batch request may carry.
pub const MAX_BATCH: usize = 10_000;

/// One command as an HTTP resource: method, path, the command (its name and body schema
/// come from its type) and a summary. The router and the OpenAPI document are both made from
/// these.
pub struct CommandRoute<A: Aggregate> {
    pub method: Method,
    pub path: &'static str,
    pub name: &'static str,
    pub summary: &'static str,
    /// Body fields the server fills with a new UUIDv7 when the client leaves them out.
    pub generated: &'static [&'static str],
    parse: fn(Value) -> Result<A::Command, Problem>,
    schema: fn() -> schemars::Schema,
}

fn route<T: CommandName>(
    method: Method,
    path: &'static str,
    summary: &'static str,
    generated: &'static [&'static str],
) -> CommandRoute<<T::Set as Commands>::Stream> {
    CommandRoute {
        method,
        path,
        name: T::NAME,
        summary,
        generated,
        parse: |body| parse_body::<T>(body).map(Into::into),
        schema: || schemars::schema_for!(T),
    }
}

impl<A: Aggregate> CommandRoute<A> {
    /// Whether the command creates the resource its path names (`POST` to a collection of
    /// streams or teams): 201 with a `Location` when it appended.
    fn creates(&self) -> bool {
        self.method == Method::POST && self.path.matches('/').count() == 2
    }
}

/// How the commands of one kind of stream are served: what an answer names, whether commands
/// carry business time, and which pipeline runs them.
pub trait Served: Aggregate + Sized {
    /// Whether a body may carry `occurred_at` (business time).
    const BUSINESS_TIME: bool;
    /// The OpenAPI component of a successful answer.
    const ANSWER_SCHEMA: &'static str;
    /// The field that names the resource in an answer, and its id.
    fn resource(stream: CustomerId, command: &Self::Command) -> (&'static str, String);
    /// Decides and appends one command.
    fn execute(
        app: &App,
        request: Request<Self>,
    ) -> impl std::future::Future<Output = Result<Outcome, CommandError>> + Send;
}

impl Served for Customer {
    const BUSINESS_TIME: bool = true;
    const ANSWER_SCHEMA: &'static str = "Outcome";
    fn resource(stream: CustomerId, _command: &Command) -> (&'static str, String) {
        ("customer_id", stream.to_string())
    }
    fn execute(
        app: &App,
        request: CommandRequest,
    ) -> impl std::future::Future<Output = Result<Outcome, CommandError>> + Send {
        app.streams.execute(request)
    }
}

impl Served for Organisation {
    const BUSINESS_TIME: bool = false;
    const ANSWER_SCHEMA: &'static str = "TeamOutcome";
    fn resource(_stream: CustomerId, command: &OrganisationCommand) -> (&'static str, String) {
        ("team_id", command.team_id().to_string())
    }
    fn execute(
        app: &App,
        request: Request<Organisation>,
    ) -> impl std::future::Future<Output = Result<Outcome, CommandError>> + Send {
        app.streams.execute_organisation(request)
    }
}

/// Every command route. The body of each is the command's JSON (see `/openapi.json`); ids in
/// the path are copied into it.
pub fn command_routes() -> Vec<CommandRoute<Customer>> {
    use domain::*;
    vec![
        route::<RegisterCustomer>(Method::POST, "/v1/customers", "Register a customer (company or person)", &[]),
        route::<ChangeProfile>(Method::PATCH, "/v1/customers/{customer_id}", "Change profile fields; only changed fields are recorded", &[]),
        route::<ReassignOwner>(Method::PUT, "/v1/customers/{customer_id}/owner", "Move the customer to another account manager", &[]),
        route::<AddContact>(Method::POST, "/v1/customers/{customer_id}/contacts", "Add a contact person", &["contact_id"]),
        route::<ChangeContact>(Method::PATCH, "/v1/customers/{customer_id}/contacts/{contact_id}", "Change a contact person", &[]),
        route::<RemoveContact>(Method::DELETE, "/v1/customers/{customer_id}/contacts/{contact_id}", "Remove a contact person", &[]),
        route::<RecordTouchpoint>(Method::POST, "/v1/customers/{customer_id}/touchpoints", "Record a touchpoint on any channel", &["touchpoint_id"]),
        route::<LodgeComplaint>(Method::POST, "/v1/customers/{customer_id}/complaints", "Lodge a complaint", &["complaint_id"]),
        route::<HandleComplaint>(Method::POST, "/v1/customers/{customer_id}/complaints/{complaint_id}/handling", "Record handling of a complaint", &[]),
        route::<CloseComplaint>(Method::POST, "/v1/customers/{customer_id}/complaints/{complaint_id}/closure", "Close a handled complaint", &[]),
        route::<OpenOpportunity>(Method::POST, "/v1/customers/{customer_id}/opportunities", "Open a sales opportunity (starts in qualification)", &["opportunity_id"]),
        route::<AssignOpportunity>(Method::PUT, "/v1/customers/{customer_id}/opportunities/{opportunity_id}/owner", "Assign an opportunity to an account manager", &[]),
        route::<ChangeStage>(Method::PUT, "/v1/customers/{customer_id}/opportunities/{opportunity_id}/stage", "Move an opportunity one stage forward, or back with a reason", &[]),
        route::<AddPlanItem>(Method::POST, "/v1/customers/{customer_id}/opportunities/{opportunity_id}/plan-items", "Add a development-plan item", &["plan_item_id"]),
        route::<RecordPlanResult>(Method::PUT, "/v1/customers/{customer_id}/opportunities/{opportunity_id}/plan-items/{plan_item_id}/result", "Record the result of a plan item", &[]),
        route::<WinOpportunity>(Method::POST, "/v1/customers/{customer_id}/opportunities/{opportunity_id}/won", "Contract signed: the opportunity is won", &[]),
        route::<LoseOpportunity>(Method::POST, "/v1/customers/{customer_id}/opportunities/{opportunity_id}/lost", "The opportunity is lost, with a reason", &[]),
        route::<ReopenOpportunity>(Method::POST, "/v1/customers/{customer_id}/opportunities/{opportunity_id}/reopen", "Reopen a won or lost opportunity", &[]),
        route::<PlaceOrder>(Method::POST, "/v1/customers/{customer_id}/orders", "Record an ERP order", &[]),
        route::<CreateServiceRequest>(Method::POST, "/v1/customers/{customer_id}/service-requests", "Create a service request", &["service_request_id"]),
        route::<AssignServiceRequest>(Method::PUT, "/v1/customers/{customer_id}/service-requests/{service_request_id}/assignee", "Assign a service request", &[]),
        route::<HandleServiceRequest>(Method::POST, "/v1/customers/{customer_id}/service-requests/{service_request_id}/handling", "Record handling of a service request", &[]),
        route::<GiveServiceFeedback>(Method::POST, "/v1/customers/{customer_id}/service-requests/{service_request_id}/feedback", "Record the customer's feedback (below 3 goes back to handling)", &[]),
        route::<ArchiveServiceRequest>(Method::POST, "/v1/customers/{customer_id}/service-requests/{service_request_id}/archive", "Archive a satisfied service request", &[]),
        route::<RaiseChurnWarning>(Method::POST, "/v1/customers/{customer_id}/churn/warnings", "Raise a churn warning", &["churn_case_id"]),
        route::<RecordDelayMeasure>(Method::POST, "/v1/customers/{customer_id}/churn/measures", "Record a delaying measure (暂缓流失)", &[]),
        route::<ConfirmChurn>(Method::POST, "/v1/customers/{customer_id}/churn/confirmation", "Confirm the loss (确定流失)", &[]),
        route::<ReactivateCustomer>(Method::POST, "/v1/customers/{customer_id}/churn/reactivation", "Reactivate an at-risk or lost customer", &[]),
    ]
}

/// The organisation's routes: sales teams, their directors and members. Administrators do
/// everything; a sales director adds and removes members of the teams they direct.
pub fn organisation_routes() -> Vec<CommandRoute<Organisation>> {
    use domain::*;
    vec![
        route::<CreateTeam>(
            Method::POST,
            "/v1/teams",
            "Set up a sales team (team_id generated when absent)",
            &["team_id"],
        ),
        route::<AssignTeamDirector>(
            Method::PUT,
            "/v1/teams/{team_id}/director",
            "Make a sales director the team's director",
            &[],
        ),
        route::<AddTeamMember>(
            Method::POST,
            "/v1/teams/{team_id}/members",
            "Add a member (account manager) to the team",
            &[],
        ),
        route::<RemoveTeamMember>(
            Method::DELETE,
            "/v1/teams/{team_id}/members/{member}",
            "Remove a member from the team",
            &[],
        ),
    ]
}

/// The 403 of a caller whose roles may not use `operation`.
fn require(principal: &Principal, operation: &str) -> Result<(), Problem> {
    principal
        .require(operation)
        .map_err(|d| forbidden(d.to_string()).with("operation", operation))
}

pub fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    let mut by_path: HashMap<&'static str, MethodRouter<Arc<App>>> = HashMap::new();
    add_routes(&mut by_path, command_routes());
    add_routes(&mut by_path, organisation_routes());
    let mut router = Router::new();
    for (path, methods) in by_path {
        router = router.route(path, methods);
    }
    router
        .route("/v1/touchpoints:batch", post(batch_touchpoints))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .fallback(|| async { Problem::not_found("no such resource") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // Closed by default: every route above but the open ones needs a caller.
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_authentication::<Arc<App>>,
        ))
        .layer(axum::middleware::map_response(
            infra::headers::security_headers,
        ))
        .with_state(app)
}

/// Adds each route with its handler, [`handle_command`].
fn add_routes<A: Served>(
    by_path: &mut HashMap<&'static str, MethodRouter<Arc<App>>>,
    routes: Vec<CommandRoute<A>>,
) {
    for r in routes {
        let r: &'static CommandRoute<A> = Box::leak(Box::new(r));
        let filter = MethodFilter::try_from(r.method.clone()).unwrap_or(MethodFilter::POST);
        let handler = move |State(app): State<Arc<App>>,
                            Authenticated(caller): Authenticated,
                            Path(path): Path<HashMap<String, String>>,
                            headers: HeaderMap,
                            body: Result<Bytes, BytesRejection>| async move {
            handle_command(app, r, caller, path, headers, body).await
        };
        let entry = by_path.remove(r.path).unwrap_or_default();
        by_path.insert(r.path, entry.on(filter, handler));
    }
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let owned = app.streams.owned_partitions().await;
    if owned.is_empty() {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready")
            .detail("this instance owns no partition yet")
            .retry_after(1)
            .into_response();
    }
    Json(json!({"status": "ready", "partitions": owned})).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

// ------------------------------------------------------------------ parsing

/// The field a serde error is about: the path, plus the field named in "missing field `x`" or
/// "unknown field `x`" messages.
fn serde_field(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `"].iter().find_map(|p| {
        message
            .split_once(p)
            .and_then(|(_, rest)| rest.split('`').next())
    });
    let path = if path == "." { "" } else { path };
    match (path.is_empty(), named) {
        (true, Some(n)) => n.to_owned(),
        // serde_path_to_error may already have put the unknown field on the path
        (false, Some(n)) if path == n || path.ends_with(&format!(".{n}")) => path.to_owned(),
        (false, Some(n)) => format!("{path}.{n}"),
        (_, None) => path.to_owned(),
    }
}

/// A body as `T`; a mismatch is a 422 naming the field.
fn parse_body<T: DeserializeOwned>(body: Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize::<_, T>(body).map_err(|e| {
        let message = e.inner().to_string();
        Problem::invalid_field(serde_field(&e.path().to_string(), &message), message)
    })
}

fn body_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, Problem> {
    let bytes = body.map_err(|e| {
        Problem::new(e.status(), "unreadable-body", "Unreadable body").detail(e.body_text())
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut m)) => {
            m.values_mut().for_each(integral_numbers);
            Ok(m)
        }
        Ok(_) => Err(Problem::invalid_field("", "the body must be a JSON object")),
        Err(e) => Err(
            Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON")
                .detail(format!("line {} column {}: {e}", e.line(), e.column())),
        ),
    }
}

/// Whether the request carries an `Idempotency-Key`: only then is its digest needed.
fn keyed(headers: &HeaderMap) -> bool {
    headers.contains_key("idempotency-key")
}

/// The digest of a command request as the client sent it, kept with its idempotency key.
fn request_fingerprint(
    command: &str,
    path: &HashMap<String, String>,
    body: &Map<String, Value>,
) -> String {
    let path: Vec<(&str, &str)> = path.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    fingerprint(command, &path, &Value::Object(body.clone()))
}

fn uuid_param(name: &str, value: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(value).map_err(|e| Problem::bad_parameter(name, format!("not a UUID: {e}")))
}

fn occurred_at(
    body: &mut Map<String, Value>,
    field: &str,
) -> Result<Option<DateTime<Utc>>, Problem> {
    match body.remove("occurred_at") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(&s)
            .map(|d| Some(d.to_utc()))
            .map_err(|e| Problem::invalid_field(field, format!("not an RFC 3339 time: {e}"))),
        Some(_) => Err(Problem::invalid_field(
            field,
            "must be an RFC 3339 time string",
        )),
    }
}

/// Headers that shape a command: `If-Match`, `Idempotency-Key`, `X-Correlation-Id`,
/// `X-Causation-Id`. The actor is never the client's to say: it is the authenticated caller.
struct CommandHeaders {
    expected_sequence: Option<u64>,
    command_id: Option<String>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Problem> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| Problem::bad_parameter(name, "not visible ASCII"))
        })
        .transpose()
}

fn command_headers(headers: &HeaderMap) -> Result<CommandHeaders, Problem> {
    // an empty header is no header
    let expected_sequence = match header_text(headers, "if-match")?.filter(|v| !v.trim().is_empty())
    {
        None => None,
        Some(v) => if_match(v)?,
    };
    let command_id = header_text(headers, "idempotency-key")?
        .filter(|k| !k.trim().is_empty())
        .map(|k| {
            let k = k.trim();
            if k.is_empty() || k.len() > 200 {
                Err(Problem::bad_parameter(
                    "Idempotency-Key",
                    "must be 1 to 200 characters",
                ))
            } else {
                Ok(k.to_owned())
            }
        })
        .transpose()?;
    let correlation_id = header_text(headers, "x-correlation-id")?
        .map(|v| uuid_param("X-Correlation-Id", v))
        .transpose()?;
    let causation_id = header_text(headers, "x-causation-id")?
        .map(|v| uuid_param("X-Causation-Id", v))
        .transpose()?;
    Ok(CommandHeaders {
        expected_sequence,
        command_id,
        correlation_id,
        causation_id,
    })
}

/// `If-Match` (RFC 9110 §13.1.1): `*` (any current state: no sequence check) or one strong
/// entity tag, the customer's sequence in quotes as the `ETag` of an answer gives it. A weak
/// tag never matches under the strong comparison If-Match requires, so it is refused.
fn if_match(value: &str) -> Result<Option<u64>, Problem> {
    let v = value.trim();
    if v == "*" {
        return Ok(None);
    }
    if v.starts_with("W/") {
        return Err(Problem::bad_parameter(
            "If-Match",
            "a weak entity tag never matches: If-Match compares strongly (RFC 9110 §13.1.1); send the ETag of an answer, e.g. \"7\"",
        ));
    }
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            Problem::bad_parameter(
                "If-Match",
                "must be `*` or the customer's sequence number in quotes, as an answer's ETag gives it, e.g. \"7\"",
            )
        })
}

/// Integers written with a zero fraction (`3.0`) are integers to JSON Schema (and to the
/// OpenAPI document): read them as integers.
pub(crate) fn integral_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(m) => m.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// The stream a request is about: the path's or body's id for a stream per id (a new one
/// when absent: a command that creates the stream), else the aggregate's one stream.
fn stream_of<A: Aggregate>(
    path: &HashMap<String, String>,
    body: &mut Map<String, Value>,
) -> Result<CustomerId, Problem> {
    let name = match A::KEY {
        StreamKey::Single(id) => return Ok(CustomerId(id)),
        StreamKey::PerId { path_parameter } => path_parameter,
    };
    if let Some(id) = path.get(name) {
        return Ok(CustomerId(uuid_param(name, id)?));
    }
    match body.remove(name) {
        None | Some(Value::Null) => Ok(CustomerId(Uuid::now_v7())),
        Some(Value::String(s)) => Uuid::parse_str(&s)
            .map(CustomerId)
            .map_err(|e| Problem::invalid_field(name, format!("not a UUID: {e}"))),
        Some(_) => Err(Problem::invalid_field(name, "must be a UUID string")),
    }
}

/// Whether a path parameter is an entity's UUID (`…_id`) rather than a user id.
fn is_uuid_parameter(name: &str) -> bool {
    name.ends_with("_id")
}

/// Builds the request for one command route: the path's ids go into the body (where they must
/// agree with it), generated ids are filled in, the body is parsed into the command.
fn command_request<A: Served>(
    route: &CommandRoute<A>,
    caller: Caller,
    path: HashMap<String, String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Request<A>, Problem> {
    let mut body = body_object(body)?;
    let fingerprint = keyed(headers).then(|| request_fingerprint(route.name, &path, &body));
    let occurred_at = if A::BUSINESS_TIME {
        occurred_at(&mut body, "occurred_at")?
    } else {
        None
    };
    let stream = stream_of::<A>(&path, &mut body)?;
    for (name, value) in &path {
        if matches!(A::KEY, StreamKey::PerId { path_parameter } if path_parameter == name) {
            continue;
        }
        if is_uuid_parameter(name) {
            uuid_param(name, value)?;
        } else if value.trim().is_empty() {
            return Err(Problem::bad_parameter(name, "must not be empty"));
        }
        match body.get(name) {
            Some(Value::String(v)) if v != value => {
                return Err(Problem::invalid_field(
                    name.clone(),
                    "differs from the path",
                ))
            }
            _ => {
                body.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }
    for name in route.generated {
        if !body.contains_key(*name) {
            body.insert(
                (*name).to_owned(),
                Value::String(Uuid::now_v7().to_string()),
            );
        }
    }
    let command = (route.parse)(Value::Object(body))?;
    let h = command_headers(headers)?;
    Ok(Request {
        customer_id: stream,
        command,
        expected_sequence: h.expected_sequence,
        command_id: h.command_id,
        fingerprint,
        caller,
        occurred_at,
        correlation_id: h.correlation_id,
        causation_id: h.causation_id,
    })
}

// ------------------------------------------------------------------ answers

/// The HTTP answer to a refused or failed command.
pub fn command_problem(error: &CommandError) -> Problem {
    match error {
        CommandError::Refused(e) => domain_problem(e),
        CommandError::Forbidden { field, reason } => {
            let p = forbidden(reason.clone());
            match field {
                Some(f) => p.field(*f),
                None => p,
            }
        }
        CommandError::KeyReused { key } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused with a different request",
        )
        .detail(format!(
            "{error}; a retry must repeat the first request exactly, a new request needs a new key"
        ))
        .field("Idempotency-Key")
        .with("idempotency_key", key.clone()),
        CommandError::SequenceMismatch { expected, actual } => Problem::new(
            StatusCode::CONFLICT,
            "sequence-mismatch",
            "The stream has changed",
        )
        .detail(error.to_string())
        .field("If-Match")
        .with("expected_sequence", *expected)
        .with("current_sequence", *actual),
        CommandError::NotOwner { partition } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-owner",
            "Another instance owns this stream",
        )
        .detail(error.to_string())
        .with("partition", *partition)
        .retry_after(1),
        CommandError::Unavailable(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "log-unavailable",
            "The event log could not append",
        )
        .detail(error.to_string())
        .retry_after(1),
        CommandError::BrokenStream(_) | CommandError::Envelope(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
        )
        .detail(error.to_string()),
    }
}

fn domain_problem(e: &DomainError) -> Problem {
    let p = match e.kind() {
        ErrorKind::Invalid => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-field",
            "Invalid field",
        ),
        ErrorKind::NotFound => Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found"),
        ErrorKind::Conflict => Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            "Not allowed in the current state",
        ),
    }
    .detail(e.to_string());
    match e.field() {
        Some(f) => p.field(f),
        None => p,
    }
}

fn outcome_label(result: &Result<Outcome, CommandError>) -> &'static str {
    match result {
        Ok(o) if o.replayed => "replayed",
        Ok(o) if o.events.is_empty() => "unchanged",
        Ok(_) => "appended",
        Err(CommandError::Refused(e)) => match e.kind() {
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "refused",
        },
        Err(CommandError::SequenceMismatch { .. }) => "conflict",
        Err(CommandError::KeyReused { .. }) => "key_reused",
        Err(CommandError::Forbidden { .. }) => "forbidden",
        Err(CommandError::NotOwner { .. }) => "not_owner",
        Err(_) => "error",
    }
}

fn position_header(o: &Outcome) -> Option<HeaderValue> {
    let p = o.position()?;
    HeaderValue::from_str(&format!("{}:{}:{}", p.topic, p.partition, p.offset)).ok()
}

/// Serves one command route: the permission table first (403 before anything is read), then
/// the request, the pipeline, and the answer with its `ETag` (the stream's sequence), the
/// position of its last event, and for a created resource 201 with its `Location`.
async fn handle_command<A: Served>(
    app: Arc<App>,
    route: &'static CommandRoute<A>,
    principal: Arc<Principal>,
    path: HashMap<String, String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let count = |outcome: &str| {
        app.metrics
            .commands
            .with_label_values(&[route.name, outcome])
            .inc()
    };
    if let Err(p) = require(&principal, route.name) {
        count("forbidden");
        return p.into_response();
    }
    let caller = Caller::new(principal, Via::Command);
    let request = match command_request(route, caller, path, &headers, body) {
        Ok(r) => r,
        Err(p) => {
            count("malformed");
            return p.into_response();
        }
    };
    let (id_field, id) = A::resource(request.customer_id, &request.command);
    let result = A::execute(&app, request).await;
    count(outcome_label(&result));
    app.metrics
        .command_seconds
        .with_label_values(&[route.name])
        .observe(started.elapsed().as_secs_f64());
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => return command_problem(&e).into_response(),
    };
    let created = route.creates() && !outcome.replayed && !outcome.events.is_empty();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = json!({
        id_field: id,
        "events": outcome.events,
        "sequence": outcome.sequence,
        "replayed": outcome.replayed,
    });
    let mut response = (status, Json(body)).into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", outcome.sequence)) {
        h.insert(header::ETAG, v);
    }
    if let Some(v) = position_header(&outcome) {
        h.insert(POSITION_HEADER, v);
    }
    if outcome.replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if route.creates() {
        if let Ok(v) = HeaderValue::from_str(&format!("{}/{id}", route.path)) {
            h.insert(header::LOCATION, v);
        }
    }
    response
}

// ------------------------------------------------------------------ batch ingest

/// One touchpoint of a batch: a `record_touchpoint` command plus its customer, business time
/// and idempotency key.
#[derive(Debug, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchTouchpoint {
    pub customer_id: CustomerId,
    #[serde(default)]
    pub touchpoint_id: Option<domain::TouchpointId>,
    /// When the contact happened (business time); now when absent.
    #[serde(default)]
    pub occurred_at: Option<DateTime<Utc>>,
    /// Makes a retried item safe: the same key returns the first answer.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub touchpoint: domain::Touchpoint,
}

/// One item of a batch: an NDJSON line's text and number (1-based), or the JSON of an item of
/// an array body.
enum BatchItem<'a> {
    Line { text: &'a [u8], line: usize },
    Value(Value),
}

impl BatchItem<'_> {
    /// The NDJSON line it came from; none in a JSON array.
    fn line(&self) -> Option<usize> {
        match self {
            BatchItem::Line { line, .. } => Some(*line),
            BatchItem::Value(_) => None,
        }
    }
}

/// The items of a batch body. Blank NDJSON lines are no items: `index` counts items, and
/// each NDJSON item's answer names its `line` too, so that both agree with the error texts.
fn batch_items<'a>(headers: &HeaderMap, bytes: &'a [u8]) -> Result<Vec<BatchItem<'a>>, Problem> {
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/x-ndjson") || v.starts_with("application/ndjson")
        });
    let items: Vec<BatchItem<'a>> = if ndjson {
        domain::ndjson::items(bytes)
            .into_iter()
            .map(|item| BatchItem::Line {
                text: item.text,
                line: item.line,
            })
            .collect()
    } else {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Array(items)) => items.into_iter().map(BatchItem::Value).collect(),
            Ok(_) => {
                return Err(Problem::invalid_field(
                    "",
                    "the body must be a JSON array of touchpoints (or NDJSON)",
                ))
            }
            Err(e) => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "malformed-json",
                    "Malformed JSON",
                )
                .detail(format!("line {} column {}: {e}", e.line(), e.column())))
            }
        }
    };
    if items.len() > MAX_BATCH {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch-too-large",
            "Batch too large",
        )
        .field("items")
        .detail(format!(
            "at most {MAX_BATCH} touchpoints per batch, got {}",
            items.len()
        )));
    }
    if items.is_empty() {
        return Err(Problem::invalid_field("items", "the batch is empty"));
    }
    Ok(items)
}

/// The command of one batch item. An NDJSON line is read straight into a [`BatchTouchpoint`]
/// (and its digest taken from its text), without a `Value` tree; only a line that does not
/// read that way goes the way of an array's item, so that it gets the same answer, the same
/// leniency (`3.0` is an integer) and the same error naming the field.
fn batch_request(
    item: BatchItem<'_>,
    index: usize,
    caller: &Caller,
    correlation_id: Option<Uuid>,
) -> Result<CommandRequest, Problem> {
    let item = match item {
        BatchItem::Line { text, line } => {
            if let Ok(t) = serde_json::from_slice::<BatchTouchpoint>(text) {
                let digest = match &t.idempotency_key {
                    None => Ok(None),
                    Some(_) => {
                        fingerprint_of_json("record_touchpoint", &[], text, Numbers::Integral)
                            .map(Some)
                    }
                };
                if let Ok(digest) = digest {
                    return touchpoint_request(t, digest, caller, correlation_id);
                }
            }
            serde_json::from_slice::<Value>(text).map_err(|e| {
                Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON")
                    .detail(format!("item {index} (line {line}): {e}"))
                    .with("line", line)
            })?
        }
        BatchItem::Value(v) => v,
    };
    batch_request_of_value(item, caller, correlation_id)
}

/// The command of a batch item given as a `Value`.
fn batch_request_of_value(
    mut item: Value,
    caller: &Caller,
    correlation_id: Option<Uuid>,
) -> Result<CommandRequest, Problem> {
    integral_numbers(&mut item);
    // only a keyed item needs its digest
    let item_fingerprint = item
        .get("idempotency_key")
        .is_some_and(|k| !k.is_null())
        .then(|| fingerprint("record_touchpoint", &[], &item));
    let t: BatchTouchpoint = parse_body(item)?;
    touchpoint_request(t, item_fingerprint, caller, correlation_id)
}

/// The `record_touchpoint` command of a batch item read, with its digest when it is keyed.
fn touchpoint_request(
    t: BatchTouchpoint,
    fingerprint: Option<String>,
    caller: &Caller,
    correlation_id: Option<Uuid>,
) -> Result<CommandRequest, Problem> {
    if let Some(k) = &t.idempotency_key {
        if k.is_empty() || k.len() > 200 {
            return Err(Problem::invalid_field(
                "idempotency_key",
                "must be 1 to 200 characters",
            ));
        }
    }
    Ok(CommandRequest {
        customer_id: t.customer_id,
        command: Command::RecordTouchpoint(domain::RecordTouchpoint {
            touchpoint_id: t
                .touchpoint_id
                .unwrap_or(domain::TouchpointId(Uuid::now_v7())),
            touchpoint: t.touchpoint,
        }),
        expected_sequence: None,
        command_id: t.idempotency_key,
        fingerprint,
        caller: caller.clone(),
        occurred_at: t.occurred_at,
        correlation_id,
        causation_id: None,
    })
}

async fn batch_touchpoints(
    State(app): State<Arc<App>>,
    Authenticated(principal): Authenticated,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    if let Err(p) = require(&principal, INGEST_TOUCHPOINTS) {
        return p.into_response();
    }
    let caller = Caller::new(principal, Via::Ingest);
    let bytes = match body {
        Ok(b) => b,
        Err(e) => {
            return Problem::new(e.status(), "unreadable-body", "Unreadable body")
                .detail(e.body_text())
                .into_response()
        }
    };
    let items = match batch_items(&headers, &bytes) {
        Ok(i) => i,
        Err(p) => return p.into_response(),
    };
    let h = match command_headers(&headers) {
        Ok(h) => h,
        Err(p) => return p.into_response(),
    };
    let correlation_id = Some(h.correlation_id.unwrap_or_else(Uuid::now_v7));
    let mut results: Vec<ItemAnswer> = Vec::with_capacity(items.len());
    let mut requests = Vec::new();
    let mut slots = Vec::new();
    let malformed = app
        .metrics
        .commands
        .with_label_values(&["record_touchpoint", "malformed"]);
    for (index, item) in items.into_iter().enumerate() {
        let line = item.line();
        match batch_request(item, index, &caller, correlation_id) {
            Ok(r) => {
                slots.push(index);
                requests.push(r);
                results.push(ItemAnswer::pending(index, line));
            }
            Err(p) => {
                malformed.inc();
                let mut answer = ItemAnswer::pending(index, line);
                answer.refuse(p);
                results.push(answer);
            }
        }
    }
    let outcomes = app.streams.execute_batch(requests).await;
    let mut accepted = 0usize;
    for (slot, outcome) in slots.into_iter().zip(outcomes) {
        app.metrics
            .commands
            .with_label_values(&["record_touchpoint", outcome_label(&outcome)])
            .inc();
        let Some(answer) = results.get_mut(slot) else {
            continue;
        };
        match outcome {
            Ok(o) => {
                accepted += 1;
                answer.status = if o.replayed { 200 } else { 201 };
                answer.outcome = Some(o);
            }
            Err(e) => answer.refuse(command_problem(&e)),
        }
    }
    let rejected = results.len() - accepted;
    app.metrics
        .command_seconds
        .with_label_values(&["touchpoints_batch"])
        .observe(started.elapsed().as_secs_f64());
    Json(BatchAnswer {
        accepted,
        rejected,
        results,
    })
    .into_response()
}

/// The answer to a batch: how many items were accepted and refused, and each item's answer.
#[derive(Serialize)]
struct BatchAnswer {
    accepted: usize,
    rejected: usize,
    results: Vec<ItemAnswer>,
}

/// One item's answer: its index, its NDJSON line when it has one, its status and either the
/// command's outcome or the problem.
#[derive(Serialize)]
struct ItemAnswer {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<Problem>,
}

impl ItemAnswer {
    /// The place of an item whose command has not been answered yet.
    fn pending(index: usize, line: Option<usize>) -> Self {
        ItemAnswer {
            index,
            line,
            status: 0,
            outcome: None,
            problem: None,
        }
    }

    fn refuse(&mut self, problem: Problem) {
        self.status = problem.status;
        self.problem = Some(problem);
    }
}

// ------------------------------------------------------------------ OpenAPI

/// Moves a schemars root schema's `$defs` into `components` and rewrites its references.
fn component_schema(schema: schemars::Schema, components: &mut Map<String, Value>) -> Value {
    fn rewrite(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get_mut("$ref") {
                    if let Some(name) = r.strip_prefix("#/$defs/") {
                        *r = format!("#/components/schemas/{name}");
                    }
                }
                m.values_mut().for_each(rewrite);
            }
            Value::Array(a) => a.iter_mut().for_each(rewrite),
            _ => {}
        }
    }
    let mut value = schema.to_value();
    rewrite(&mut value);
    if let Value::Object(m) = &mut value {
        m.remove("$schema");
        if let Some(Value::Object(defs)) = m.remove("$defs") {
            components.extend(defs);
        }
    }
    value
}

/// The roles the permission table grants an operation, for the OpenAPI document.
fn roles_of(operation: &str) -> Vec<&'static str> {
    domain::access::permission(operation)
        .map(|p| p.roles.iter().map(|r| r.as_str()).collect())
        .unwrap_or_default()
}

fn problem_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

/// The OpenAPI operations of a set of command routes, from the routes and the commands' JSON
/// Schemas.
fn describe_routes<A: Served>(
    routes: Vec<CommandRoute<A>>,
    header_params: &Value,
    paths: &mut Map<String, Value>,
    components: &mut Map<String, Value>,
) {
    for r in routes {
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                let mut schema = json!({"type": "string"});
                if is_uuid_parameter(name) {
                    schema["format"] = json!("uuid");
                } else {
                    domain::limits::user_id_schema(&mut schema);
                }
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        params.extend(header_params.as_array().cloned().unwrap_or_default());
        let mut body = component_schema((r.schema)(), components);
        domain::limits::describe_in_schema(&mut body);
        if let Value::Object(m) = &mut body {
            if let Some(Value::Object(props)) = m.get_mut("properties") {
                if A::BUSINESS_TIME {
                    props.insert("occurred_at".into(), json!({"type": "string", "format": "date-time", "pattern": "^(19|20)[0-9]{2}-",
                        "description": "Business time; now when absent. Not before 1900-01-01, not more than 24 hours ahead of the server's clock (both configurable: --business-time-earliest, --business-time-max-future-hours)"}));
                }
                // ids in the path are the path's: not repeated in the body
                props.retain(|name, _| !r.path.contains(&format!("{{{name}}}")));
            }
            // path ids and generated ids need not be in the body
            if let Some(Value::Array(req)) = m.get_mut("required") {
                req.retain(|f| {
                    f.as_str().is_some_and(|f| {
                        !r.path.contains(&format!("{{{f}}}")) && !r.generated.contains(&f)
                    })
                });
            }
        }
        let answer = json!({"$ref": format!("#/components/schemas/{}", A::ANSWER_SCHEMA)});
        let success = if r.creates() { "201" } else { "200" };
        let mut responses = json!({
            success: {"description": "Appended (or unchanged); the position header tells where", "headers": {
                "ETag": {"schema": {"type": "string"}, "description": "The stream's sequence after the command"},
                "CRM-Position": {"schema": {"type": "string"}, "description": "topic:partition:offset of the last appended event"}
            }, "content": {"application/json": {"schema": answer}}},
            "400": problem_response("Malformed JSON, header or path parameter"),
            "401": problem_response("No valid credentials (bearer token)"),
            "403": problem_response("The caller's roles may not use this command, or may not assign to that user (`field`)"),
            "422": problem_response("A field is invalid (`field` names it), or the Idempotency-Key was used with another request"),
            "404": problem_response(&format!("Unknown {} or entity, or one outside the caller's reach", A::NAME)),
            "409": problem_response("Not allowed in the current state, or If-Match mismatch"),
            "413": problem_response("Body too large"),
            "503": problem_response("This instance does not own the stream's partition, or the log is unavailable; retry")
        });
        if r.creates() {
            // a retry with the same Idempotency-Key answers the first outcome with 200
            responses["200"] = json!({"description": "A retry with the same Idempotency-Key, or nothing to change: the answer, nothing appended (`Idempotent-Replayed: true` on a retry)", "content": {"application/json": {"schema": answer}}});
        }
        let op = json!({
            "operationId": r.name,
            "summary": r.summary,
            "x-crm-roles": roles_of(r.name),
            "parameters": params,
            "requestBody": {"required": r.method != Method::DELETE, "content": {"application/json": {"schema": body}}},
            "responses": responses,
        });
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        if let Value::Object(m) = entry {
            m.insert(r.method.as_str().to_lowercase(), op);
        }
    }
}

/// The answer to a command: the resource it is about (`id_field`), the appended events, the
/// stream's sequence, and whether it replays a first answer.
fn answer_schema(id_field: &str) -> Value {
    json!({"type": "object", "required": [id_field, "events", "sequence", "replayed"], "properties": {
        id_field: {"type": "string", "format": "uuid"},
        "events": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "string", "format": "uuid"}, "type": {"type": "string"}, "sequence": {"type": "integer"},
            "position": {"type": "object", "properties": {"topic": {"type": "string"}, "partition": {"type": "integer"}, "offset": {"type": "integer"}}}}}},
        "sequence": {"type": "integer"}, "replayed": {"type": "boolean"}}})
}

/// The OpenAPI 3.1 description of this service, generated from the route table and the
/// commands' JSON Schemas, so it cannot drift from the code.
pub fn openapi() -> Value {
    let mut components = Map::new();
    let mut paths: Map<String, Value> = Map::new();
    let header_params = json!([
        {"name": "If-Match", "in": "header", "required": false, "schema": {"type": "string", "pattern": "^(|\\*|\"[0-9]{1,19}\")$"}, "description": "`*`, or the customer's sequence the client expects as a strong entity tag (the ETag of an answer, e.g. `\"7\"`): 409 when it has moved on; weak tags are refused (400)"},
        {"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 200}, "description": "A retry with the same key returns the first answer and appends nothing"},
        {"name": "X-Correlation-Id", "in": "header", "required": false, "schema": {"type": "string", "format": "uuid"}},
        {"name": "X-Causation-Id", "in": "header", "required": false, "schema": {"type": "string", "format": "uuid"}}
    ]);
    describe_routes(
        command_routes(),
        &header_params,
        &mut paths,
        &mut components,
    );
    describe_routes(
        organisation_routes(),
        &header_params,
        &mut paths,
        &mut components,
    );
    let batch_item = component_schema(schemars::schema_for!(BatchTouchpoint), &mut components);
    components.insert("BatchTouchpoint".into(), batch_item);
    // the commands' schemas: the bounds the server enforces
    for schema in components.values_mut() {
        domain::limits::describe_in_schema(schema);
    }
    if let Some(user) = components.get_mut("UserId") {
        domain::limits::user_id_schema(user);
    }
    if let Some(Value::Object(number)) = components.get_mut("OrderNumber") {
        number.insert("minLength".into(), json!(1));
        number.insert(
            "maxLength".into(),
            json!(domain::limits::DEFAULT_TEXT_CHARS),
        );
        number.insert("pattern".into(), json!(domain::limits::NON_BLANK_PATTERN));
    }
    paths.insert("/v1/touchpoints:batch".into(), json!({"post": {
        "operationId": "record_touchpoints_batch",
        "x-crm-roles": roles_of(INGEST_TOUCHPOINTS),
        "security": [{"apiKey": []}, {"bearer": []}],
        "summary": format!("Record up to {MAX_BATCH} touchpoints (JSON array or NDJSON); answers per item"),
        "requestBody": {"required": true, "content": {
            "application/json": {"schema": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": {"$ref": "#/components/schemas/BatchTouchpoint"}}},
            "application/x-ndjson": {"schema": {"$ref": "#/components/schemas/BatchTouchpoint"}}
        }},
        "responses": {"200": {"description": "Per-item results", "content": {"application/json": {"schema": {"type": "object"}}}},
            "400": problem_response("Malformed JSON"), "401": problem_response("No valid API key or token"), "403": problem_response("The caller may not ingest touchpoints"),
            "413": problem_response("More than the maximum items"), "422": problem_response("Not an array")}
    }}));
    for (path, summary) in [
        ("/healthz", "Liveness"),
        (
            "/readyz",
            "Ready once it owns partitions and has rebuilt them",
        ),
        ("/metrics", "Prometheus metrics"),
    ] {
        paths.insert(
            path.into(),
            json!({"get": {"summary": summary, "security": [], "responses": {"200": {"description": "OK"}}}}),
        );
    }
    components.insert("Problem".into(), json!({"type": "object", "description": "RFC 9457 problem details", "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "field": {"type": "string", "description": "The field, header or parameter at fault"}}}));
    components.insert(Customer::ANSWER_SCHEMA.into(), answer_schema("customer_id"));
    components.insert(Organisation::ANSWER_SCHEMA.into(), answer_schema("team_id"));
    json!({
        "openapi": "3.1.0",
        "security": [{"bearer": []}],
        "info": {"title": "CRM command-service", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Commands on customer streams. Each appends immutable events to Kafka."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "HS256 or RS256; `iss`, `aud`, `exp` checked; roles in the `roles` claim"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key", "description": "Channel adapters"}
        }}
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use domain::access::{Credential, Principal, Role};
    use serde_json::Value;

    use super::{batch_request, batch_request_of_value, BatchItem};
    use crate::streams::{Caller, Via};

    fn adapter() -> Caller {
        Caller::new(
            Arc::new(Principal::new(
                "channel-wechat",
                [Role::ChannelAdapter],
                Credential::ApiKey,
            )),
            Via::Ingest,
        )
    }

    /// An NDJSON line read straight into its item gives what the same line read through a
    /// `Value` gives: the command, its key and its digest, or the same problem.
    #[test]
    fn a_line_reads_as_its_value_would() {
        let lines = [
            // keyed, read straight
            r#"{"customer_id":"0190c3c8-0000-7000-8000-000000000001","occurred_at":"2026-11-30T08:00:00+08:00","idempotency_key":"k-1","touchpoint":{"channel":{"kind":"phone_call","direction":"inbound","duration_seconds":60,"wait_seconds":5,"outcome":"answered"},"summary":"引号 \" \u00e9"}}"#,
            // not keyed: no digest
            r#"{"customer_id":"0190c3c8-0000-7000-8000-000000000001","touchpoint":{"channel":{"kind":"wechat","direction":"outbound"},"summary":"s"}}"#,
            // `60.0` is an integer only the `Value` way: the line goes that way
            r#"{"customer_id":"0190c3c8-0000-7000-8000-000000000001","idempotency_key":"k-2","touchpoint":{"channel":{"kind":"phone_call","direction":"inbound","duration_seconds":60.0,"wait_seconds":5,"outcome":"answered"},"summary":"s"}}"#,
            // a repeated key: the `Value` way takes the last
            r#"{"customer_id":"0190c3c8-0000-7000-8000-000000000001","idempotency_key":"a","idempotency_key":"k-3","touchpoint":{"channel":{"kind":"wechat","direction":"outbound"},"summary":"s"}}"#,
            // refused, naming the field
            r#"{"customer_id":"0190c3c8-0000-7000-8000-000000000001","idempotency_key":"","touchpoint":{"channel":{"kind":"wechat","direction":"outbound"},"summary":"s"}}"#,
            r#"{"customer_id":"not-a-uuid","touchpoint":{"channel":{"kind":"wechat","direction":"outbound"},"summary":"s"}}"#,
            r#"{"customer_id":"0190c3c8-0000-7000-8000-000000000001","extra":1,"touchpoint":{"channel":{"kind":"wechat","direction":"outbound"},"summary":"s"}}"#,
        ];
        let caller = adapter();
        for line in lines {
            let straight = batch_request(
                BatchItem::Line {
                    text: line.as_bytes(),
                    line: 1,
                },
                0,
                &caller,
                None,
            );
            let value: Value = serde_json::from_str(line).unwrap();
            let by_value = batch_request_of_value(value, &caller, None);
            match (straight, by_value) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.customer_id, b.customer_id, "{line}");
                    assert_eq!(a.command_id, b.command_id, "{line}");
                    assert_eq!(a.fingerprint, b.fingerprint, "{line}");
                    assert_eq!(a.occurred_at, b.occurred_at, "{line}");
                    assert_eq!(a.fingerprint.is_some(), a.command_id.is_some(), "{line}");
                    let (
                        domain::Command::RecordTouchpoint(x),
                        domain::Command::RecordTouchpoint(y),
                    ) = (&a.command, &b.command)
                    else {
                        panic!("not a touchpoint: {line}");
                    };
                    assert_eq!(x.touchpoint, y.touchpoint, "{line}");
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a.field, b.field, "{line}");
                    assert_eq!(a.detail, b.detail, "{line}");
                    assert_eq!(a.status, b.status, "{line}");
                }
                (a, b) => panic!(
                    "{line}: read straight {}, by value {}",
                    a.map_or_else(|p| format!("{p:?}"), |_| "accepted".into()),
                    b.map_or_else(|p| format!("{p:?}"), |_| "accepted".into()),
                ),
            }
        }
    }

    #[test]
    fn a_line_that_is_not_json_is_malformed_with_its_item_and_line() {
        let Err(p) = batch_request(
            BatchItem::Line {
                text: b"{bad",
                line: 5,
            },
            3,
            &adapter(),
            None,
        ) else {
            panic!("accepted");
        };
        assert_eq!(p.status, 400);
        assert!(p.type_uri.ends_with("malformed-json"), "{}", p.type_uri);
        assert!(
            p.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("item 3 (line 5): ")),
            "{:?}",
            p.detail
        );
    }
}
