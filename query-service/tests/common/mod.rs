//! Test support: a fresh database per test and the event-stream world (the test bed's
//! `crm_tests::world`: customer streams made valid by `domain::decide` and laid out on
//! partitions as a Kafka topic would, and the organisation stream (teams) decided the same
//! way, shared with projection-service's tests); read models filled by the real `Projector`;
//! and a client that calls the query-service router in process, authenticated: as an
//! administrator unless a request says otherwise.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};
use domain::*;
use infra::Position;

pub use crm_tests::world::*;

// ------------------------------------------------------------------ credentials

pub const SECRET: &str = "a-query-service-test-secret-of-32-bytes+";
pub const ISSUER: &str = "https://id.example.com";
pub const AUDIENCE: &str = "crm";
/// API keys: a channel adapter's and an auditing program's.
pub const ADAPTER_KEY: &str = "adapter-key-0123456789abcdef";
pub const AUDITOR_KEY: &str = "auditor-key-0123456789abcdef";

/// The settings of the harness's authenticator: HS256 and RS256 tokens, two API keys.
pub fn auth_args() -> infra::auth::AuthArgs {
    infra::auth::AuthArgs {
        jwt_hs256_secret: Some(SECRET.into()),
        jwt_rs256_public_key: Some(fixture("rs256-test-public.pem")),
        jwt_issuer: Some(ISSUER.into()),
        jwt_audience: Some(AUDIENCE.into()),
        api_keys: Some(format!(
            "{ADAPTER_KEY}=channel-wechat:channel_adapter,{AUDITOR_KEY}=audit-bot:auditor"
        )),
        channel_sources: None,
        auth_disabled: false,
    }
}

/// infra's RSA test keys.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../infra/tests/fixtures")
        .join(name)
}

/// A valid HS256 bearer token for `subject` with `roles`.
pub fn token(subject: &str, roles: &[access::Role]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| r.as_str().to_owned()).collect();
    infra::auth::mint_hs256(
        SECRET.as_bytes(),
        ISSUER,
        AUDIENCE,
        subject,
        &roles,
        Duration::from_secs(600),
    )
    .unwrap()
}

/// The `Authorization` header value of `token(subject, roles)`.
pub fn bearer(subject: &str, roles: &[access::Role]) -> String {
    format!("Bearer {}", token(subject, roles))
}

// ------------------------------------------------------------------ the service under test

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use projection_service::{Projectable, ProjectionVersion, Projector, ReadModels};
use serde_json::Value;
use tower::ServiceExt;

/// A database, the live projection version `rm` v1 with its projector, and the router.
pub struct Harness {
    pub db: TestDb,
    pub projector: Projector,
    pub reads: ReadModels,
    pub router: Router,
}

/// An answer: status, headers, body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// Asserts a problem+json with this status naming `field`.
    pub fn assert_problem(&self, status: u16, field: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        assert_eq!(p["field"], field, "{p}");
    }
}

impl Harness {
    pub async fn new(max_wait: Duration) -> Harness {
        let db = TestDb::new().await;
        let version = ProjectionVersion::new("rm", 1).unwrap();
        let (projector, _) = Projector::open(db.pool.clone(), version.clone())
            .await
            .unwrap();
        let reads = ReadModels::new(db.pool.clone(), &version);
        let auth = infra::auth::Authenticator::from_args(&auth_args()).unwrap();
        let app = query_service::App::new(db.pool.clone(), "rm", max_wait, auth).unwrap();
        let router = query_service::router(app);
        Harness {
            db,
            projector,
            reads,
            router,
        }
    }

    /// Applies events (customers' or the organisation's) through the real projector, in
    /// batches of 7.
    pub async fn apply<E: Projectable + Sync>(&self, log: &[(Position, E)]) {
        for batch in log.chunks(7) {
            self.projector.apply(batch).await.unwrap();
        }
    }

    /// A GET as an administrator, unless `headers` carry credentials (`authorization` or
    /// `x-api-key`) of their own.
    pub async fn get_with(&self, uri: &str, headers: &[(&str, &str)]) -> Answer {
        let own = headers.iter().any(|(k, _)| {
            k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("x-api-key")
        });
        let admin = bearer("admin-ma", &[access::Role::Administrator]);
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !own {
            all.push(("authorization", &admin));
        }
        self.get_raw(uri, &all).await
    }

    /// A GET as `subject` with `roles` (a bearer token).
    pub async fn get_as(&self, uri: &str, subject: &str, roles: &[access::Role]) -> Answer {
        self.get_raw(uri, &[("authorization", &bearer(subject, roles))])
            .await
    }

    /// A GET with exactly these headers (no credentials added).
    pub async fn get_raw(&self, uri: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::get(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.get_with(uri, &[]).await
    }

    /// A 200 JSON answer.
    pub async fn json(&self, uri: &str) -> Value {
        let a = self.get(uri).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{uri}: {}",
            String::from_utf8_lossy(&a.body)
        );
        a.json()
    }

    /// Every item of a paginated list, following `next_cursor` with pages of `limit`.
    pub async fn all_pages(&self, uri: &str, limit: usize) -> Vec<Value> {
        let sep = if uri.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let page_uri = match &cursor {
                Some(c) => format!("{uri}{sep}limit={limit}&cursor={c}"),
                None => format!("{uri}{sep}limit={limit}"),
            };
            let page = self.json(&page_uri).await;
            let got = page["items"].as_array().unwrap();
            assert!(got.len() <= limit);
            items.extend(got.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return items,
            }
        }
        panic!("{uri}: no last page");
    }

    /// The CSV answer, parsed: the header and the records.
    pub async fn csv(&self, uri: &str) -> (Vec<String>, Vec<Vec<String>>) {
        let a = self.get_with(uri, &[("accept", "text/csv")]).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{uri}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert!(a.header("content-type").unwrap().starts_with("text/csv"));
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(a.body.as_slice());
        let header: Vec<String> = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        let records = reader
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect();
        (header, records)
    }

    /// Asserts that the CSV of `uri` has the same rows, in the same order, as its JSON items.
    pub async fn assert_csv_matches_json(&self, uri: &str, items: &[Value]) {
        let (header, records) = self.csv(uri).await;
        assert_eq!(records.len(), items.len(), "{uri}: CSV rows vs JSON items");
        for (record, item) in records.iter().zip(items) {
            let obj = item.as_object().unwrap();
            for (column, cell) in header.iter().zip(record) {
                let expected = match obj.get(column) {
                    None | Some(Value::Null) => String::new(),
                    // text a spreadsheet would run as a formula is prefixed with `'`
                    Some(Value::String(s)) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => {
                        format!("'{s}")
                    }
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) => b.to_string(),
                    Some(other) => other.to_string(),
                };
                assert_eq!(cell, &expected, "{uri}: column {column}");
            }
            // every JSON field is a CSV column
            for key in obj.keys() {
                assert!(header.contains(key), "{uri}: {key} missing from the CSV");
            }
        }
    }
}

/// The ids (field `key`) of a list's items.
pub fn ids(items: &[Value], key: &str) -> Vec<String> {
    items
        .iter()
        .map(|i| i[key].as_str().unwrap().to_owned())
        .collect()
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
