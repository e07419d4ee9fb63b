//! `crm demo`: a realistic generated data set, loaded through the real ingest path (the
//! command API over HTTP): customers with contacts, two years of touchpoints on every
//! channel, opportunities moving through the funnel (some stuck past their thresholds), orders,
//! service requests, complaints and churn cases. Deterministic for a given seed.

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crm_demo_data::{
    touchpoint, Rng, CHURN_REASONS, CITIES, COMPLAINT_CATEGORIES, LEVELS, LOST_REASONS, NAMES,
    OPPORTUNITY_SOURCES, OWNERS, PEOPLE, POSITIONS, PRODUCTS, SERVICE_KINDS, TRADES,
};

pub struct Demo {
    pub command_url: String,
    /// The query API the demo waits for (read-your-writes on the last positions).
    pub query_url: String,
    pub customers: usize,
    pub seed: u64,
    /// Longest wait for the read models to catch up.
    pub catch_up_timeout: Duration,
    /// For the `crm token` example printed at the end.
    pub data_dir: std::path::PathBuf,
}

/// Signs a token for (subject, role).
pub type Mint<'a> = &'a dyn Fn(&str, &str) -> anyhow::Result<String>;

/// The role each demo actor acts in.
fn role_of(actor: &str) -> &'static str {
    match actor {
        a if a.starts_with("am-") => "account_manager",
        a if a.starts_with("director-") => "sales_director",
        a if a.starts_with("agent-") => "service_agent",
        a if a.starts_with("adapter:") => "channel_adapter",
        _ => "administrator",
    }
}

struct Loader<'a> {
    client: reqwest::Client,
    base: String,
    sent: u64,
    mint: Mint<'a>,
    tokens: std::collections::HashMap<String, String>,
    /// The last position appended per (topic, partition): what the query API must reach.
    positions: std::collections::BTreeMap<(String, i32), i64>,
}

impl Loader<'_> {
    fn saw_position(&mut self, text: &str) {
        let mut parts = text.rsplitn(3, ':');
        let (Some(offset), Some(partition), Some(topic)) = (
            parts.next().and_then(|o| o.parse::<i64>().ok()),
            parts.next().and_then(|p| p.parse::<i32>().ok()),
            parts.next(),
        ) else {
            return;
        };
        let at = self
            .positions
            .entry((topic.to_owned(), partition))
            .or_insert(offset);
        *at = (*at).max(offset);
    }

    fn token(&mut self, actor: &str) -> anyhow::Result<String> {
        if let Some(t) = self.tokens.get(actor) {
            return Ok(t.clone());
        }
        let t = (self.mint)(actor, role_of(actor))?;
        self.tokens.insert(actor.to_owned(), t.clone());
        Ok(t)
    }

    async fn send(
        &mut self,
        method: reqwest::Method,
        path: &str,
        mut body: Value,
        at: DateTime<Utc>,
        actor: &str,
    ) -> anyhow::Result<Value> {
        // business time for customer commands (team commands take none), never ahead of now
        // (the command side refuses more than a day ahead)
        let at = at.min(Utc::now());
        if let (Value::Object(m), true) = (&mut body, path.starts_with("/v1/customers")) {
            m.insert("occurred_at".into(), json!(at.to_rfc3339()));
        }
        let url = format!("{}{path}", self.base);
        let token = self.token(actor)?;
        for attempt in 0..20 {
            let r = self
                .client
                .request(method.clone(), &url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .with_context(|| format!("{method} {url}"))?;
            let status = r.status();
            let position = r
                .headers()
                .get("crm-position")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let answer: Value = r.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                if let Some(p) = position {
                    self.saw_position(&p);
                }
                self.sent += 1;
                return Ok(answer);
            }
            if status.as_u16() == 503 && attempt < 19 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            bail!("{method} {path}: {status}: {answer}");
        }
        bail!("{method} {path}: the service stayed unavailable")
    }
}

impl Demo {
    pub async fn run(self, mint: Mint<'_>) -> anyhow::Result<()> {
        let mut rng = Rng(self.seed);
        let mut loader = Loader {
            client: reqwest::Client::new(),
            base: self.command_url.trim_end_matches('/').to_owned(),
            sent: 0,
            mint,
            tokens: std::collections::HashMap::new(),
            positions: std::collections::BTreeMap::new(),
        };
        let now = Utc::now();
        // the sales team: a director and the account managers
        let team = rng.uuid();
        let founded = now - TimeDelta::days(740);
        loader
            .send(
                reqwest::Method::POST,
                "/v1/teams",
                json!({"team_id": team, "name": "华东销售部"}),
                founded,
                "admin",
            )
            .await?;
        loader
            .send(
                reqwest::Method::PUT,
                &format!("/v1/teams/{team}/director"),
                json!({"director": "director-sun"}),
                founded,
                "admin",
            )
            .await?;
        for owner in OWNERS {
            loader
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/teams/{team}/members"),
                    json!({"member": owner}),
                    founded,
                    "admin",
                )
                .await?;
        }
        let start = now - TimeDelta::days(730);
        let bar = ProgressBar::new(self.customers as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {bar:40} {pos}/{len} customers  {msg}  [{elapsed_precise}, eta {eta}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut touchpoints: Vec<Value> = Vec::new();
        for n in 0..self.customers {
            let customer = rng.uuid();
            let (city, region) = rng.pick(CITIES).unwrap_or(("上海", "华东"));
            let (trade, industry) = rng.pick(TRADES).unwrap_or(("贸易", "wholesale"));
            let owner = rng.pick(OWNERS).unwrap_or("am-li");
            let since = start + TimeDelta::days(rng.below(120) as i64);
            let name = format!("{city}{}{trade}有限公司", rng.pick(NAMES).unwrap_or("恒远"));
            loader
                .send(reqwest::Method::POST, "/v1/customers", json!({
                    "customer_id": customer,
                    "profile": {"kind": "company", "number": format!("KH-{:05}", n + 1), "name": name, "region": region,
                                "industry": industry, "level": rng.pick(LEVELS).unwrap_or("ordinary"), "credit": 1 + rng.below(5), "satisfaction": 1 + rng.below(5),
                                "registration": {"address": format!("{city}市中山路{}号", 1 + rng.below(300)), "phone": format!("021-{:08}", rng.below(100_000_000))}},
                    "owner": owner}), since, owner)
                .await?;
            let c = format!("/v1/customers/{customer}");
            let mut contacts = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let contact = rng.uuid();
                contacts.push(contact);
                loader.send(reqwest::Method::POST, &format!("{c}/contacts"), json!({"contact_id": contact,
                    "contact": {"name": rng.pick(PEOPLE).unwrap_or("王芳"), "position": rng.pick(POSITIONS).unwrap_or("行政"), "mobile": format!("139{:08}", rng.below(100_000_000))}}), since, owner).await?;
            }
            // two years of touchpoints on every channel, through the batch endpoint
            let active_days = (now - since).num_days().max(1) as u64;
            let churning = rng.chance(15);
            for _ in 0..5 + rng.below(30) {
                let at = since
                    + TimeDelta::days(rng.below(active_days) as i64)
                    + TimeDelta::minutes(rng.below(600) as i64 + 480);
                let contact = rng.pick(&contacts);
                let tp = touchpoint(&mut rng, city, contact);
                touchpoints.push(
                    json!({"customer_id": customer, "occurred_at": at.to_rfc3339(),
                    "idempotency_key": format!("demo-{}", rng.uuid()), "touchpoint": tp}),
                );
            }
            // orders: churning customers stopped ordering 7-12 months ago
            let last_order_day = if churning {
                active_days.saturating_sub(210 + rng.below(150))
            } else {
                active_days
            };
            for k in 0..rng.below(12) {
                let at = since + TimeDelta::days(rng.below(last_order_day.max(1)) as i64);
                let (product, price) = rng.pick(PRODUCTS).unwrap_or(("硒鼓", 42_000));
                let quantity = 1 + rng.below(10);
                loader.send(reqwest::Method::POST, &format!("{c}/orders"), json!({"order_number": format!("SO-{n:05}-{k:02}"),
                    "lines": [{"product": product, "quantity": quantity, "unit_price": price}], "total": {"amount": price * quantity as i64, "currency": "CNY"}}), at, owner).await?;
            }
            // opportunities along the funnel; some stuck in their stage
            for _ in 0..rng.below(3) {
                let o = rng.uuid();
                let mut at = since + TimeDelta::days(rng.below(active_days) as i64);
                loader.send(reqwest::Method::POST, &format!("{c}/opportunities"), json!({"opportunity_id": o, "source": rng.pick(OPPORTUNITY_SOURCES).unwrap_or("referral"),
                    "title": format!("{}采购", rng.pick(PRODUCTS).map(|p| p.0).unwrap_or("硒鼓")), "value": {"amount": 100_000 * (1 + rng.below(200)) as i64, "currency": "CNY"},
                    "probability": 10 + rng.below(30), "expected_close": (at + TimeDelta::days(90)).date_naive()}), at, "director-sun").await?;
                loader
                    .send(
                        reqwest::Method::PUT,
                        &format!("{c}/opportunities/{o}/owner"),
                        json!({"owner": owner}),
                        at,
                        "director-sun",
                    )
                    .await?;
                let steps = rng.below(4);
                for stage in ["proposal", "evaluation", "negotiation"]
                    .iter()
                    .take(steps as usize)
                {
                    at += TimeDelta::days(3 + rng.below(30) as i64);
                    if at > now {
                        break;
                    }
                    loader
                        .send(
                            reqwest::Method::PUT,
                            &format!("{c}/opportunities/{o}/stage"),
                            json!({"to": stage, "probability": 30 + rng.below(60)}),
                            at,
                            owner,
                        )
                        .await?;
                }
                at += TimeDelta::days(5 + rng.below(40) as i64);
                if at < now {
                    match rng.below(3) {
                        0 if steps == 3 => {
                            loader
                                .send(
                                    reqwest::Method::POST,
                                    &format!("{c}/opportunities/{o}/won"),
                                    json!({}),
                                    at,
                                    owner,
                                )
                                .await?;
                        }
                        1 => {
                            loader
                                .send(
                                    reqwest::Method::POST,
                                    &format!("{c}/opportunities/{o}/lost"),
                                    json!({"reason": rng.pick(LOST_REASONS).unwrap_or("价格过高")}),
                                    at,
                                    owner,
                                )
                                .await?;
                        }
                        _ => {} // still open: stuck if it has been long in its stage
                    }
                }
            }
            // service requests
            for _ in 0..rng.below(3) {
                let s = rng.uuid();
                let mut at = since + TimeDelta::days(rng.below(active_days) as i64);
                loader.send(reqwest::Method::POST, &format!("{c}/service-requests"), json!({"service_request_id": s, "kind": rng.pick(SERVICE_KINDS).unwrap_or("consultation"), "summary": "售后服务", "request": "设备故障，请派人维修"}), at, owner).await?;
                at += TimeDelta::hours(2);
                loader
                    .send(
                        reqwest::Method::PUT,
                        &format!("{c}/service-requests/{s}/assignee"),
                        json!({"assignee": "agent-chen"}),
                        at,
                        "director-sun",
                    )
                    .await?;
                at += TimeDelta::days(1);
                loader
                    .send(
                        reqwest::Method::POST,
                        &format!("{c}/service-requests/{s}/handling"),
                        json!({"handling": "上门维修"}),
                        at,
                        "agent-chen",
                    )
                    .await?;
                at += TimeDelta::days(1);
                let satisfaction = 1 + rng.below(5);
                loader
                    .send(
                        reqwest::Method::POST,
                        &format!("{c}/service-requests/{s}/feedback"),
                        json!({"result": "已回访", "satisfaction": satisfaction}),
                        at,
                        "agent-chen",
                    )
                    .await?;
                if satisfaction >= 3 {
                    loader
                        .send(
                            reqwest::Method::POST,
                            &format!("{c}/service-requests/{s}/archive"),
                            json!({}),
                            at + TimeDelta::days(1),
                            "agent-chen",
                        )
                        .await?;
                }
            }
            // complaints
            if rng.chance(20) {
                let k = rng.uuid();
                let at = since + TimeDelta::days(rng.below(active_days) as i64);
                let (category, sub) = rng
                    .pick(COMPLAINT_CATEGORIES)
                    .unwrap_or(("product", "quality"));
                loader.send(reqwest::Method::POST, &format!("{c}/complaints"), json!({"complaint_id": k, "category": category, "sub_category": sub, "urgency": "high", "importance": "normal", "description": "客户投诉"}), at, "agent-chen").await?;
                loader
                    .send(
                        reqwest::Method::POST,
                        &format!("{c}/complaints/{k}/handling"),
                        json!({"handling": "致电道歉并处理", "cause_analysis": "流程问题"}),
                        at + TimeDelta::days(1),
                        "agent-chen",
                    )
                    .await?;
                if rng.chance(70) {
                    loader
                        .send(
                            reqwest::Method::POST,
                            &format!("{c}/complaints/{k}/closure"),
                            json!({"resolution": "客户接受"}),
                            at + TimeDelta::days(3),
                            "agent-chen",
                        )
                        .await?;
                }
            }
            // churn cases for those who stopped ordering
            if churning {
                let at = now - TimeDelta::days(20 + rng.below(60) as i64);
                loader
                    .send(
                        reqwest::Method::POST,
                        &format!("{c}/churn/warnings"),
                        json!({"churn_case_id": rng.uuid(), "reason": "超过 180 天无订单"}),
                        at,
                        "admin",
                    )
                    .await?;
                loader
                    .send(
                        reqwest::Method::POST,
                        &format!("{c}/churn/measures"),
                        json!({"measure": "赠送免费保养一次"}),
                        at + TimeDelta::days(3),
                        owner,
                    )
                    .await?;
                match rng.below(3) {
                    0 => {
                        loader
                            .send(
                                reqwest::Method::POST,
                                &format!("{c}/churn/confirmation"),
                                json!({"reason": rng.pick(CHURN_REASONS).unwrap_or("需求消失")}),
                                at + TimeDelta::days(10),
                                owner,
                            )
                            .await?;
                    }
                    1 => {
                        loader
                            .send(
                                reqwest::Method::POST,
                                &format!("{c}/churn/reactivation"),
                                json!({"reason": "重新下单"}),
                                at + TimeDelta::days(10),
                                owner,
                            )
                            .await?;
                    }
                    _ => {}
                }
            }
            bar.inc(1);
            bar.set_message(format!("{} commands", loader.sent));
            if touchpoints.len() >= 5_000 {
                send_batch(&mut loader, &mut touchpoints).await?;
            }
        }
        send_batch(&mut loader, &mut touchpoints).await?;
        bar.finish_with_message(format!("{} commands", loader.sent));
        println!(
            "\nLoaded {} customers ({} commands and touchpoints) through {}.",
            self.customers, loader.sent, loader.base
        );
        let query = self.query_url.trim_end_matches('/').to_owned();
        let admin = loader.token("admin")?;
        wait_for_read_models(
            &loader.client,
            &query,
            &admin,
            &loader.positions,
            self.catch_up_timeout,
        )
        .await?;
        let data_dir = self.data_dir.display();
        println!("\nWhere to look (every request needs a bearer token):");
        println!("  TOKEN=$(crm token --data-dir {data_dir} --subject director-sun --role sales_director)");
        println!("  curl -s -H \"authorization: Bearer $TOKEN\" '{query}/v1/customers?limit=5'");
        println!("  {query}/v1/customers/<id>          the 360° view");
        println!("  {query}/v1/customers/<id>/timeline the timeline in business time");
        println!("  {query}/v1/pipeline                the funnel, win rate, forecast");
        println!(
            "  {query}/v1/alerts?status=open      opportunities stuck past their stage's threshold"
        );
        println!("  {query}/v1/segments/rfm            RFM segments (then /v1/segments/rfm/<segment>/customers)");
        println!("  {query}/v1/churn                   churn cases");
        println!("  {query}/v1/reports/composition     customers by level, credit, satisfaction");
        println!(
            "  {query}/v1/audit?limit=20          who changed what (TOKEN with --role auditor)"
        );
        println!(
            "  {query}/openapi.json               every query;  {}/openapi.json every command",
            loader.base
        );
        Ok(())
    }
}

/// Waits until the query API's read models have applied every position the load produced
/// (`CRM-Min-Position`), with a spinner.
async fn wait_for_read_models(
    client: &reqwest::Client,
    query: &str,
    token: &str,
    positions: &std::collections::BTreeMap<(String, i32), i64>,
    timeout: Duration,
) -> anyhow::Result<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let wanted: Vec<String> = positions
        .iter()
        .map(|((topic, partition), offset)| format!("{topic}:{partition}:{offset}"))
        .collect();
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!(
        "waiting for the read models at {query} to catch up ({} partitions)",
        wanted.len()
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let deadline = std::time::Instant::now() + timeout;
    // the header takes at most 64 positions: wait for them a chunk at a time
    for chunk in wanted.chunks(64) {
        let header = chunk.join(",");
        loop {
            let answer = client
                .get(format!("{query}/v1/customers?limit=1"))
                .bearer_auth(token)
                .header("crm-min-position", &header)
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => break,
                Ok(r) if r.status().as_u16() == 503 || r.status().as_u16() == 404 => {}
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    spinner.finish_and_clear();
                    bail!("the query API at {query} answered {status}: {body}");
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    spinner.set_message(format!("waiting for the query API at {query}: {e}"));
                }
                Err(e) => {
                    spinner.finish_and_clear();
                    return Err(e).context(format!("reaching the query API at {query}"));
                }
            }
            if std::time::Instant::now() >= deadline {
                spinner.finish_and_clear();
                bail!(
                    "the read models at {query} did not catch up within {} s (is the projection running?)",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    spinner.finish_and_clear();
    println!("The read models have caught up.");
    Ok(())
}

async fn send_batch(loader: &mut Loader<'_>, touchpoints: &mut Vec<Value>) -> anyhow::Result<()> {
    if touchpoints.is_empty() {
        return Ok(());
    }
    let body = Value::Array(std::mem::take(touchpoints));
    let count = body.as_array().map(Vec::len).unwrap_or(0) as u64;
    let token = loader.token("adapter:demo")?;
    let r = loader
        .client
        .post(format!("{}/v1/touchpoints:batch", loader.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .context("sending a touchpoint batch")?;
    let answer: Value = r.json().await.context("reading the batch answer")?;
    for result in answer["results"].as_array().into_iter().flatten() {
        if let Some(p) = result["outcome"]["events"]
            .as_array()
            .and_then(|events| events.last())
            .map(|e| &e["position"])
        {
            if let (Some(topic), Some(partition), Some(offset)) = (
                p["topic"].as_str(),
                p["partition"].as_i64(),
                p["offset"].as_i64(),
            ) {
                loader.saw_position(&format!("{topic}:{partition}:{offset}"));
            }
        }
    }
    let rejected = answer["rejected"].as_u64().unwrap_or(count);
    if rejected > 0 {
        bail!(
            "{rejected} of {count} touchpoints were rejected: {}",
            answer["results"]
                .as_array()
                .and_then(|r| r.iter().find(|i| i["problem"].is_object()))
                .cloned()
                .unwrap_or(Value::Null)
        );
    }
    loader.sent += count;
    Ok(())
}
