//! Who may read what. Read models filled by the real projector from streams decided by the
//! domain, teams included (the organisation stream); every request authenticated by the real
//! `Authenticator` from real tokens.
//!
//! - the whole role × route matrix, driven by the permission table (a query operation without
//!   a route, or a route whose operation is not a query of the table, fails);
//! - record visibility: an account manager's lists leave other owners' customers out and their
//!   single resources answer 404 word for word as for an unknown id; a director sees their own
//!   and their team members' customers and nobody else's, following team changes;
//! - bad credentials (expired, forged, wrong issuer, wrong audience, ...) are 401.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use domain::access::{role_may, OperationKind, Role, PERMISSIONS};
use domain::policy::rfm::RfmWindow;
use domain::policy::StageThresholds;
use domain::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use query_service::routes::{routes, RouteSpec};
use serde_json::{json, Value};
use uuid::Uuid;

/// Customer n's owner. Team East (director dir-zhou): am-li, am-wang (am-sun was a member and
/// left). Team North (director dir-qian): am-zhao. dir-zhou owns customer 4 himself.
const OWNERS: [(u128, &str); 5] = [
    (1, "am-li"),
    (2, "am-wang"),
    (3, "am-zhao"),
    (4, "dir-zhou"),
    (5, "am-sun"),
];

struct Scenario {
    h: Harness,
    world: World,
    org: Org,
    /// An event of customer 1 (for the audit routes).
    event_c1: Uuid,
    /// An event of customer 2.
    event_c2: Uuid,
}

fn opp(n: u128) -> u128 {
    100 + n
}

async fn scenario() -> Scenario {
    let h = Harness::new(Duration::from_millis(200)).await;
    let mut org = Org::new();
    org.team(1, "华东销售", "dir-zhou", &["am-li", "am-wang", "am-sun"]);
    org.exec(
        t0(),
        "dir-zhou",
        RemoveTeamMember {
            team_id: team(1),
            member: UserId::new("am-sun"),
        }
        .into(),
    );
    org.team(2, "华北销售", "dir-qian", &["am-zhao"]);

    let mut w = World::new(3);
    let mut event_c1 = Uuid::nil();
    let mut event_c2 = Uuid::nil();
    for (n, owner) in OWNERS {
        let c = cid(n);
        let e = w.exec(
            c,
            day(1),
            owner,
            register(
                CustomerLevel::Key,
                &format!("Customer {n}"),
                "华东",
                3,
                4,
                owner,
            ),
        );
        match n {
            1 => event_c1 = e[0].metadata.id,
            2 => event_c2 = e[0].metadata.id,
            _ => {}
        }
        w.exec(c, day(2), owner, contact(200 + n, &format!("Contact {n}")));
        w.exec(c, day(3), owner, touch(300 + n, email("offer"), "offer"));
        w.exec(
            c,
            day(4),
            "dir-zhou",
            open_opp(opp(n), 100_000 * n as i64, 50, date(2025, 6, 30)),
        );
        w.exec(c, day(4), "dir-zhou", assign_opp(opp(n), owner));
        w.exec(c, day(5), owner, order(&format!("O-{n}"), 10_000));
        w.exec(
            c,
            day(6),
            "churn-rule",
            Command::RaiseChurnWarning(RaiseChurnWarning {
                churn_case_id: ChurnCaseId(id(600 + n)),
                reason: "quiet".into(),
                last_order_at: Some(day(5)),
            }),
        );
    }
    // customer 2's deal is won, customer 3's lost: the pipelines differ per caller
    for (d, to) in [
        (5, Stage::Proposal),
        (6, Stage::Evaluation),
        (7, Stage::Negotiation),
    ] {
        w.exec(cid(2), day(d), "am-wang", stage(opp(2), to, None, None));
    }
    w.exec(cid(2), day(8), "am-wang", win(opp(2), None));
    w.exec(cid(3), day(8), "am-zhao", lose(opp(3), "price"));

    // both streams, as a consumer delivers them
    h.apply(&org.stream()).await;
    h.apply(&w.log).await;
    // every open deal is stuck in qualification by day 40: one open alert each
    h.projector
        .sweep_alerts(day(40), &StageThresholds::default())
        .await
        .unwrap();
    h.projector
        .recompute_rfm(day(30), RfmWindow::default())
        .await
        .unwrap();
    Scenario {
        h,
        world: w,
        org,
        event_c1,
        event_c2,
    }
}

/// A request for `route` about customer 1 (or its event): one every allowed role, with the
/// subjects below, gets a 200 for. A route this does not know fails the test: a new query
/// cannot be left out of the matrix.
fn sample_uri(route: &RouteSpec, s: &Scenario) -> String {
    let c1 = cid(1).as_uuid();
    match route.path {
        "/v1/customers" => "/v1/customers".into(),
        "/v1/customers/{customer_id}" => format!("/v1/customers/{c1}"),
        "/v1/customers/{customer_id}/timeline" => format!("/v1/customers/{c1}/timeline"),
        "/v1/opportunities" => "/v1/opportunities".into(),
        "/v1/pipeline" => "/v1/pipeline".into(),
        "/v1/alerts" => "/v1/alerts".into(),
        "/v1/segments/rfm" => "/v1/segments/rfm".into(),
        "/v1/segments/rfm/{segment}/customers" => "/v1/segments/rfm/no_purchases/customers".into(),
        "/v1/churn" => "/v1/churn".into(),
        "/v1/reports/{report}" => "/v1/reports/composition".into(),
        "/v1/audit" => "/v1/audit".into(),
        "/v1/audit/events/{event_id}" => format!("/v1/audit/events/{}", s.event_c1),
        other => panic!("{other}: a route without a sample request in the access matrix"),
    }
}

/// The subject each role is tested as: one who reaches customer 1.
fn subject_of(role: Role) -> &'static str {
    match role {
        Role::AccountManager => "am-li",
        Role::SalesDirector => "dir-zhou",
        Role::Administrator => "admin-ma",
        Role::Executive => "ceo-wu",
        Role::ServiceAgent => "cs-chen",
        Role::Auditor => "audit-he",
        Role::ChannelAdapter => "channel-wechat",
    }
}

fn assert_forbidden(a: &Answer, operation: &str, context: &str) {
    assert_eq!(
        a.status,
        403,
        "{context}: {}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("application/problem+json"),
        "{context}"
    );
    let p = a.json();
    assert_eq!(p["status"], 403, "{context}");
    assert_eq!(p["operation"], operation, "{context}: {p}");
}

#[tokio::test]
async fn the_role_by_route_matrix_follows_the_permission_table() {
    let s = scenario().await;
    let h = &s.h;

    // every query operation of the table is served by a route, and only those
    let served: BTreeSet<&str> = routes().iter().map(|r| r.operation).collect();
    let queries: BTreeSet<&str> = PERMISSIONS
        .iter()
        .filter(|p| p.kind == OperationKind::Query)
        .map(|p| p.operation)
        .collect();
    assert_eq!(served, queries, "routes vs query operations of the table");

    let mut checked = 0;
    for route in routes() {
        let uri = sample_uri(route, &s);
        for role in Role::ALL {
            let a = h.get_as(&uri, subject_of(role), &[role]).await;
            let context = format!("{} as {}", uri, role.as_str());
            if role_may(role, route.operation) {
                assert_eq!(
                    a.status,
                    200,
                    "{context}: {}",
                    String::from_utf8_lossy(&a.body)
                );
            } else {
                assert_forbidden(&a, route.operation, &context);
            }
            checked += 1;
        }
        // no role at all, or only roles this platform does not know: refused everywhere
        let a = h.get_as(&uri, "nobody", &[]).await;
        assert_forbidden(&a, route.operation, &format!("{uri} without a role"));
        let unknown = format!(
            "Bearer {}",
            infra::auth::mint_hs256(
                SECRET.as_bytes(),
                ISSUER,
                AUDIENCE,
                "someone",
                &["superuser".to_owned()],
                Duration::from_secs(60),
            )
            .unwrap()
        );
        let a = h.get_raw(&uri, &[("authorization", &unknown)]).await;
        assert_forbidden(&a, route.operation, &format!("{uri} with an unknown role"));

        // API keys are principals like any other: the adapter reads nothing, the auditing
        // program only the audit trail
        let a = h.get_raw(&uri, &[("x-api-key", ADAPTER_KEY)]).await;
        assert!(!role_may(Role::ChannelAdapter, route.operation));
        assert_forbidden(
            &a,
            route.operation,
            &format!("{uri} with the adapter's key"),
        );
        let a = h.get_raw(&uri, &[("x-api-key", AUDITOR_KEY)]).await;
        if role_may(Role::Auditor, route.operation) {
            assert_eq!(a.status, 200, "{uri} with the auditor's key");
        } else {
            assert_forbidden(
                &a,
                route.operation,
                &format!("{uri} with the auditor's key"),
            );
        }

        // several roles: the union of what each may do
        let a = h
            .get_as(&uri, "cs-he", &[Role::ServiceAgent, Role::Auditor])
            .await;
        if role_may(Role::ServiceAgent, route.operation) || role_may(Role::Auditor, route.operation)
        {
            assert_eq!(a.status, 200, "{uri} as service agent and auditor");
        } else {
            assert_forbidden(&a, route.operation, &format!("{uri} as agent+auditor"));
        }
    }
    assert_eq!(checked, routes().len() * Role::ALL.len());

    // the OpenAPI document says who may use each route, from the same table
    let doc = h.json("/openapi.json").await;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["apiKey"]["name"],
        "X-Api-Key"
    );
    for route in routes() {
        // the report route is documented per report; composition stands for them all
        let path = route.path.replace("{report}", "composition");
        let op = &doc["paths"][path.as_str()]["get"];
        assert_eq!(op["x-crm-operation"], route.operation, "{}", route.path);
        let roles: Vec<&str> = Role::ALL
            .into_iter()
            .filter(|r| role_may(*r, route.operation))
            .map(|r| r.as_str())
            .collect();
        assert_eq!(op["x-crm-roles"], json!(roles), "{}", route.path);
        for status in ["401", "403"] {
            assert!(
                op["responses"][status].is_object(),
                "{} {status}",
                route.path
            );
        }
    }
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([]));
}

/// The customer ids (numbers) of a list's items, sorted.
fn customers_in(items: &[Value]) -> Vec<u128> {
    let mut v: Vec<u128> = items
        .iter()
        .map(|i| {
            let id: Uuid = i["customer_id"].as_str().unwrap().parse().unwrap();
            id.as_u128() - 0xC000_0000
        })
        .collect();
    v.sort();
    v
}

/// Every item of a list as `subject` with `roles` (one page of up to 1000).
async fn list_as(h: &Harness, uri: &str, subject: &str, roles: &[Role]) -> Vec<Value> {
    let a = h.get_as(uri, subject, roles).await;
    assert_eq!(
        a.status,
        200,
        "{uri} as {subject}: {}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()["items"].as_array().unwrap().clone()
}

/// Asserts a 404 that is, but for the id, the very answer for an id that does not exist.
async fn assert_hidden(h: &Harness, uri: &str, hidden: Uuid, subject: &str, roles: &[Role]) {
    let a = h.get_as(uri, subject, roles).await;
    assert_eq!(
        a.status,
        404,
        "{uri} as {subject}: {}",
        String::from_utf8_lossy(&a.body)
    );
    let unknown = Uuid::from_u128(0xDEAD_BEEF);
    let b = h
        .get_as(
            &uri.replace(&hidden.to_string(), &unknown.to_string()),
            subject,
            roles,
        )
        .await;
    assert_eq!(b.status, 404);
    assert_eq!(
        String::from_utf8_lossy(&a.body).replace(&hidden.to_string(), "ID"),
        String::from_utf8_lossy(&b.body).replace(&unknown.to_string(), "ID"),
        "{uri}: an existing hidden resource must answer exactly like an unknown one"
    );
    let headers = |x: &Answer| {
        let mut v: Vec<(String, String)> = x
            .headers
            .iter()
            .filter(|(k, _)| *k != "content-length")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(headers(&a), headers(&b), "{uri}: headers");
}

#[tokio::test]
async fn an_account_manager_sees_only_their_own_customers() {
    let s = scenario().await;
    let h = &s.h;
    let am = [Role::AccountManager];
    let (c1, c2) = (cid(1).as_uuid(), cid(2).as_uuid());

    // lists leave the other owners' customers out, in JSON and in CSV
    for (uri, expected, everyone) in [
        ("/v1/customers", vec![1], vec![1, 2, 3, 4, 5]),
        ("/v1/customers?owner=am-wang", vec![], vec![2]),
        ("/v1/opportunities", vec![1], vec![1, 2, 3, 4, 5]),
        ("/v1/alerts", vec![1], vec![1, 4, 5]),
        ("/v1/churn", vec![1], vec![1, 2, 3, 4, 5]),
    ] {
        let admin = list_as(h, uri, "admin-ma", &[Role::Administrator]).await;
        let mine = list_as(h, uri, "am-li", &am).await;
        assert_eq!(customers_in(&mine), expected, "{uri} as am-li");
        assert_eq!(customers_in(&admin), everyone, "{uri} as administrator");
        let csv = h
            .get_raw(
                uri,
                &[
                    ("authorization", &bearer("am-li", &am)),
                    ("accept", "text/csv"),
                ],
            )
            .await;
        assert_eq!(csv.status, 200);
        let rows = String::from_utf8(csv.body).unwrap().lines().count() - 1;
        assert_eq!(rows, expected.len(), "{uri} as CSV");
    }
    // a segment's member list: everyone ordered alike, so all five share customer 1's segment
    let seg = h.json(&format!("/v1/customers/{c1}")).await["segment"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = format!("/v1/segments/rfm/{seg}/customers");
    assert_eq!(
        customers_in(&list_as(h, &uri, "admin-ma", &[Role::Administrator]).await),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(customers_in(&list_as(h, &uri, "am-li", &am).await), [1]);

    // a filter naming a hidden customer finds nothing, as for an unknown one
    for uri in ["/v1/opportunities", "/v1/alerts", "/v1/churn"] {
        let items = list_as(h, &format!("{uri}?customer={c2}"), "am-li", &am).await;
        assert!(items.is_empty(), "{uri}?customer=<hidden>");
        let items = list_as(h, &format!("{uri}?customer={c1}"), "am-li", &am).await;
        assert_eq!(customers_in(&items), [1], "{uri}?customer=<own>");
    }

    // single resources of a hidden customer: 404, exactly as an unknown customer
    assert_hidden(h, &format!("/v1/customers/{c2}"), c2, "am-li", &am).await;
    assert_hidden(h, &format!("/v1/customers/{c2}/timeline"), c2, "am-li", &am).await;
    assert_hidden(
        h,
        &format!("/v1/customers/{c2}/timeline?limit=5"),
        c2,
        "am-li",
        &am,
    )
    .await;
    assert_eq!(
        h.get_as(&format!("/v1/customers/{c1}"), "am-li", &am)
            .await
            .status,
        200
    );
    let timeline = list_as(h, &format!("/v1/customers/{c1}/timeline"), "am-li", &am).await;
    assert!(!timeline.is_empty());

    // aggregates over their customers only: segment sizes, the pipeline
    let sizes = list_as(h, "/v1/segments/rfm", "am-li", &am).await;
    let total: i64 = sizes.iter().map(|s| s["customers"].as_i64().unwrap()).sum();
    assert_eq!(total, 1);
    let all_sizes = h.json("/v1/segments/rfm").await;
    let total: i64 = all_sizes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["customers"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 5);

    let pipeline = h
        .get_as("/v1/pipeline?as_of=2025-02-15T00:00:00Z", "am-li", &am)
        .await;
    assert_eq!(pipeline.status, 200);
    let p = pipeline.json();
    assert_eq!(p["summary"]["open_count"], 1, "{p}");
    assert_eq!(p["summary"]["won_count"], 0);
    assert_eq!(p["summary"]["lost_count"], 0);
    assert_eq!(p["open_alerts"], 1);
    let forecast: i64 = p["forecast"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["amount"].as_i64().unwrap())
        .sum();
    assert_eq!(forecast, 100_000, "only customer 1's deal");
    let all = h.json("/v1/pipeline?as_of=2025-02-15T00:00:00Z").await;
    assert_eq!(all["summary"]["open_count"], 3);
    assert_eq!(all["summary"]["won_count"], 1);
    assert_eq!(all["summary"]["lost_count"], 1);
    assert_eq!(all["open_alerts"], 3);

    // reports are company-wide: the same for everyone allowed
    let director = h
        .get_as(
            "/v1/reports/composition",
            "dir-qian",
            &[Role::SalesDirector],
        )
        .await;
    assert_eq!(director.json(), h.json("/v1/reports/composition").await);

    // and the audit trail is not theirs to read at all
    assert_forbidden(
        &h.get_as(&format!("/v1/audit/events/{}", s.event_c1), "am-li", &am)
            .await,
        "audit.read",
        "audit event as account manager",
    );
}

#[tokio::test]
async fn a_director_sees_their_team_members_customers_and_no_others() {
    let mut s = scenario().await;
    let h = &s.h;
    let dir = [Role::SalesDirector];

    // the read model holds the teams as the domain folded them
    let teams = h.reads.teams().await.unwrap();
    assert_eq!(teams.len(), s.org.state.teams.len());

    let expected: BTreeMap<&str, Vec<u128>> = [
        ("dir-zhou", vec![1, 2, 4]), // am-li, am-wang, himself; am-sun left the team
        ("dir-qian", vec![3]),       // am-zhao
        ("dir-nobody", vec![]),      // directs no team, owns nothing
    ]
    .into();
    // customers 2 and 3 closed their deals before any alert: only 1, 4 and 5 have one
    let alerted = [1, 4, 5];
    for (director, seen) in &expected {
        for uri in [
            "/v1/customers",
            "/v1/opportunities",
            "/v1/churn",
            "/v1/alerts",
        ] {
            let items = list_as(h, uri, director, &dir).await;
            let want: Vec<u128> = seen
                .iter()
                .copied()
                .filter(|n| uri != "/v1/alerts" || alerted.contains(n))
                .collect();
            assert_eq!(customers_in(&items), want, "{uri} as {director}");
        }
        for (n, _) in OWNERS {
            let c = cid(n).as_uuid();
            let uri = format!("/v1/customers/{c}");
            if seen.contains(&n) {
                assert_eq!(h.get_as(&uri, director, &dir).await.status, 200, "{uri}");
                let timeline = h.get_as(&format!("{uri}/timeline"), director, &dir).await;
                assert_eq!(timeline.status, 200);
            } else {
                assert_hidden(h, &uri, c, director, &dir).await;
                assert_hidden(h, &format!("{uri}/timeline"), c, director, &dir).await;
            }
        }
    }
    let p = h.get_as("/v1/pipeline", "dir-zhou", &dir).await.json();
    // customers 1 and 4 open, 2 won
    assert_eq!(p["summary"]["open_count"], 2, "{p}");
    assert_eq!(p["summary"]["won_count"], 1);
    assert_eq!(p["summary"]["lost_count"], 0);
    assert_eq!(p["summary"]["win_rate"], 1.0);
    let funnel_open: i64 = p["funnel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["open_count"].as_i64().unwrap())
        .sum();
    assert_eq!(funnel_open, 2);

    // a director who is also an account manager: the wider reach wins
    let both = list_as(
        h,
        "/v1/customers",
        "dir-qian",
        &[Role::SalesDirector, Role::AccountManager],
    )
    .await;
    assert_eq!(customers_in(&both), [3]);

    // team changes are data: am-sun rejoins, dir-zhou sees customer 5 at the next request;
    // am-wang leaves, and customer 2 is gone from his view
    s.org.exec(
        day(50),
        "dir-zhou",
        AddTeamMember {
            team_id: team(1),
            member: UserId::new("am-sun"),
        }
        .into(),
    );
    s.org.exec(
        day(50),
        "dir-zhou",
        RemoveTeamMember {
            team_id: team(1),
            member: UserId::new("am-wang"),
        }
        .into(),
    );
    let new = s.org.stream();
    let new = &new[new.len() - 2..];
    s.h.apply(new).await;
    let h = &s.h;
    let items = list_as(h, "/v1/customers", "dir-zhou", &dir).await;
    assert_eq!(customers_in(&items), [1, 4, 5]);
    let c2 = cid(2).as_uuid();
    assert_hidden(h, &format!("/v1/customers/{c2}"), c2, "dir-zhou", &dir).await;

    // an administrator and an executive see all five; the auditor reads the audit trail,
    // organisation changes included, with who made them
    for (who, role) in [
        ("admin-ma", Role::Administrator),
        ("ceo-wu", Role::Executive),
    ] {
        let items = list_as(h, "/v1/customers", who, &[role]).await;
        assert_eq!(customers_in(&items), [1, 2, 3, 4, 5], "{who}");
    }
    let org_events = list_as(
        h,
        &format!("/v1/audit?customer={}", Uuid::nil()),
        "audit-he",
        &[Role::Auditor],
    )
    .await;
    assert_eq!(org_events.len(), s.org.log.len());
    assert!(org_events
        .iter()
        .any(|e| e["actor"] == "dir-zhou"
            && e["event_type"] == "crm.organisation.team_member_added.v1"));
    let added = list_as(
        h,
        "/v1/audit?type=crm.organisation.team_member_added.v1",
        "audit-he",
        &[Role::Auditor],
    )
    .await;
    assert_eq!(added.len(), 5, "four members at set-up, am-sun again");
    let all = list_as(h, "/v1/audit?limit=1000", "audit-he", &[Role::Auditor]).await;
    assert_eq!(all.len(), s.world.log.len() + s.org.log.len());
    let one = h
        .get_as(
            &format!("/v1/audit/events/{}", s.event_c2),
            "audit-he",
            &[Role::Auditor],
        )
        .await;
    assert_eq!(one.status, 200);
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
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

fn claims(iss: &str, aud: &str, exp: i64) -> Value {
    json!({"sub": "admin-ma", "roles": ["administrator"], "iss": iss, "aud": aud, "exp": exp, "iat": now() - 10})
}

#[tokio::test]
async fn bad_credentials_are_401_and_good_ones_pass() {
    let s = scenario().await;
    let h = &s.h;
    let good = claims(ISSUER, AUDIENCE, now() + 600);
    // the valid ones, HS256 and RS256, and an API key
    for token in [hs256(&good, SECRET), rs256(&good, "rs256-test-private.pem")] {
        let a = h
            .get_raw(
                "/v1/customers",
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    }
    assert_eq!(
        h.get_raw("/v1/audit", &[("x-api-key", AUDITOR_KEY)])
            .await
            .status,
        200
    );

    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut no_sub = good.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no credentials", vec![]),
        (
            "expired (beyond the leeway)",
            vec![(
                "authorization",
                format!(
                    "Bearer {}",
                    hs256(&claims(ISSUER, AUDIENCE, now() - 120), SECRET)
                ),
            )],
        ),
        (
            "forged: signed with another secret",
            vec![(
                "authorization",
                format!(
                    "Bearer {}",
                    hs256(&good, "another-secret-of-at-least-32-bytes!!")
                ),
            )],
        ),
        (
            "forged: signed with another RSA key",
            vec![(
                "authorization",
                format!("Bearer {}", rs256(&good, "rs256-other-private.pem")),
            )],
        ),
        (
            "forged: payload changed after signing",
            vec![("authorization", {
                let t = hs256(&good, SECRET);
                let other = hs256(
                    &json!({"sub": "admin-ma", "roles": ["administrator", "auditor"], "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600}),
                    SECRET,
                );
                let parts: Vec<&str> = t.split('.').collect();
                let other_parts: Vec<&str> = other.split('.').collect();
                format!("Bearer {}.{}.{}", parts[0], other_parts[1], parts[2])
            })],
        ),
        (
            "wrong issuer",
            vec![(
                "authorization",
                format!(
                    "Bearer {}",
                    hs256(
                        &claims("https://evil.example.com", AUDIENCE, now() + 600),
                        SECRET
                    )
                ),
            )],
        ),
        (
            "wrong audience",
            vec![(
                "authorization",
                format!(
                    "Bearer {}",
                    hs256(&claims(ISSUER, "another-app", now() + 600), SECRET)
                ),
            )],
        ),
        (
            "no exp",
            vec![(
                "authorization",
                format!("Bearer {}", hs256(&no_exp, SECRET)),
            )],
        ),
        (
            "no sub",
            vec![(
                "authorization",
                format!("Bearer {}", hs256(&no_sub, SECRET)),
            )],
        ),
        (
            "not a JWT",
            vec![("authorization", "Bearer not-a-token".to_owned())],
        ),
        (
            "another scheme",
            vec![("authorization", "Basic YWRtaW46YWRtaW4=".to_owned())],
        ),
        (
            "unknown API key",
            vec![("x-api-key", "guessed-key-0123456789abcdef".to_owned())],
        ),
        (
            "an actor header is no credential",
            vec![("x-actor", "admin-ma".to_owned())],
        ),
    ];
    for route in routes() {
        let uri = sample_uri(route, &s);
        for (what, headers) in &cases {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let a = h.get_raw(&uri, &headers).await;
            assert_eq!(
                a.status,
                401,
                "{uri}, {what}: {}",
                String::from_utf8_lossy(&a.body)
            );
            assert_eq!(
                a.header("content-type").as_deref(),
                Some("application/problem+json"),
                "{uri}, {what}"
            );
            assert!(
                a.header("www-authenticate").unwrap().starts_with("Bearer"),
                "{uri}, {what}"
            );
            assert_eq!(a.json()["status"], 401);
        }
    }
    // the open paths need nothing
    for uri in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(h.get_raw(uri, &[]).await.status, 200, "{uri}");
    }
    // and a 401 is counted per route like any answer
    let m = String::from_utf8(h.get_raw("/metrics", &[]).await.body).unwrap();
    assert!(m.contains(r#"route="/v1/customers",status="401""#), "{m}");
}
