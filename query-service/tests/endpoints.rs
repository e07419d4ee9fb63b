//! Every endpoint against expectations computed here: from the domain states and the event log
//! the read models were filled from (by the real projector), or, for aggregates, from the
//! projection-service's own typed reads. Every list's CSV parses and equals its JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::TimeDelta;
use common::*;
use domain::policy::rfm::RfmWindow;
use domain::policy::StageThresholds;
use domain::state::{ChurnStatus, OpportunityStatus};
use domain::*;
use serde_json::Value;
use uuid::Uuid;

struct Scenario {
    h: Harness,
    world: World,
    /// The chain: an order, a churn warning caused by it, a measure caused by the warning.
    chain: [Uuid; 3],
}

async fn scenario() -> Scenario {
    use CustomerLevel::*;
    let h = Harness::new(Duration::from_millis(500)).await;
    let mut w = World::new(3);
    let customers = [
        (1, Key, "Acme Trading", "华东", "am-li"),
        (2, Ordinary, "Beta Works", "华北", "am-li"),
        (3, Large, "Gamma 100%_Co", "华东", "am-wang"),
        // a name a spreadsheet would run as a formula: CSV exports must neutralise it
        (
            4,
            StrategicPartner,
            "=HYPERLINK(\"http://x\",\"Delta\")",
            "华南",
            "am-wang",
        ),
        (5, Ordinary, "epsilon", "华东", "am-zhao"),
        (6, Ordinary, "Zeta", "华北", "am-zhao"),
        (7, Large, "Eta", "华南", "am-li"),
        (8, Large, "Theta", "华东", "am-li"),
    ];
    for (n, level, name, region, owner) in customers {
        w.exec(
            cid(n),
            day(n as i64),
            owner,
            register(level, name, region, 3, 4, owner),
        );
    }
    w.exec(cid(1), day(9), "am-li", contact(401, "张三"));
    w.exec(cid(1), day(9), "am-li", contact(402, "Bob Smith"));
    w.exec(cid(4), day(9), "am-wang", contact(403, "Alice Acme"));

    w.exec(
        cid(1),
        day(13),
        "am-li",
        touch(501, email("offer"), "sent the offer"),
    );
    w.exec(
        cid(1),
        day(16),
        "cc-agent",
        touch(502, call(300), "asked about delivery"),
    );
    w.exec(
        cid(1),
        day(20),
        "am-li",
        touch(
            503,
            Channel::Wechat {
                direction: Direction::Inbound,
            },
            "price, again",
        ),
    );
    // a late email: happened on day 14, recorded on day 30
    w.exec_recorded(
        cid(1),
        day(14),
        day(30),
        "mail-sync",
        touch(504, email("re: offer"), "reply"),
    );
    w.exec(
        cid(3),
        day(15),
        "cc-agent",
        touch(505, call(60), "first call"),
    );

    w.exec(
        cid(1),
        day(10),
        "dir-zhou",
        open_opp(101, 300_000, 20, date(2025, 3, 31)),
    );
    w.exec(cid(1), day(11), "dir-zhou", assign_opp(101, "am-li"));
    w.exec(
        cid(1),
        day(15),
        "am-li",
        stage(101, Stage::Proposal, None, None),
    );
    w.exec(
        cid(1),
        day(30),
        "am-li",
        stage(101, Stage::Evaluation, None, None),
    );
    w.exec(
        cid(1),
        day(40),
        "am-li",
        stage(101, Stage::Negotiation, None, None),
    );
    w.exec(cid(1), day(55), "am-li", win(101, None));
    w.exec(
        cid(2),
        day(12),
        "dir-zhou",
        open_opp(102, 80_000, 10, date(2025, 4, 30)),
    );
    w.exec(
        cid(2),
        day(20),
        "am-li",
        stage(102, Stage::Proposal, None, None),
    );
    w.exec(cid(2), day(33), "am-li", lose(102, "no budget"));
    w.exec(
        cid(3),
        day(14),
        "dir-zhou",
        open_opp(103, 150_000, 30, date(2025, 5, 31)),
    );
    w.exec(cid(3), day(14), "dir-zhou", assign_opp(103, "am-wang"));
    w.exec(
        cid(4),
        day(16),
        "dir-zhou",
        open_opp(104, 1_000_000, 50, date(2025, 6, 30)),
    );
    w.exec(
        cid(4),
        day(18),
        "am-wang",
        stage(104, Stage::Proposal, None, None),
    );
    w.exec(
        cid(5),
        day(20),
        "dir-zhou",
        open_opp(105, 40_000, 60, date(2025, 3, 15)),
    );

    w.exec(cid(1), day(50), "erp", order("A-1", 100_000));
    w.exec(cid(1), day(120), "erp", order("A-2", 50_000));
    w.exec(cid(4), day(100), "erp", order("D-1", 500_000));
    w.exec(cid(3), day(60), "erp", order("C-1", 60_000));
    w.exec(cid(6), day(30), "erp", order("F-1", 20_000));
    let order_e = w.exec(cid(5), day(31), "erp", order("E-1", 15_000));

    let sr = |n: u128| ServiceRequestId(id(n));
    w.exec(
        cid(2),
        day(26),
        "cs-chen",
        Command::CreateServiceRequest(CreateServiceRequest {
            service_request_id: sr(201),
            kind: ServiceKind::Consultation,
            summary: "how to install".into(),
            request: "manual missing".into(),
            contact_id: None,
        }),
    );
    w.exec(
        cid(3),
        day(41),
        "cs-chen",
        Command::CreateServiceRequest(CreateServiceRequest {
            service_request_id: sr(202),
            kind: ServiceKind::Complaint,
            summary: "late delivery".into(),
            request: "two weeks late".into(),
            contact_id: None,
        }),
    );

    // churn: customer 5 warned (caused by its order event), measures, confirmed lost;
    // customer 6 warned and reactivated
    let warning = w.exec_caused_by(
        cid(5),
        day(230),
        "churn-rule",
        Command::RaiseChurnWarning(RaiseChurnWarning {
            churn_case_id: ChurnCaseId(id(601)),
            reason: "no order for 180 days".into(),
            last_order_at: Some(day(31)),
        }),
        order_e[0].metadata.id,
    );
    let measure = w.exec_caused_by(
        cid(5),
        day(235),
        "am-zhao",
        Command::RecordDelayMeasure(RecordDelayMeasure {
            measure: "called the buyer, \"soon\"".into(),
        }),
        warning[0].metadata.id,
    );
    w.exec(
        cid(5),
        day(250),
        "am-zhao",
        Command::ConfirmChurn(ConfirmChurn {
            reason: "moved to a competitor".into(),
        }),
    );
    w.exec(
        cid(6),
        day(200),
        "churn-rule",
        Command::RaiseChurnWarning(RaiseChurnWarning {
            churn_case_id: ChurnCaseId(id(602)),
            reason: "no order for 180 days".into(),
            last_order_at: None,
        }),
    );
    w.exec(
        cid(6),
        day(301),
        "am-zhao",
        Command::ReactivateCustomer(ReactivateCustomer {
            reason: "ordered again".into(),
        }),
    );

    h.apply(&w.log).await;
    let thresholds = StageThresholds::default();
    h.projector
        .sweep_alerts(day(100), &thresholds)
        .await
        .unwrap();
    let before = w.log.len();
    w.exec(
        cid(4),
        day(101),
        "am-wang",
        stage(104, Stage::Evaluation, None, None),
    );
    h.apply(&w.log[before..]).await;
    h.projector
        .sweep_alerts(day(200), &thresholds)
        .await
        .unwrap();
    h.projector
        .recompute_rfm(day(130), RfmWindow::default())
        .await
        .unwrap();
    Scenario {
        h,
        world: w,
        chain: [
            order_e[0].metadata.id,
            warning[0].metadata.id,
            measure[0].metadata.id,
        ],
    }
}

fn state_name(s: &CustomerState) -> String {
    s.profile.as_ref().unwrap().name.clone()
}

/// Customers matching a predicate, in the API's default order (name, then id).
fn expected_customers(world: &World, keep: impl Fn(&CustomerState) -> bool) -> Vec<String> {
    let mut v: Vec<(String, String)> = world
        .states
        .values()
        .filter(|s| keep(s))
        .map(|s| (state_name(s), s.customer_id.as_uuid().to_string()))
        .collect();
    v.sort();
    v.into_iter().map(|(_, id)| id).collect()
}

#[tokio::test]
async fn customers_list_filters_search_sort_and_csv() {
    let Scenario { h, world, .. } = scenario().await;
    // PostgreSQL sorts text by the database collation; compare with its order of the names
    let all = h.all_pages("/v1/customers", 3).await;
    assert_eq!(all.len(), 8);
    let names: Vec<String> = all
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    let (sorted,): (Vec<String>,) =
        sqlx::query_as("SELECT array_agg(n ORDER BY n) FROM unnest($1::text[]) n")
            .bind(&names)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(names, sorted);

    let as_set = |items: &[Value]| {
        ids(items, "customer_id")
            .into_iter()
            .collect::<BTreeSet<_>>()
    };
    let expect_set = |keep: &dyn Fn(&CustomerState) -> bool| {
        expected_customers(&world, keep)
            .into_iter()
            .collect::<BTreeSet<_>>()
    };

    let owner = |s: &CustomerState| s.owner.as_ref().unwrap().as_str().to_owned();
    let got = h.all_pages("/v1/customers?owner=am-li", 2).await;
    assert_eq!(as_set(&got), expect_set(&|s| owner(s) == "am-li"));
    let got = h.all_pages("/v1/customers?owner=am-wang,am-zhao", 2).await;
    assert_eq!(as_set(&got), expect_set(&|s| owner(s) != "am-li"));
    let got = h
        .all_pages("/v1/customers?level=large&region=%E5%8D%8E%E4%B8%9C", 2)
        .await;
    assert_eq!(
        as_set(&got),
        expect_set(&|s| {
            let p = s.profile.as_ref().unwrap();
            p.level == CustomerLevel::Large && p.region == "华东"
        })
    );
    let got = h
        .all_pages("/v1/customers?churn_status=lost&churn_status=at_risk", 2)
        .await;
    assert_eq!(
        as_set(&got),
        expect_set(&|s| matches!(s.churn, ChurnStatus::Lost(_) | ChurnStatus::AtRisk(_)))
    );
    // text search: customer names and contact names, case-insensitive; % and _ are literal
    let search = |q: &str| {
        let q = q.to_lowercase();
        move |s: &CustomerState| {
            state_name(s).to_lowercase().contains(&q)
                || s.contacts
                    .values()
                    .any(|c| c.name.to_lowercase().contains(&q))
        }
    };
    for q in ["acme", "ETA", "张", "100%_", "%", "smith"] {
        let uri = format!("/v1/customers?q={}", urlencode(q));
        let got = h.all_pages(&uri, 2).await;
        assert_eq!(as_set(&got), expect_set(&search(q)), "q={q}");
    }
    assert_eq!(h.all_pages("/v1/customers?q=acme", 5).await.len(), 2);

    // RFM segment filter, against the projection's scores
    let rfm: BTreeMap<Uuid, String> = h
        .reads
        .rfm()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.customer_id, r.segment))
        .collect();
    let segment_of = |id: &str| {
        rfm.get(&id.parse::<Uuid>().unwrap())
            .cloned()
            .unwrap_or("no_purchases".into())
    };
    for item in &all {
        assert_eq!(
            item["segment"],
            segment_of(item["customer_id"].as_str().unwrap())
        );
    }
    let got = h.all_pages("/v1/customers?segment=no_purchases", 2).await;
    assert_eq!(got.len(), 3, "customers 2, 7, 8 never ordered");
    let seg = h
        .all_pages("/v1/segments/rfm/no_purchases/customers?sort=-name", 2)
        .await;
    let mut reversed = ids(&got, "customer_id");
    reversed.reverse();
    assert_eq!(ids(&seg, "customer_id"), reversed);

    // sorts, both directions, with small pages: the same order as sorting the full list here
    for (sort, key) in [
        ("order_total", "order_total"),
        ("registered_at", "registered_at"),
        ("last_event_at", "last_event_at"),
    ] {
        for desc in [false, true] {
            let param = if desc {
                format!("-{sort}")
            } else {
                sort.to_owned()
            };
            let got = h.all_pages(&format!("/v1/customers?sort={param}"), 3).await;
            let mut expected = all.clone();
            expected.sort_by(|a, b| {
                let ka = (
                    a[key].to_string(),
                    a["customer_id"].as_str().unwrap().to_owned(),
                );
                let kb = (
                    b[key].to_string(),
                    b["customer_id"].as_str().unwrap().to_owned(),
                );
                if key == "order_total" {
                    let (x, y) = (a[key].as_i64().unwrap(), b[key].as_i64().unwrap());
                    (x, &ka.1).cmp(&(y, &kb.1))
                } else {
                    ka.cmp(&kb)
                }
            });
            if desc {
                expected.reverse();
            }
            assert_eq!(
                ids(&got, "customer_id"),
                ids(&expected, "customer_id"),
                "sort={param}"
            );
        }
    }
    // order totals from the orders placed
    let c1 = all.iter().find(|c| c["name"] == "Acme Trading").unwrap();
    assert_eq!(
        (c1["order_count"].as_i64(), c1["order_total"].as_i64()),
        (Some(2), Some(150_000))
    );

    // CSV of whole lists equals the JSON
    h.assert_csv_matches_json("/v1/customers", &all).await;
    h.assert_csv_matches_json(
        "/v1/customers?owner=am-li&sort=-order_total",
        &h.all_pages("/v1/customers?owner=am-li&sort=-order_total", 100)
            .await,
    )
    .await;
    h.assert_csv_matches_json("/v1/segments/rfm/no_purchases/customers", &got)
        .await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn customer_360_timeline_and_etags() {
    let Scenario { h, world, .. } = scenario().await;
    let c1 = cid(1).as_uuid();
    let a = h.get(&format!("/v1/customers/{c1}")).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    let state = &world.states[&cid(1)];
    assert_eq!(v["name"], "Acme Trading");
    assert_eq!(v["owner"], "am-li");
    assert_eq!(v["level"], "key");
    assert_eq!(v["last_sequence"], state.version);
    let contacts: Vec<&str> = v["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(contacts, ["张三", "Bob Smith"]);
    let channels: BTreeMap<String, i64> = v["touchpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["channel"].as_str().unwrap().to_owned(),
                t["touchpoints"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        channels,
        BTreeMap::from([
            ("email".into(), 2),
            ("phone_call".into(), 1),
            ("wechat".into(), 1)
        ])
    );
    let open: usize = state
        .opportunities
        .values()
        .filter(|o| o.status == OpportunityStatus::Open)
        .count();
    assert_eq!(v["open_opportunities"].as_array().unwrap().len(), open);
    assert_eq!(v["order_total"], 150_000);

    // ETag: 304 when unchanged, 200 with a new tag after a change
    let etag = a.header("etag").unwrap();
    let again = h
        .get_with(&format!("/v1/customers/{c1}"), &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag").unwrap(), etag);
    let mut w = world;
    let before = w.log.len();
    w.exec(cid(1), day(140), "am-li", touch(599, call(10), "hello"));
    h.apply(&w.log[before..]).await;
    let changed = h
        .get_with(&format!("/v1/customers/{c1}"), &[("if-none-match", &etag)])
        .await;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.header("etag").unwrap(), etag);
    h.get(&format!("/v1/customers/{}", Uuid::now_v7()))
        .await
        .assert_problem(404, "customer_id");
    h.get_with(&format!("/v1/customers/{c1}"), &[("accept", "text/csv")])
        .await
        .assert_problem(406, "Accept");

    // timeline: business-time order (the late email in its place), filters, cursor, CSV
    let mut expected: Vec<(chrono::DateTime<chrono::Utc>, u64, RecordedEvent)> = w
        .log
        .iter()
        .filter(|(_, e)| e.metadata.customer_id == cid(1))
        .map(|(_, e)| (e.metadata.occurred_at, e.metadata.sequence, e.clone()))
        .collect();
    expected.sort_by_key(|(at, seq, _)| (*at, *seq));
    let uri = format!("/v1/customers/{c1}/timeline");
    let got = h.all_pages(&uri, 4).await;
    let got_ids: Vec<String> = ids(&got, "event_id");
    let want: Vec<String> = expected
        .iter()
        .map(|(_, _, e)| e.metadata.id.to_string())
        .collect();
    assert_eq!(got_ids, want);
    let desc = h.all_pages(&format!("{uri}?sort=-occurred_at"), 5).await;
    let mut rev = want.clone();
    rev.reverse();
    assert_eq!(ids(&desc, "event_id"), rev);
    let emails = h.all_pages(&format!("{uri}?channel=email"), 1).await;
    let want_emails: Vec<String> = expected
        .iter()
        .filter(|(_, _, e)| matches!(&e.event, CustomerEvent::TouchpointRecorded(t) if t.touchpoint.channel.name() == "email"))
        .map(|(_, _, e)| e.metadata.id.to_string())
        .collect();
    assert_eq!(ids(&emails, "event_id"), want_emails);
    assert_eq!(want_emails.len(), 2);
    let stage_changes = h
        .all_pages(&format!("{uri}?type=crm.opportunity.stage_changed.v1,crm.opportunity.won.v1&from=2025-01-21&to=2025-03-10"), 2)
        .await;
    let want_stage: Vec<String> = expected
        .iter()
        .filter(|(at, _, e)| {
            matches!(
                e.event.event_type(),
                "crm.opportunity.stage_changed.v1" | "crm.opportunity.won.v1"
            ) && *at >= date(2025, 1, 21).and_hms_opt(0, 0, 0).unwrap().and_utc()
                && *at < date(2025, 3, 10).and_hms_opt(0, 0, 0).unwrap().and_utc()
        })
        .map(|(_, _, e)| e.metadata.id.to_string())
        .collect();
    assert_eq!(ids(&stage_changes, "event_id"), want_stage);
    assert_eq!(
        want_stage.len(),
        4,
        "proposal (day 15, Jan 21 09:00), evaluation, negotiation, won (day 55)"
    );
    h.assert_csv_matches_json(&uri, &got).await;
    h.get(&format!("/v1/customers/{}/timeline", Uuid::now_v7()))
        .await
        .assert_problem(404, "customer_id");
}

#[tokio::test]
async fn opportunities_pipeline_and_alerts() {
    let Scenario { h, world, .. } = scenario().await;
    let all = h.all_pages("/v1/opportunities", 2).await;
    let reads = h.reads.opportunities().await.unwrap();
    // default order: expected close, then id
    let mut want = reads.clone();
    want.sort_by_key(|o| (o.expected_close, o.opportunity_id));
    assert_eq!(
        ids(&all, "opportunity_id"),
        want.iter()
            .map(|o| o.opportunity_id.to_string())
            .collect::<Vec<_>>()
    );
    // status and stage as the domain states say
    let mut states = BTreeMap::new();
    for s in world.states.values() {
        for (oid, o) in &s.opportunities {
            states.insert(
                oid.0.to_string(),
                (
                    o.status.as_str(),
                    o.stage.as_str(),
                    o.owner.as_ref().map(|u| u.as_str().to_owned()),
                ),
            );
        }
    }
    for o in &all {
        let (status, stage, owner) = &states[o["opportunity_id"].as_str().unwrap()];
        assert_eq!(o["status"], *status);
        assert_eq!(o["stage"], *stage);
        assert_eq!(o["owner"].as_str().map(str::to_owned), *owner);
    }
    let open = h.all_pages("/v1/opportunities?status=open", 10).await;
    assert_eq!(
        open.len(),
        states.values().filter(|(s, _, _)| *s == "open").count()
    );
    let q = h
        .all_pages("/v1/opportunities?stage=qualification&status=open", 10)
        .await;
    assert_eq!(
        ids(&q, "opportunity_id")
            .into_iter()
            .collect::<BTreeSet<_>>(),
        states
            .iter()
            .filter(|(_, (s, st, _))| *s == "open" && *st == "qualification")
            .map(|(k, _)| k.clone())
            .collect()
    );
    let owned = h.all_pages("/v1/opportunities?owner=am-wang", 10).await;
    assert_eq!(ids(&owned, "opportunity_id"), vec![id(103).to_string()]);
    let range = h.all_pages("/v1/opportunities?expected_close_from=2025-03-31&expected_close_to=2025-05-31&sort=-amount", 10).await;
    let mut want: Vec<_> = reads
        .iter()
        .filter(|o| o.expected_close >= date(2025, 3, 31) && o.expected_close <= date(2025, 5, 31))
        .collect();
    want.sort_by_key(|o| {
        (
            std::cmp::Reverse(o.amount),
            std::cmp::Reverse(o.opportunity_id),
        )
    });
    assert_eq!(
        ids(&range, "opportunity_id"),
        want.iter()
            .map(|o| o.opportunity_id.to_string())
            .collect::<Vec<_>>()
    );
    let by_customer = h
        .all_pages(
            &format!("/v1/opportunities?customer={}", cid(2).as_uuid()),
            10,
        )
        .await;
    assert_eq!(
        ids(&by_customer, "opportunity_id"),
        vec![id(102).to_string()]
    );
    h.assert_csv_matches_json("/v1/opportunities", &all).await;

    // pipeline: the projection's funnel, summary and forecast
    let p = h
        .json(&format!("/v1/pipeline?as_of={}", ts(day(200))))
        .await;
    let funnel = h.reads.funnel().await.unwrap();
    let got_funnel = p["funnel"].as_array().unwrap();
    assert_eq!(got_funnel.len(), funnel.len());
    for (g, f) in got_funnel.iter().zip(&funnel) {
        assert_eq!(g["stage"], f.stage.as_str());
        assert_eq!(g["open_count"], f.open_count);
        assert_eq!(g["reached_count"], f.reached_count);
        assert_eq!(g["conversion_to_next"].as_f64(), f.conversion_to_next);
    }
    let summary = h.reads.pipeline_summary().await.unwrap();
    assert_eq!(p["summary"]["won_count"], 1);
    assert_eq!(p["summary"]["lost_count"], 1);
    assert_eq!(p["summary"]["win_rate"].as_f64(), Some(0.5));
    assert_eq!(
        p["summary"]["avg_sales_cycle_days"].as_f64(),
        summary.avg_sales_cycle_days
    );
    assert_eq!(
        p["summary"]["avg_sales_cycle_days"].as_f64(),
        Some(45.0),
        "opened day 10, won day 55"
    );
    assert_eq!(
        p["forecast"].as_array().unwrap().len(),
        h.reads.weighted_forecast().await.unwrap().len()
    );
    let tis = p["time_in_stage"].as_array().unwrap();
    assert_eq!(tis.len(), 4);
    // qualification: 101 (5 days), 102 (8), 103 (day 14 → 200: 186), 104 (2), 105 (day 20 → 200: 180)
    let q = &tis[0];
    assert_eq!(q["stage"], "qualification");
    assert_eq!(q["opportunities"], 5);
    assert_eq!(q["max_days"].as_f64(), Some(186.0));
    assert_eq!(p["open_alerts"], 3);
    let etag = h
        .get(&format!("/v1/pipeline?as_of={}", ts(day(200))))
        .await
        .header("etag")
        .unwrap();
    let same = h
        .get_with(
            &format!("/v1/pipeline?as_of={}", ts(day(200))),
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(same.status, 304);

    // alerts: opened by the sweeps of day 100 and 200, one closed by a stage change
    let alerts = h.all_pages("/v1/alerts", 2).await;
    let stored = h.projector.all_alerts().await.unwrap();
    assert_eq!(
        ids(&alerts, "alert_id"),
        stored
            .iter()
            .map(|a| a.alert_id.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        alerts.len(),
        4,
        "103, 104 (proposal), 105 on day 100; 104 (evaluation) on day 200"
    );
    let open = h.all_pages("/v1/alerts?status=open", 2).await;
    assert_eq!(open.len(), 3);
    let closed = h.all_pages("/v1/alerts?status=closed", 2).await;
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["opportunity_id"], id(104).to_string());
    assert_eq!(closed[0]["closed_by"], "stage_changed");
    // owner: the opportunity's (103 → am-wang), else the customer's (104 → am-wang, 105 → am-zhao)
    let wang = h.all_pages("/v1/alerts?owner=am-wang&status=open", 2).await;
    assert_eq!(wang.len(), 2);
    let zhao = h.all_pages("/v1/alerts?owner=am-zhao", 2).await;
    assert_eq!(ids(&zhao, "opportunity_id"), vec![id(105).to_string()]);
    h.assert_csv_matches_json("/v1/alerts", &alerts).await;
}

#[tokio::test]
async fn segments_churn_and_reports() {
    let Scenario { h, .. } = scenario().await;
    let seg = h.json("/v1/segments/rfm").await;
    let sizes = h.reads.segment_sizes().await.unwrap();
    let got: Vec<(String, i64)> = seg["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["segment"].as_str().unwrap().to_owned(),
                s["customers"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        sizes
            .iter()
            .map(|s| (s.segment.clone(), s.customers))
            .collect::<Vec<_>>()
    );
    assert_eq!(got.iter().map(|(_, n)| n).sum::<i64>(), 8);
    assert_eq!(
        seg["rfm_run"]["scored"], 5,
        "customers 1, 3, 4, 5 and 6 have orders in the 365 days to day 130"
    );
    h.assert_csv_matches_json("/v1/segments/rfm", seg["items"].as_array().unwrap())
        .await;

    let churn = h.all_pages("/v1/churn", 1).await;
    let cases = h.reads.churn_cases().await.unwrap();
    assert_eq!(churn.len(), 2);
    let lost = h.all_pages("/v1/churn?status=lost", 5).await;
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0]["customer_id"], cid(5).as_uuid().to_string());
    assert_eq!(lost[0]["owner"], "am-zhao");
    let case = cases.iter().find(|c| c.status == "lost").unwrap();
    assert_eq!(lost[0]["measures"], serde_json::json!(case.measures));
    assert_eq!(
        lost[0]["measures"],
        serde_json::json!(["called the buyer, \"soon\""])
    );
    let react = h.all_pages("/v1/churn?status=reactivated", 5).await;
    assert_eq!(
        ids(&react, "customer_id"),
        vec![cid(6).as_uuid().to_string()]
    );
    h.assert_csv_matches_json("/v1/churn", &churn).await;

    let (from, to) = (day(0), day(110));
    let q = format!("from={}&to={}", ts(from), ts(to));
    let contribution = h.json(&format!("/v1/reports/contribution?{q}")).await;
    let want = h.reads.contribution_report(from, to).await.unwrap();
    let got: Vec<(String, i64, i64)> = contribution["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["customer_id"].as_str().unwrap().to_owned(),
                r["orders"].as_i64().unwrap(),
                r["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        want.iter()
            .map(|c| (c.customer_id.to_string(), c.orders, c.amount))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        got[0],
        (cid(4).as_uuid().to_string(), 1, 500_000),
        "largest first; A-2 (day 120) is outside"
    );
    h.assert_csv_matches_json(
        &format!("/v1/reports/contribution?{q}"),
        contribution["items"].as_array().unwrap(),
    )
    .await;

    let composition = h.json("/v1/reports/composition").await;
    let want = h.reads.composition_report().await.unwrap();
    let got: Vec<(String, String, i64)> = composition["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dimension"].as_str().unwrap().to_owned(),
                r["value"].as_str().unwrap().to_owned(),
                r["customers"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        want.iter()
            .map(|c| (c.dimension.clone(), c.value.clone(), c.customers))
            .collect::<Vec<_>>()
    );
    h.assert_csv_matches_json(
        "/v1/reports/composition",
        composition["items"].as_array().unwrap(),
    )
    .await;

    let service = h
        .json(&format!(
            "/v1/reports/service?from={}&to={}",
            ts(day(0)),
            ts(day(30))
        ))
        .await;
    let got: Vec<(String, i64)> = service["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_owned(),
                r["requests"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("complaint".into(), 0),
            ("consultation".into(), 1),
            ("suggestion".into(), 0)
        ]
    );

    let churn_report = h
        .json(&format!(
            "/v1/reports/churn?from={}&to={}",
            ts(day(0)),
            ts(day(400))
        ))
        .await;
    let want = h.reads.churn_report(day(0), day(400)).await.unwrap();
    assert_eq!(churn_report["items"].as_array().unwrap().len(), want.len());
    assert_eq!(churn_report["items"][0]["reason"], "moved to a competitor");
    h.assert_csv_matches_json(
        &format!("/v1/reports/churn?from={}&to={}", ts(day(0)), ts(day(400))),
        churn_report["items"].as_array().unwrap(),
    )
    .await;
    h.get("/v1/reports/service?from=2025-02-01")
        .await
        .assert_problem(400, "to");
    h.get("/v1/reports/service?from=2025-02-01&to=2025-01-01")
        .await
        .assert_problem(400, "to");
    h.get("/v1/reports/composition?from=2025-02-01")
        .await
        .assert_problem(400, "from");
    h.get("/v1/reports/revenue?from=2025-01-01&to=2025-02-01")
        .await
        .assert_problem(400, "report");
}

#[tokio::test]
async fn audit_trail_and_one_change() {
    let Scenario { h, world, chain } = scenario().await;
    let all = h.all_pages("/v1/audit", 7).await;
    let mut want: Vec<_> = world.log.iter().collect();
    want.sort_by_key(|(_, e)| (e.metadata.recorded_at, e.metadata.id));
    assert_eq!(
        ids(&all, "event_id"),
        want.iter()
            .map(|(_, e)| e.metadata.id.to_string())
            .collect::<Vec<_>>()
    );
    for (item, (pos, e)) in all.iter().zip(&want) {
        assert_eq!(item["partition"], pos.partition);
        assert_eq!(item["offset"], pos.offset);
        assert_eq!(item["actor"], e.metadata.actor);
        assert_eq!(item["sequence"], e.metadata.sequence);
    }
    let check = |uri: String, keep: &dyn Fn(&RecordedEvent) -> bool| {
        let want: Vec<String> = want
            .iter()
            .filter(|(_, e)| keep(e))
            .map(|(_, e)| e.metadata.id.to_string())
            .collect();
        (uri, want)
    };
    let (from, to) = (day(20), day(60));
    for (uri, expected) in [
        check(format!("/v1/audit?customer={}", cid(1).as_uuid()), &|e| {
            e.metadata.customer_id == cid(1)
        }),
        check("/v1/audit?actor=am-li,erp".into(), &|e| {
            e.metadata.actor == "am-li" || e.metadata.actor == "erp"
        }),
        check("/v1/audit?type=crm.order.placed.v1".into(), &|e| {
            e.event.event_type() == "crm.order.placed.v1"
        }),
        check(format!("/v1/audit?from={}&to={}", ts(from), ts(to)), &|e| {
            e.metadata.recorded_at >= from && e.metadata.recorded_at < to
        }),
        check(
            format!(
                "/v1/audit?customer={}&actor=am-li&from={}",
                cid(1).as_uuid(),
                ts(from)
            ),
            &|e| {
                e.metadata.customer_id == cid(1)
                    && e.metadata.actor == "am-li"
                    && e.metadata.recorded_at >= from
            },
        ),
    ] {
        let got = h.all_pages(&uri, 3).await;
        assert_eq!(ids(&got, "event_id"), expected, "{uri}");
        assert!(!expected.is_empty(), "{uri}");
    }
    h.assert_csv_matches_json("/v1/audit", &all).await;

    // one change: its position, command, and the causation chain back to the order's command
    let [order, warning, measure] = chain;
    let a = h.get(&format!("/v1/audit/events/{measure}")).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    let (pos, rec) = world
        .log
        .iter()
        .find(|(_, e)| e.metadata.id == measure)
        .unwrap();
    assert_eq!(v["event"]["event_id"], measure.to_string());
    assert_eq!(v["position"]["topic"], pos.topic);
    assert_eq!(v["position"]["partition"], pos.partition);
    assert_eq!(v["position"]["offset"], pos.offset);
    assert_eq!(v["command"]["name"], "record_delay_measure");
    assert_eq!(v["command"]["events"].as_array().unwrap().len(), 1);
    assert_eq!(v["event"]["actor"], rec.metadata.actor);
    let links: Vec<(i64, String, bool)> = v["causation_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["depth"].as_i64().unwrap(),
                l["causation_id"].as_str().unwrap().to_owned(),
                l["event"].is_object(),
            )
        })
        .collect();
    let order_rec = &world
        .log
        .iter()
        .find(|(_, e)| e.metadata.id == order)
        .unwrap()
        .1;
    assert_eq!(
        links,
        vec![
            (1, warning.to_string(), true),
            (2, order.to_string(), true),
            (
                3,
                order_rec.metadata.causation_id.unwrap().to_string(),
                false
            ),
        ]
    );
    let w = h.json(&format!("/v1/audit/events/{warning}")).await;
    assert_eq!(w["caused"][0]["event_id"], measure.to_string());
    // a command with several events lists them all
    let confirm = world
        .log
        .iter()
        .find(|(_, e)| e.event.event_type() == "crm.opportunity.won.v1")
        .unwrap();
    let won = h
        .json(&format!("/v1/audit/events/{}", confirm.1.metadata.id))
        .await;
    assert!(!won["command"]["events"].as_array().unwrap().is_empty());
    let etag = a.header("etag").unwrap();
    assert_eq!(
        h.get_with(
            &format!("/v1/audit/events/{measure}"),
            &[("if-none-match", &format!("W/{etag}, \"x\""))]
        )
        .await
        .status,
        304
    );
    h.get(&format!("/v1/audit/events/{}", Uuid::now_v7()))
        .await
        .assert_problem(404, "event_id");
    h.get("/v1/audit/events/not-a-uuid")
        .await
        .assert_problem(400, "event_id");
    let _ = TimeDelta::zero();
}
