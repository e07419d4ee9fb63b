//! Credentials for the tests: an HS256 issuer, an API key of a channel adapter.
#![allow(dead_code)]

use infra::auth::{AuthArgs, Authenticator};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub const SECRET: &str = "command-service-test-secret-of-32-bytes+";
pub const ISSUER: &str = "https://id.test.example";
pub const AUDIENCE: &str = "crm-commands";
pub const ADAPTER_KEY: &str = "wechat-adapter-key-0123456789";
pub const ADAPTER: &str = "channel-wechat";

pub fn auth_args() -> AuthArgs {
    AuthArgs {
        jwt_hs256_secret: Some(SECRET.into()),
        jwt_rs256_public_key: None,
        jwt_issuer: Some(ISSUER.into()),
        jwt_audience: Some(AUDIENCE.into()),
        api_keys: Some(format!("{ADAPTER_KEY}={ADAPTER}:channel_adapter")),
        channel_sources: Some(format!("/channels/wechat={ADAPTER}")),
        auth_disabled: false,
    }
}

pub fn authenticator() -> Authenticator {
    Authenticator::from_args(&auth_args()).unwrap()
}

pub fn claims(sub: &str, roles: &[&str]) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": sub, "roles": roles, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600})
}

pub fn sign(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// `Bearer <token>` for `sub` with these roles.
pub fn bearer(sub: &str, roles: &[&str]) -> String {
    format!("Bearer {}", sign(&claims(sub, roles), SECRET))
}
