//! The data set: the same realistic mix as `crm demo` (crm/src/demo.rs), generated up front as
//! HTTP requests so that loading it can be timed apart from generating it. Each customer gets a
//! script of single commands (register, contacts, orders, opportunities along the funnel,
//! service requests, complaints, churn cases) that must run in order, and a list of touchpoints
//! for the batch endpoint. Deterministic for a given seed. The random number generator, the
//! tables and the touchpoint mix are `crm-demo-data`'s, the demo's own.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

pub use crm_demo_data::{touchpoint, Rng};
use crm_demo_data::{
    CHURN_REASONS, CITIES, COMPLAINT_CATEGORIES, LEVELS, LOST_REASONS, NAMES, OPPORTUNITY_SOURCES,
    OWNERS, PEOPLE, POSITIONS, PRODUCTS, SERVICE_KINDS, TRADES,
};

/// One HTTP command.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: reqwest::Method,
    pub path: String,
    pub body: Value,
}

/// Everything about one customer.
#[derive(Debug, Clone)]
pub struct Script {
    pub customer_id: Uuid,
    /// Single commands, in the order they must run (the registration first).
    pub commands: Vec<Request>,
    /// Items of `/v1/touchpoints:batch`.
    pub touchpoints: Vec<Value>,
}

struct Builder {
    customer: Uuid,
    commands: Vec<Request>,
}

impl Builder {
    fn push(&mut self, method: reqwest::Method, sub: &str, mut body: Value, at: DateTime<Utc>) {
        // business time never lies ahead (the command side refuses more than a day ahead)
        let at = at.min(Utc::now());
        if let Value::Object(m) = &mut body {
            m.insert("occurred_at".into(), json!(at.to_rfc3339()));
        }
        let path = if sub.is_empty() {
            "/v1/customers".to_owned()
        } else {
            format!("/v1/customers/{}{sub}", self.customer)
        };
        self.commands.push(Request { method, path, body });
    }
}

/// The scripts of `customers` customers; `touchpoints` is the range of touchpoints per
/// customer (the demo: 5 to 34).
#[cfg(test)]
pub fn scripts(
    seed: u64,
    customers: usize,
    touchpoints: (u64, u64),
    now: DateTime<Utc>,
) -> Vec<Script> {
    Generator::new(seed, customers, touchpoints, now).collect()
}

/// The scripts one customer at a time, in the data set's order: a data set of any size is
/// generated with bounded memory (the same seed and `now` give the same scripts).
pub struct Generator {
    rng: Rng,
    n: usize,
    customers: usize,
    touchpoints: (u64, u64),
    now: DateTime<Utc>,
    start: DateTime<Utc>,
}

impl Generator {
    pub fn new(
        seed: u64,
        customers: usize,
        touchpoints: (u64, u64),
        now: DateTime<Utc>,
    ) -> Generator {
        Generator {
            rng: Rng(seed),
            n: 0,
            customers,
            touchpoints,
            now,
            start: now - TimeDelta::days(730),
        }
    }
}

impl Iterator for Generator {
    type Item = Script;

    fn next(&mut self) -> Option<Script> {
        if self.n >= self.customers {
            return None;
        }
        let n = self.n;
        self.n += 1;
        Some(self.script(n))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.customers.saturating_sub(self.n);
        (left, Some(left))
    }
}

impl Generator {
    fn script(&mut self, n: usize) -> Script {
        use reqwest::Method as M;
        let (now, start, touchpoints) = (self.now, self.start, self.touchpoints);
        let rng = &mut self.rng;
        let customer = rng.uuid();
        let (city, region) = rng.pick(CITIES).unwrap_or(("上海", "华东"));
        let (trade, industry) = rng.pick(TRADES).unwrap_or(("贸易", "wholesale"));
        let owner = rng.pick(OWNERS).unwrap_or("am-li");
        let since = start + TimeDelta::days(rng.below(120) as i64);
        let name = format!("{city}{}{trade}有限公司", rng.pick(NAMES).unwrap_or("恒远"));
        let mut b = Builder {
            customer,
            commands: Vec::new(),
        };
        b.push(
            M::POST,
            "",
            json!({
                "customer_id": customer,
                "profile": {"kind": "company", "number": format!("KH-{:06}", n + 1), "name": name, "region": region,
                            "industry": industry, "level": rng.pick(LEVELS).unwrap_or("ordinary"),
                            "credit": 1 + rng.below(5), "satisfaction": 1 + rng.below(5),
                            "registration": {"address": format!("{city}市中山路{}号", 1 + rng.below(300)),
                                             "phone": format!("021-{:08}", rng.below(100_000_000))}},
                "owner": owner}),
            since,
        );
        let mut contacts = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let contact = rng.uuid();
            contacts.push(contact);
            b.push(
                M::POST,
                "/contacts",
                json!({"contact_id": contact,
                "contact": {"name": rng.pick(PEOPLE).unwrap_or("王芳"),
                            "position": rng.pick(POSITIONS).unwrap_or("行政"),
                            "mobile": format!("139{:08}", rng.below(100_000_000))}}),
                since,
            );
        }
        let active_days = (now - since).num_days().max(1) as u64;
        let churning = rng.chance(15);
        let mut tps = Vec::new();
        let (lo, hi) = touchpoints;
        for _ in 0..lo + rng.below(hi.saturating_sub(lo).max(1)) {
            let at = since
                + TimeDelta::days(rng.below(active_days) as i64)
                + TimeDelta::minutes(rng.below(600) as i64 + 480);
            let contact = rng.pick(&contacts);
            let tp = touchpoint(rng, city, contact);
            tps.push(
                json!({"customer_id": customer, "occurred_at": at.to_rfc3339(),
                            "idempotency_key": format!("bench-{}", rng.uuid()), "touchpoint": tp}),
            );
        }
        let last_order_day = if churning {
            active_days.saturating_sub(210 + rng.below(150))
        } else {
            active_days
        };
        for k in 0..rng.below(12) {
            let at = since + TimeDelta::days(rng.below(last_order_day.max(1)) as i64);
            let (product, price) = rng.pick(PRODUCTS).unwrap_or(("硒鼓", 42_000));
            let quantity = 1 + rng.below(10);
            b.push(
                M::POST,
                "/orders",
                json!({"order_number": format!("SO-{n:06}-{k:02}"),
                "lines": [{"product": product, "quantity": quantity, "unit_price": price}],
                "total": {"amount": price * quantity as i64, "currency": "CNY"}}),
                at,
            );
        }
        for _ in 0..rng.below(3) {
            let o = rng.uuid();
            let mut at = since + TimeDelta::days(rng.below(active_days) as i64);
            b.push(M::POST, "/opportunities", json!({"opportunity_id": o,
                "source": rng.pick(OPPORTUNITY_SOURCES).unwrap_or("referral"),
                "title": format!("{}采购", rng.pick(PRODUCTS).map(|p| p.0).unwrap_or("硒鼓")),
                "value": {"amount": 100_000 * (1 + rng.below(200)) as i64, "currency": "CNY"},
                "probability": 10 + rng.below(30), "expected_close": (at + TimeDelta::days(90)).date_naive()}), at);
            b.push(
                M::PUT,
                &format!("/opportunities/{o}/owner"),
                json!({"owner": owner}),
                at,
            );
            let steps = rng.below(4);
            for stage in ["proposal", "evaluation", "negotiation"]
                .iter()
                .take(steps as usize)
            {
                at += TimeDelta::days(3 + rng.below(30) as i64);
                if at > now {
                    break;
                }
                b.push(
                    M::PUT,
                    &format!("/opportunities/{o}/stage"),
                    json!({"to": stage, "probability": 30 + rng.below(60)}),
                    at,
                );
            }
            at += TimeDelta::days(5 + rng.below(40) as i64);
            if at < now {
                match rng.below(3) {
                    0 if steps == 3 => {
                        b.push(M::POST, &format!("/opportunities/{o}/won"), json!({}), at)
                    }
                    1 => b.push(
                        M::POST,
                        &format!("/opportunities/{o}/lost"),
                        json!({"reason": rng.pick(LOST_REASONS).unwrap_or("价格过高")}),
                        at,
                    ),
                    _ => {}
                }
            }
        }
        for _ in 0..rng.below(3) {
            let s = rng.uuid();
            let mut at = since + TimeDelta::days(rng.below(active_days) as i64);
            b.push(
                M::POST,
                "/service-requests",
                json!({"service_request_id": s,
                "kind": rng.pick(SERVICE_KINDS).unwrap_or("consultation"),
                "summary": "售后服务", "request": "设备故障，请派人维修"}),
                at,
            );
            at += TimeDelta::hours(2);
            b.push(
                M::PUT,
                &format!("/service-requests/{s}/assignee"),
                json!({"assignee": "agent-chen"}),
                at,
            );
            at += TimeDelta::days(1);
            b.push(
                M::POST,
                &format!("/service-requests/{s}/handling"),
                json!({"handling": "上门维修"}),
                at,
            );
            at += TimeDelta::days(1);
            let satisfaction = 1 + rng.below(5);
            b.push(
                M::POST,
                &format!("/service-requests/{s}/feedback"),
                json!({"result": "已回访", "satisfaction": satisfaction}),
                at,
            );
            if satisfaction >= 3 {
                b.push(
                    M::POST,
                    &format!("/service-requests/{s}/archive"),
                    json!({}),
                    at + TimeDelta::days(1),
                );
            }
        }
        if rng.chance(20) {
            let k = rng.uuid();
            let at = since + TimeDelta::days(rng.below(active_days) as i64);
            let (category, sub) = rng
                .pick(COMPLAINT_CATEGORIES)
                .unwrap_or(("product", "quality"));
            b.push(
                M::POST,
                "/complaints",
                json!({"complaint_id": k, "category": category, "sub_category": sub,
                "urgency": "high", "importance": "normal", "description": "客户投诉"}),
                at,
            );
            b.push(
                M::POST,
                &format!("/complaints/{k}/handling"),
                json!({"handling": "致电道歉并处理", "cause_analysis": "流程问题"}),
                at + TimeDelta::days(1),
            );
            if rng.chance(70) {
                b.push(
                    M::POST,
                    &format!("/complaints/{k}/closure"),
                    json!({"resolution": "客户接受"}),
                    at + TimeDelta::days(3),
                );
            }
        }
        if churning {
            let at = now - TimeDelta::days(20 + rng.below(60) as i64);
            b.push(
                M::POST,
                "/churn/warnings",
                json!({"churn_case_id": rng.uuid(), "reason": "超过 180 天无订单"}),
                at,
            );
            b.push(
                M::POST,
                "/churn/measures",
                json!({"measure": "赠送免费保养一次"}),
                at + TimeDelta::days(3),
            );
            match rng.below(3) {
                0 => b.push(
                    M::POST,
                    "/churn/confirmation",
                    json!({"reason": rng.pick(CHURN_REASONS).unwrap_or("需求消失")}),
                    at + TimeDelta::days(10),
                ),
                1 => b.push(
                    M::POST,
                    "/churn/reactivation",
                    json!({"reason": "重新下单"}),
                    at + TimeDelta::days(10),
                ),
                _ => {}
            }
        }
        Script {
            customer_id: customer,
            commands: b.commands,
            touchpoints: tps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_deterministic_and_start_with_the_registration() {
        let now = Utc::now();
        let a = scripts(7, 20, (5, 35), now);
        let b = scripts(7, 20, (5, 35), now);
        assert_eq!(a.len(), 20);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.customer_id, y.customer_id);
            assert_eq!(x.commands.len(), y.commands.len());
            assert_eq!(
                x.commands.first().map(|r| r.path.as_str()),
                Some("/v1/customers")
            );
            assert!((5..35).contains(&x.touchpoints.len()));
        }
    }
}
