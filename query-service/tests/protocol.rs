//! Bad parameters are a 400 problem naming the parameter; the OpenAPI document covers every
//! route and parameter the router serves; health, readiness and metrics; CSV is streamed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::*;
use domain::*;
use futures::StreamExt;
use tower::ServiceExt;

async fn small() -> (Harness, World) {
    let h = Harness::new(Duration::from_millis(100)).await;
    let mut w = World::new(2);
    for i in 0..5u128 {
        w.exec(
            cid(i),
            day(i as i64),
            "am-li",
            register(
                CustomerLevel::Ordinary,
                &format!("C{i}"),
                "华东",
                3,
                3,
                "am-li",
            ),
        );
    }
    h.apply(&w.log).await;
    (h, w)
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let (h, _) = small().await;
    let c = cid(1).as_uuid();
    let page = h.json("/v1/customers?limit=2").await;
    let by_name = page["next_cursor"].as_str().unwrap().to_owned();
    let cases: Vec<(String, &str)> = vec![
        ("/v1/customers?limit=0".into(), "limit"),
        ("/v1/customers?limit=1001".into(), "limit"),
        ("/v1/customers?limit=ten".into(), "limit"),
        ("/v1/customers?sort=height".into(), "sort"),
        ("/v1/customers?sort=--name".into(), "sort"),
        ("/v1/customers?cursor=garbage!".into(), "cursor"),
        ("/v1/customers?cursor=eyJ4IjoxfQ".into(), "cursor"),
        (
            format!("/v1/customers?sort=-name&cursor={by_name}"),
            "cursor",
        ),
        (
            format!("/v1/customers?owner=am-li&cursor={by_name}"),
            "cursor",
        ),
        (
            format!("/v1/customers/{c}/timeline?cursor={by_name}"),
            "cursor",
        ),
        ("/v1/customers?owner=".into(), "owner"),
        ("/v1/customers?level=huge".into(), "level"),
        ("/v1/customers?segment=whales".into(), "segment"),
        ("/v1/customers?churn_status=gone".into(), "churn_status"),
        ("/v1/customers?q=a&q=b".into(), "q"),
        (format!("/v1/customers?q={}", "x".repeat(201)), "q"),
        ("/v1/customers?colour=red".into(), "colour"),
        ("/v1/customers/not-a-uuid".into(), "customer_id"),
        ("/v1/customers/not-a-uuid/timeline".into(), "customer_id"),
        (
            format!("/v1/customers/{c}/timeline?channel=pigeon"),
            "channel",
        ),
        (
            format!("/v1/customers/{c}/timeline?type=crm.customer.flew.v1"),
            "type",
        ),
        (format!("/v1/customers/{c}/timeline?from=yesterday"), "from"),
        (
            format!("/v1/customers/{c}/timeline?from=2025-02-01&to=2025-01-01"),
            "to",
        ),
        (format!("/v1/customers/{c}/timeline?sort=sequence"), "sort"),
        ("/v1/opportunities?stage=won".into(), "stage"),
        ("/v1/opportunities?status=stuck".into(), "status"),
        ("/v1/opportunities?customer=42".into(), "customer"),
        (
            "/v1/opportunities?expected_close_from=2025-13-01".into(),
            "expected_close_from",
        ),
        (
            "/v1/opportunities?expected_close_from=2025-03-01&expected_close_to=2025-02-01".into(),
            "expected_close_to",
        ),
        ("/v1/pipeline?as_of=soon".into(), "as_of"),
        ("/v1/pipeline?owner=am-li".into(), "owner"),
        ("/v1/alerts?status=snoozed".into(), "status"),
        ("/v1/segments/rfm?limit=5".into(), "limit"),
        ("/v1/segments/rfm/whales/customers".into(), "segment"),
        ("/v1/churn?status=gone".into(), "status"),
        (
            "/v1/reports/revenue?from=2025-01-01&to=2025-02-01".into(),
            "report",
        ),
        ("/v1/reports/contribution?to=2025-02-01".into(), "from"),
        (
            "/v1/reports/contribution?from=2025-01-01&to=later".into(),
            "to",
        ),
        ("/v1/audit?customer=x".into(), "customer"),
        ("/v1/audit?type=crm.nothing.v1".into(), "type"),
        (
            "/v1/audit?from=2025-01-01T00:00:00&to=2025-02-01".into(),
            "from",
        ),
        ("/v1/audit?correlation=1".into(), "correlation"),
        ("/v1/audit/events/123".into(), "event_id"),
    ];
    for (uri, field) in cases {
        let a = h.get(&uri).await;
        assert_eq!(a.status, 400, "{uri}: {}", String::from_utf8_lossy(&a.body));
        a.assert_problem(400, field);
        assert!(
            a.json()["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{uri}"
        );
    }
    // valid edge values pass
    for uri in [
        "/v1/customers?limit=1000",
        "/v1/customers?limit=1&sort=-customer_id",
        "/v1/audit?from=2025-01-01T00:00:00+08:00",
        "/v1/audit?from=2025-01-01T00:00:00%2B08:00&to=2025-01-02",
    ] {
        assert_eq!(h.get(uri).await.status, 200, "{uri}");
    }
    let a = h.get("/v2/nothing").await;
    assert_eq!(a.status, 404);
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("application/problem+json")
    );
}

#[tokio::test]
async fn openapi_describes_every_route_and_parameter() {
    let (h, _) = small().await;
    let doc = h.json("/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let routes = query_service::routes::routes();
    for r in routes {
        // the report route is documented as one path per report (composition takes no period)
        let documented: Vec<(String, String)> = if r.path.contains("{report}") {
            query_service::routes::REPORTS
                .iter()
                .map(|n| {
                    (
                        r.path.replace("{report}", n),
                        format!("{}_{n}", r.operation_id),
                    )
                })
                .collect()
        } else {
            vec![(r.path.to_owned(), r.operation_id.to_owned())]
        };
        for (path, operation_id) in &documented {
            let op = &paths[path.as_str()]["get"];
            assert_eq!(op["operationId"], operation_id.as_str(), "{path}");
            let names: Vec<&str> = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            for p in r.params {
                let not_here = p.name == "report"
                    || (path.ends_with("/composition") && (p.name == "from" || p.name == "to"));
                assert!(
                    not_here || names.contains(&p.name),
                    "{path}: {} undocumented",
                    p.name
                );
            }
            assert!(names.contains(&"CRM-Min-Position"), "{path}");
        }
        // the route is served: a sample request is not "no such resource"
        let uri = r
            .path
            .replace("{customer_id}", &cid(1).as_uuid().to_string())
            .replace(
                "{event_id}",
                &h.reads.audit_trail(None).await.unwrap()[0]
                    .event_id
                    .to_string(),
            )
            .replace("{segment}", "no_purchases")
            .replace("{report}", "composition");
        assert_eq!(h.get(&uri).await.status, 200, "{uri}");
        // and every query parameter the document names is accepted (not "unknown parameter")
        for p in r
            .params
            .iter()
            .filter(|p| p.location == query_service::params::In::Query)
        {
            let a = h.get(&format!("{uri}?{}=%00invalid", p.name)).await;
            if a.status == 400 {
                let detail = a.json()["detail"].as_str().unwrap().to_owned();
                assert!(
                    !detail.starts_with("unknown parameter"),
                    "{uri}: {} refused as unknown",
                    p.name
                );
            }
        }
    }
    let v1: Vec<&String> = paths.keys().filter(|p| p.starts_with("/v1/")).collect();
    assert_eq!(
        v1.len(),
        routes.len() - 1 + query_service::routes::REPORTS.len()
    );
    for p in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert!(paths.contains_key(p), "{p}");
    }
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (h, _) = small().await;
    assert_eq!(h.get("/healthz").await.status, 200);
    let ready = h.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["schema"], "rm_v1");
    for _ in 0..3 {
        h.json("/v1/customers").await;
    }
    h.get("/v1/customers?limit=0").await;
    h.json(&format!("/v1/customers/{}", cid(1).as_uuid())).await;
    let m = String::from_utf8(h.get("/metrics").await.body).unwrap();
    assert!(m.contains(r#"crm_query_request_duration_seconds_count{method="GET",route="/v1/customers",status="200"} 3"#), "{m}");
    assert!(m.contains(r#"crm_query_request_duration_seconds_count{method="GET",route="/v1/customers",status="400"} 1"#), "{m}");
    assert!(m.contains(r#"crm_query_request_duration_seconds_bucket{method="GET",route="/v1/customers/{customer_id}",status="200",le="#), "{m}");

    // a database without read models: alive, not ready, and queries say why
    let empty = TestDb::new().await;
    let app = query_service::App::new(
        empty.pool.clone(),
        "rm",
        Duration::from_millis(100),
        infra::auth::Authenticator::from_args(&auth_args()).unwrap(),
    )
    .unwrap();
    let router = query_service::router(app);
    let admin = bearer("admin-ma", &[access::Role::Administrator]);
    let call = |uri: &'static str| {
        let router = router.clone();
        let admin = admin.clone();
        async move {
            let r = router
                .oneshot(
                    Request::get(uri)
                        .header("authorization", admin)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = r.status();
            let retry = r.headers().get("retry-after").is_some();
            let body = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status.as_u16(),
                retry,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    assert_eq!(call("/healthz").await.0, 200);
    let (status, retry, p) = call("/readyz").await;
    assert_eq!((status, retry), (503, true), "{p}");
    let (status, _, p) = call("/v1/customers").await;
    assert_eq!(status, 503, "{p}");
    // read models exist, but no live version is registered
    sqlx::raw_sql("CREATE SCHEMA projection; CREATE TABLE projection.projection_versions (projection text, version int, status text)")
        .execute(&empty.pool)
        .await
        .unwrap();
    let (status, _, p) = call("/readyz").await;
    assert_eq!(
        (status, p["type"].as_str()),
        (503, Some("/problems/no-live-version"))
    );
}

#[tokio::test]
async fn csv_is_streamed_in_chunks() {
    let h = Harness::new(Duration::from_millis(100)).await;
    let mut w = World::new(4);
    for i in 0..1500u128 {
        w.exec(
            cid(i),
            day(0),
            "am-li",
            register(
                CustomerLevel::Large,
                &format!("Customer, \"{i:04}\"\nLtd"),
                "华东",
                3,
                3,
                "am-li",
            ),
        );
    }
    for batch in w.log.chunks(500) {
        h.projector.apply(batch).await.unwrap();
    }
    let response = h
        .router
        .clone()
        .oneshot(
            Request::get("/v1/customers")
                .header("accept", "text/csv;q=0.9, application/json;q=0.5")
                .header(
                    "authorization",
                    bearer("admin-ma", &[access::Role::Administrator]),
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("content-length").is_none(),
        "a stream has no length up front"
    );
    let mut chunks = 0;
    let mut body = Vec::new();
    let mut stream = response.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        chunks += 1;
        body.extend_from_slice(&chunk.unwrap());
    }
    assert!(chunks > 5, "{chunks} chunks");
    let mut reader = csv::Reader::from_reader(body.as_slice());
    let names: Vec<String> = reader.records().map(|r| r.unwrap()[2].to_owned()).collect();
    assert_eq!(names.len(), 1500);
    assert!(names
        .iter()
        .all(|n| n.starts_with("Customer, \"") && n.ends_with("\nLtd")));
    // with limit and cursor, CSV is the same slice as the JSON page
    let page = h.json("/v1/customers?limit=10").await;
    let next = page["next_cursor"].as_str().unwrap();
    let second = h
        .json(&format!("/v1/customers?limit=10&cursor={next}"))
        .await;
    h.assert_csv_matches_json(
        &format!("/v1/customers?limit=10&cursor={next}"),
        second["items"].as_array().unwrap(),
    )
    .await;
}

/// PostgreSQL's JIT never sits on the request path: query-service's connections have it off
/// (it cost the pipeline about a second per call, docs/benchmarks.md).
#[tokio::test]
async fn query_connections_run_without_jit() {
    let (h, _) = small().await;
    let pool = query_service::pool(&h.db.url(), 1).unwrap();
    let (jit,): (String,) = sqlx::query_as("SHOW jit").fetch_one(&pool).await.unwrap();
    assert_eq!(jit, "off");
    let (name,): (String,) = sqlx::query_as("SHOW application_name")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, "query-service");
}
