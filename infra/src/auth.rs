//! Authentication: who is calling. Bearer JWTs (HS256 or RS256, issuer and audience checked,
//! expiry enforced, roles from the `roles` claim) for people and their front ends; API keys
//! (`X-Api-Key`) for channel adapters; `ce_source` mapped to an adapter for records on the
//! inbound topic. The result is a [`domain::access::Principal`]; what it may do is the
//! domain's permission table ([`domain::access`]).
//!
//! Closed by default: [`require_authentication`] answers 401 (RFC 9457 problem, with
//! `WWW-Authenticate: Bearer`) to every request without valid credentials, except
//! [`OPEN_PATHS`] (`/healthz`, `/readyz`, `/metrics`). With nothing configured every other
//! request is refused. `--auth-disabled` (local development only) makes every request an
//! administrator named `dev`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use domain::access::{Credential, Principal, Role};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::problem::Problem;

/// Paths anyone may call: liveness, readiness and metrics.
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// The header channel adapters send their API key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The subject of every request under `--auth-disabled`.
pub const DEV_SUBJECT: &str = "dev";

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 30;

/// Authentication settings, as flags and environment variables.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// Shared secret of HS256 bearer tokens.
    #[arg(long, env = "CRM_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// PEM file with the RSA public key of RS256 bearer tokens.
    #[arg(long, env = "CRM_JWT_RS256_PUBLIC_KEY")]
    pub jwt_rs256_public_key: Option<PathBuf>,
    /// Required `iss` of bearer tokens (required when a JWT key is set).
    #[arg(long, env = "CRM_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of bearer tokens (required when a JWT key is set).
    #[arg(long, env = "CRM_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// API keys of channel adapters: `key=subject:role,...`, or `@FILE` with one
    /// `key=subject:role` per line (`#` comments).
    #[arg(long, env = "CRM_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Inbound-topic adapters: `ce_source=subject,...`; a record whose `ce_source` is not
    /// listed is dead-lettered.
    #[arg(long, env = "CRM_CHANNEL_SOURCES")]
    pub channel_sources: Option<String>,
    /// LOCAL DEVELOPMENT ONLY: no authentication; every request is the administrator `dev`.
    #[arg(long, env = "CRM_AUTH_DISABLED")]
    pub auth_disabled: bool,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("--jwt-issuer and --jwt-audience are required with a JWT key: tokens are checked against both")]
    IssuerAudienceRequired,
    #[error("--jwt-hs256-secret must be at least 32 bytes")]
    WeakSecret,
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not an RSA public key in PEM: {reason}")]
    RsaKey { path: String, reason: String },
    #[error("--api-keys entry {entry}: {reason}")]
    ApiKey { entry: usize, reason: String },
    #[error("--channel-sources entry {entry}: expected `ce_source=subject`")]
    ChannelSource { entry: usize },
}

/// Why a request is not authenticated: always a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `Authorization: Bearer <token>` (or `X-Api-Key` for channel adapters)")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("unknown API key")]
    UnknownApiKey,
    #[error("no authentication is configured: every request is refused")]
    NotConfigured,
}

impl AuthError {
    /// The RFC 9457 answer, with the RFC 6750 `WWW-Authenticate` challenge.
    pub fn problem_response(&self) -> Response {
        let mut response = Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Authentication required",
        )
        .detail(self.to_string())
        .into_response();
        let challenge = match self {
            AuthError::Missing | AuthError::NotConfigured => r#"Bearer realm="crm""#.to_owned(),
            other => format!(
                r#"Bearer realm="crm", error="invalid_token", error_description="{}""#,
                other.to_string().replace('"', "'")
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        response
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        self.problem_response()
    }
}

/// The 403 answer: authenticated, but the role may not do this.
pub fn forbidden(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
}

struct ApiKey {
    key: Vec<u8>,
    subject: String,
    role: Role,
}

struct Jwt {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    issuer: String,
    audience: String,
}

/// The claims read from a bearer token (the standard ones are checked by the validation).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// Turns credentials into a [`Principal`].
pub struct Authenticator {
    jwt: Option<Jwt>,
    api_keys: Vec<ApiKey>,
    channel_sources: HashMap<String, String>,
    disabled: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.jwt.is_some())
            .field("api_keys", &self.api_keys.len())
            .field("channel_sources", &self.channel_sources.len())
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl Authenticator {
    /// Everyone is the administrator `dev`. Local development and tests of other concerns only.
    pub fn disabled() -> Self {
        Authenticator {
            jwt: None,
            api_keys: Vec::new(),
            channel_sources: HashMap::new(),
            disabled: true,
        }
    }

    /// Reads the settings; logs a loud warning when authentication is disabled or nothing is
    /// configured.
    pub fn from_args(args: &AuthArgs) -> Result<Self, AuthConfigError> {
        if args.auth_disabled {
            tracing::warn!(
                "!!! AUTHENTICATION IS DISABLED (--auth-disabled): every request is the administrator \
                 `{DEV_SUBJECT}` and may do everything. For local development only; never expose \
                 this instance. !!!"
            );
            return Ok(Self::disabled());
        }
        let hs256 = match &args.jwt_hs256_secret {
            Some(s) if s.len() < 32 => return Err(AuthConfigError::WeakSecret),
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes())),
            None => None,
        };
        let rs256 = match &args.jwt_rs256_public_key {
            Some(path) => Some(rsa_public_key(path)?),
            None => None,
        };
        let jwt = if hs256.is_some() || rs256.is_some() {
            match (&args.jwt_issuer, &args.jwt_audience) {
                (Some(issuer), Some(audience)) if !issuer.is_empty() && !audience.is_empty() => {
                    Some(Jwt {
                        hs256,
                        rs256,
                        issuer: issuer.clone(),
                        audience: audience.clone(),
                    })
                }
                _ => return Err(AuthConfigError::IssuerAudienceRequired),
            }
        } else {
            None
        };
        let api_keys = match &args.api_keys {
            Some(spec) => parse_api_keys(spec)?,
            None => Vec::new(),
        };
        let channel_sources = match &args.channel_sources {
            Some(spec) => parse_channel_sources(spec)?,
            None => HashMap::new(),
        };
        let auth = Authenticator {
            jwt,
            api_keys,
            channel_sources,
            disabled: false,
        };
        if auth.jwt.is_none() && auth.api_keys.is_empty() {
            tracing::warn!(
                "no JWT key and no API key configured: every request but /healthz, /readyz and \
                 /metrics is refused (set --jwt-hs256-secret or --jwt-rs256-public-key with \
                 --jwt-issuer and --jwt-audience, or --api-keys)"
            );
        }
        Ok(auth)
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    fn dev() -> Principal {
        Principal::new(DEV_SUBJECT, [Role::Administrator], Credential::Development)
    }

    /// The caller of an HTTP request: a bearer token, else an API key.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        if self.disabled {
            return Ok(Self::dev());
        }
        if headers.contains_key(header::AUTHORIZATION) && headers.contains_key(API_KEY_HEADER) {
            // never pass a wrong credential over because another one is right
            return Err(AuthError::Invalid(
                "send one credential: `Authorization: Bearer` or `X-Api-Key`, not both".into(),
            ));
        }
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| AuthError::Invalid("the Authorization header is not ASCII".into()))?;
            let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AuthError::Invalid(format!(
                    "unsupported authorization scheme `{scheme}`: use Bearer"
                )));
            }
            return self.verify_token(token.trim());
        }
        if let Some(value) = headers.get(API_KEY_HEADER) {
            return self.verify_api_key(value.as_bytes());
        }
        if self.jwt.is_none() && self.api_keys.is_empty() {
            return Err(AuthError::NotConfigured);
        }
        Err(AuthError::Missing)
    }

    /// Verifies a bearer JWT: signature (HS256 or RS256, as configured), `exp`, `iss`, `aud`.
    pub fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        let Some(jwt) = &self.jwt else {
            return Err(AuthError::Invalid(
                "bearer tokens are not accepted here".into(),
            ));
        };
        let header = jsonwebtoken::decode_header(token).map_err(jwt_error)?;
        let key = match header.alg {
            Algorithm::HS256 => jwt.hs256.as_ref(),
            Algorithm::RS256 => jwt.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&jwt.issuer]);
        validation.set_audience(&[&jwt.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(jwt_error)?;
        let subject = data.claims.sub.trim();
        if subject.is_empty() {
            return Err(AuthError::Invalid("empty `sub`".into()));
        }
        let roles: BTreeSet<Role> = data
            .claims
            .roles
            .iter()
            .filter_map(|r| match r.parse::<Role>() {
                Ok(role) => Some(role),
                Err(_) => {
                    tracing::debug!(role = %r, "ignoring a role this platform does not know");
                    None
                }
            })
            .collect();
        Ok(Principal {
            subject: domain::UserId::new(subject),
            roles,
            credential: Credential::Token,
        })
    }

    /// Looks an API key up, comparing against every configured key in constant time.
    pub fn verify_api_key(&self, presented: &[u8]) -> Result<Principal, AuthError> {
        let mut found: Option<&ApiKey> = None;
        for k in &self.api_keys {
            // no early exit: every key is compared, each in constant time
            if bool::from(k.key.as_slice().ct_eq(presented)) {
                found = Some(k);
            }
        }
        found
            .map(|k| Principal::new(k.subject.clone(), [k.role], Credential::ApiKey))
            .ok_or(AuthError::UnknownApiKey)
    }

    /// The adapter behind an inbound-topic record's `ce_source`, when it is a configured one.
    /// Under `--auth-disabled` any source is an adapter named `adapter:<source>`.
    pub fn channel(&self, source: &str) -> Option<Principal> {
        if self.disabled {
            return Some(Principal::new(
                format!("adapter:{source}"),
                [Role::ChannelAdapter],
                Credential::Development,
            ));
        }
        self.channel_sources.get(source).map(|subject| {
            Principal::new(
                subject.clone(),
                [Role::ChannelAdapter],
                Credential::ChannelSource,
            )
        })
    }
}

fn jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        JwtErrorKind::ExpiredSignature => AuthError::Expired,
        JwtErrorKind::InvalidSignature => AuthError::BadSignature,
        JwtErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        JwtErrorKind::InvalidAudience => AuthError::WrongAudience,
        JwtErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("no `{c}` claim")),
        JwtErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet (`nbf`)".into()),
        _ => AuthError::Invalid(e.to_string()),
    }
}

fn rsa_public_key(path: &Path) -> Result<DecodingKey, AuthConfigError> {
    let pem = std::fs::read(path).map_err(|e| AuthConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    DecodingKey::from_rsa_pem(&pem).map_err(|e| AuthConfigError::RsaKey {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// `key=subject:role,...`, or `@FILE` with one entry per line.
fn parse_api_keys(spec: &str) -> Result<Vec<ApiKey>, AuthConfigError> {
    let text;
    let entries: Vec<&str> = match spec.strip_prefix('@') {
        Some(path) => {
            text = std::fs::read_to_string(path).map_err(|e| AuthConfigError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect()
        }
        None => spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect(),
    };
    let mut keys: Vec<ApiKey> = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let bad = |reason: &str| AuthConfigError::ApiKey {
            entry: i + 1,
            reason: reason.to_owned(),
        };
        let (key, identity) = entry
            .split_once('=')
            .ok_or_else(|| bad("expected `key=subject:role`"))?;
        let (subject, role) = identity
            .rsplit_once(':')
            .ok_or_else(|| bad("expected `key=subject:role`"))?;
        let (key, subject) = (key.trim(), subject.trim());
        if key.len() < 16 {
            return Err(bad("the key must be at least 16 characters"));
        }
        if subject.is_empty() {
            return Err(bad("empty subject"));
        }
        let role: Role = role
            .trim()
            .parse()
            .map_err(|e: domain::access::UnknownRole| bad(&e.to_string()))?;
        if keys.iter().any(|k| k.key == key.as_bytes()) {
            return Err(bad("the same key twice"));
        }
        keys.push(ApiKey {
            key: key.as_bytes().to_vec(),
            subject: subject.to_owned(),
            role,
        });
    }
    Ok(keys)
}

fn parse_channel_sources(spec: &str) -> Result<HashMap<String, String>, AuthConfigError> {
    let mut map = HashMap::new();
    for (i, entry) in spec
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let (source, subject) = entry
            .rsplit_once('=')
            .ok_or(AuthConfigError::ChannelSource { entry: i + 1 })?;
        let (source, subject) = (source.trim(), subject.trim());
        if source.is_empty() || subject.is_empty() {
            return Err(AuthConfigError::ChannelSource { entry: i + 1 });
        }
        map.insert(source.to_owned(), subject.to_owned());
    }
    Ok(map)
}

/// A router state that can authenticate.
pub trait AuthState {
    fn authenticator(&self) -> &Authenticator;
}

impl AuthState for Authenticator {
    fn authenticator(&self) -> &Authenticator {
        self
    }
}

impl<T: AuthState> AuthState for Arc<T> {
    fn authenticator(&self) -> &Authenticator {
        self.as_ref().authenticator()
    }
}

/// The authenticated caller of a request, put there by [`require_authentication`].
#[derive(Debug, Clone)]
pub struct Authenticated(pub Arc<Principal>);

impl<S> FromRequestParts<S> for Authenticated
where
    S: AuthState + Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(p) = parts.extensions.get::<Authenticated>() {
            return Ok(p.clone());
        }
        // Without the middleware: authenticate here (still closed by default).
        state
            .authenticator()
            .authenticate(&parts.headers)
            .map(|p| Authenticated(Arc::new(p)))
            .map_err(IntoResponse::into_response)
    }
}

/// Middleware: every request but [`OPEN_PATHS`] must authenticate, else 401. Use with
/// `axum::middleware::from_fn_with_state(authenticator, require_authentication)`.
pub async fn require_authentication<S: AuthState>(
    State(state): State<S>,
    mut request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match state.authenticator().authenticate(request.headers()) {
        Ok(principal) => {
            request
                .extensions_mut()
                .insert(Authenticated(Arc::new(principal)));
            next.run(request).await
        }
        Err(e) => {
            tracing::debug!(path = %request.uri().path(), error = %e, "unauthenticated request");
            e.into_response()
        }
    }
}

/// The claims of a token this platform mints (for local use: `crm token`).
#[derive(Debug, Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    roles: &'a [String],
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

/// Mints an HS256 bearer token that an [`Authenticator`] with the same secret, issuer and
/// audience accepts. For local development and demos; production tokens come from the
/// organisation's identity provider.
pub fn mint_hs256(
    secret: &[u8],
    issuer: &str,
    audience: &str,
    subject: &str,
    roles: &[String],
    valid_for: std::time::Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = chrono::Utc::now().timestamp();
    let claims = MintedClaims {
        sub: subject,
        roles,
        iss: issuer,
        aud: audience,
        iat: now,
        exp: now + i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX / 2),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
}
