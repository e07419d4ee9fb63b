#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Authentication: bearer JWTs (HS256, RS256), API keys, the middleware's answers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use domain::access::{Credential, Role};
use infra::auth::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tower::ServiceExt;

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
const ISSUER: &str = "https://id.example.com";
const AUDIENCE: &str = "crm";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn args() -> AuthArgs {
    AuthArgs {
        jwt_hs256_secret: Some(SECRET.into()),
        jwt_rs256_public_key: Some(fixture("rs256-test-public.pem")),
        jwt_issuer: Some(ISSUER.into()),
        jwt_audience: Some(AUDIENCE.into()),
        api_keys: Some(
            "wechat-key-0123456789abcdef=channel-wechat:channel_adapter, erp-key-0123456789abcdef=erp:administrator".into(),
        ),
        channel_sources: Some("/channels/wechat=channel-wechat".into()),
        auth_disabled: false,
    }
}

fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({"sub": sub, "roles": roles, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "iat": now()})
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn rs256(claims: &Value, private: &str) -> String {
    let pem = std::fs::read(fixture(private)).unwrap();
    encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

#[test]
fn valid_tokens_give_the_subject_and_roles() {
    let auth = Authenticator::from_args(&args()).unwrap();
    let p = auth
        .verify_token(&hs256(
            &claims("am-li", &["account_manager", "someone_elses_role"]),
            SECRET,
        ))
        .unwrap();
    assert_eq!(p.subject.as_str(), "am-li");
    assert_eq!(
        p.roles.iter().copied().collect::<Vec<_>>(),
        [Role::AccountManager]
    );
    assert_eq!(p.credential, Credential::Token);
    let p = auth
        .verify_token(&rs256(
            &claims("sd-wang", &["sales_director", "account_manager"]),
            "rs256-test-private.pem",
        ))
        .unwrap();
    assert_eq!(p.subject.as_str(), "sd-wang");
    assert!(p.has_role(Role::SalesDirector) && p.has_role(Role::AccountManager));
    // `aud` may be an array containing ours
    let mut c = claims("x", &[]);
    c["aud"] = json!(["other", AUDIENCE]);
    assert!(auth.verify_token(&hs256(&c, SECRET)).is_ok());
}

#[test]
fn bad_tokens_are_refused_with_the_reason() {
    let auth = Authenticator::from_args(&args()).unwrap();
    let ok = claims("am-li", &["account_manager"]);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = ok.clone();
        edit(&mut c);
        c
    };
    let cases: Vec<(&str, String, AuthError)> = vec![
        (
            "expired",
            hs256(&with(&|c| c["exp"] = json!(now() - 3600)), SECRET),
            AuthError::Expired,
        ),
        (
            "forged HS256",
            hs256(&ok, "another-secret-of-at-least-32-bytes!!"),
            AuthError::BadSignature,
        ),
        (
            "forged RS256",
            rs256(&ok, "rs256-other-private.pem"),
            AuthError::BadSignature,
        ),
        (
            "wrong issuer",
            hs256(
                &with(&|c| c["iss"] = json!("https://evil.example.com")),
                SECRET,
            ),
            AuthError::WrongIssuer,
        ),
        (
            "wrong audience",
            hs256(&with(&|c| c["aud"] = json!("billing")), SECRET),
            AuthError::WrongAudience,
        ),
    ];
    for (what, token, expected) in cases {
        assert_eq!(auth.verify_token(&token), Err(expected), "{what}");
    }
    let invalid = [
        (
            "no exp",
            hs256(
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
                SECRET,
            ),
        ),
        (
            "no sub",
            hs256(
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
                SECRET,
            ),
        ),
        (
            "not yet valid",
            hs256(&with(&|c| c["nbf"] = json!(now() + 3600)), SECRET),
        ),
        ("garbage", "not.a.token".to_owned()),
        (
            "HS512 is not accepted",
            encode(
                &Header::new(Algorithm::HS512),
                &ok,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap(),
        ),
        ("alg none", {
            let token = hs256(&ok, SECRET);
            let mut parts = token.split('.');
            let _ = parts.next();
            let payload = parts.next().unwrap();
            // {"alg":"none","typ":"JWT"}
            format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")
        }),
    ];
    for (what, token) in invalid {
        assert!(
            matches!(auth.verify_token(&token), Err(AuthError::Invalid(_))),
            "{what}: {:?}",
            auth.verify_token(&token)
        );
    }
}

#[test]
fn an_hs256_token_is_refused_where_only_rs256_is_configured() {
    // The classic confusion: the RSA public key used as an HMAC secret.
    let public = std::fs::read_to_string(fixture("rs256-test-public.pem")).unwrap();
    let auth = Authenticator::from_args(&AuthArgs {
        jwt_hs256_secret: None,
        ..args()
    })
    .unwrap();
    let token = hs256(&claims("x", &["administrator"]), &public);
    assert!(matches!(
        auth.verify_token(&token),
        Err(AuthError::Invalid(_))
    ));
}

#[test]
fn settings_that_cannot_work_are_refused() {
    let no_issuer = AuthArgs {
        jwt_issuer: None,
        ..args()
    };
    assert!(matches!(
        Authenticator::from_args(&no_issuer),
        Err(AuthConfigError::IssuerAudienceRequired)
    ));
    let no_audience = AuthArgs {
        jwt_audience: Some(String::new()),
        ..args()
    };
    assert!(Authenticator::from_args(&no_audience).is_err());
    let weak = AuthArgs {
        jwt_hs256_secret: Some("short".into()),
        ..args()
    };
    assert!(matches!(
        Authenticator::from_args(&weak),
        Err(AuthConfigError::WeakSecret)
    ));
    let no_key_file = AuthArgs {
        jwt_rs256_public_key: Some("/nonexistent.pem".into()),
        ..args()
    };
    assert!(matches!(
        Authenticator::from_args(&no_key_file),
        Err(AuthConfigError::Read { .. })
    ));
    let not_a_key = AuthArgs {
        jwt_rs256_public_key: Some(fixture("README.md")),
        ..args()
    };
    assert!(matches!(
        Authenticator::from_args(&not_a_key),
        Err(AuthConfigError::RsaKey { .. })
    ));
    for bad in [
        "nokey",
        "short=a:channel_adapter",
        "key-0123456789abcdef=a",
        "key-0123456789abcdef=a:root",
        "key-0123456789abcdef=:channel_adapter",
        "key-0123456789abcdef=a:channel_adapter,key-0123456789abcdef=b:channel_adapter",
    ] {
        let a = AuthArgs {
            api_keys: Some(bad.into()),
            ..args()
        };
        assert!(
            matches!(
                Authenticator::from_args(&a),
                Err(AuthConfigError::ApiKey { .. })
            ),
            "{bad}"
        );
    }
    let a = AuthArgs {
        channel_sources: Some("/channels/wechat".into()),
        ..args()
    };
    assert!(Authenticator::from_args(&a).is_err());
}

#[test]
fn api_keys_from_the_setting_or_a_file() {
    let auth = Authenticator::from_args(&args()).unwrap();
    let p = auth.verify_api_key(b"wechat-key-0123456789abcdef").unwrap();
    assert_eq!(p.subject.as_str(), "channel-wechat");
    assert_eq!(
        p.roles.iter().copied().collect::<Vec<_>>(),
        [Role::ChannelAdapter]
    );
    assert_eq!(p.credential, Credential::ApiKey);
    assert_eq!(
        auth.verify_api_key(b"wechat-key-0123456789abcdeX"),
        Err(AuthError::UnknownApiKey)
    );
    assert_eq!(auth.verify_api_key(b""), Err(AuthError::UnknownApiKey));
    assert_eq!(
        auth.verify_api_key(b"wechat-key"),
        Err(AuthError::UnknownApiKey)
    );

    let dir = std::env::temp_dir().join(format!("crm-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    std::fs::write(
        &file,
        "# adapters\nmail-key-0123456789abcdef = channel-mail : channel_adapter\n\n",
    )
    .unwrap();
    let auth = Authenticator::from_args(&AuthArgs {
        api_keys: Some(format!("@{}", file.display())),
        ..args()
    })
    .unwrap();
    assert_eq!(
        auth.verify_api_key(b"mail-key-0123456789abcdef")
            .unwrap()
            .subject
            .as_str(),
        "channel-mail"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn inbound_sources_map_to_configured_adapters() {
    let auth = Authenticator::from_args(&args()).unwrap();
    let p = auth.channel("/channels/wechat").unwrap();
    assert_eq!(p.subject.as_str(), "channel-wechat");
    assert_eq!(
        p.roles.iter().copied().collect::<Vec<_>>(),
        [Role::ChannelAdapter]
    );
    assert!(auth.channel("/channels/unknown").is_none());
    let dev = Authenticator::disabled();
    assert_eq!(
        dev.channel("/channels/x").unwrap().subject.as_str(),
        "adapter:/channels/x"
    );
}

async fn call(
    router: &Router,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut request = Request::builder().uri(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn router(auth: Authenticator) -> Router {
    let auth = Arc::new(auth);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(|| async { "ok" }))
        .route("/openapi.json", get(|| async { "{}" }))
        .route(
            "/v1/whoami",
            get(|Authenticated(p): Authenticated| async move {
                axum::Json(json!({"subject": p.subject.as_str(), "roles": p.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()}))
            }),
        )
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            require_authentication::<Arc<Authenticator>>,
        ))
        .with_state(auth)
}

#[tokio::test]
async fn the_middleware_is_closed_by_default() {
    let r = router(Authenticator::from_args(&args()).unwrap());
    for open in OPEN_PATHS {
        assert_eq!(call(&r, open, &[]).await.0, StatusCode::OK, "{open}");
    }
    let token = hs256(&claims("am-li", &["account_manager"]), SECRET);
    let expired = hs256(
        &{
            let mut c = claims("am-li", &["account_manager"]);
            c["exp"] = json!(now() - 3600);
            c
        },
        SECRET,
    );
    let bearer = format!("Bearer {token}");
    let (status, _, body) = call(&r, "/v1/whoami", &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["subject"], "am-li");
    let (status, _, body) = call(
        &r,
        "/v1/whoami",
        &[("x-api-key", "wechat-key-0123456789abcdef")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["roles"], json!(["channel_adapter"]));
    // missing, expired, wrong scheme, unknown key; an unknown path too (nothing leaks)
    let expired = format!("Bearer {expired}");
    for (uri, headers, challenge) in [
        ("/v1/whoami", vec![], r#"Bearer realm="crm""#),
        (
            "/v1/whoami",
            vec![("authorization", expired.as_str())],
            "invalid_token",
        ),
        (
            "/v1/whoami",
            vec![("authorization", "Basic YTpi")],
            "invalid_token",
        ),
        ("/v1/whoami", vec![("x-api-key", "nope")], "invalid_token"),
        ("/v1/nothing-here", vec![], r#"Bearer realm="crm""#),
    ] {
        let (status, h, body) = call(&r, uri, &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} {headers:?}");
        assert_eq!(h["content-type"], "application/problem+json");
        assert!(
            h["www-authenticate"].to_str().unwrap().contains(challenge),
            "{:?}",
            h["www-authenticate"]
        );
        assert_eq!(body["status"], 401);
        assert_eq!(body["type"], "/problems/unauthenticated");
    }
    // with nothing configured, everything but the open paths is refused
    let r = router(Authenticator::from_args(&AuthArgs::default()).unwrap());
    assert_eq!(
        call(&r, "/v1/whoami", &[("authorization", &bearer)])
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(call(&r, "/healthz", &[]).await.0, StatusCode::OK);
    // disabled: everyone is the administrator `dev`
    let r = router(
        Authenticator::from_args(&AuthArgs {
            auth_disabled: true,
            ..AuthArgs::default()
        })
        .unwrap(),
    );
    let (status, _, body) = call(&r, "/v1/whoami", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"subject": "dev", "roles": ["administrator"]}));
}
