//! End to end: the `crm` binary, started as a user starts it, driven over HTTP only, with
//! tokens minted by `crm token`. The same scenario runs on both backends:
//!
//! - **the embedded default**: `crm up` with nothing but a fresh `--data-dir` (the embedded
//!   log and the private PostgreSQL under it);
//! - **Kafka + PostgreSQL**: `crm up --kafka-brokers ... --database-url ...` against the test
//!   bed's broker (`crm_tests::KafkaBroker`) and a fresh database on 127.0.0.1:5432.
//!
//! The scenario: register customers, record touchpoints (one, retried with its idempotency
//! key, and a batch from a channel adapter), place an order, open an opportunity and move it
//! (a stale `If-Match` gets 409), read the 360° view with read-your-writes
//! (`CRM-Min-Position`), see the stage alert the sweep opens, find the customer in its RFM
//! segment, trace the stage change in the audit trail, then stop the platform with SIGTERM
//! (it must exit cleanly, stopping its PostgreSQL), run `crm migrate` and `crm replay
//! --version 2` (a rebuild from offset zero that switches over) and `crm replay --read-model
//! timeline` (one read model rebuilt alone and switched in), start it again and find
//! everything still there, served by version 2, with new commands continuing the same streams
//! and old idempotency keys still recognised; finally kill it with SIGKILL, start it again
//! and find the last acknowledged command.
//!
//! These tests live in the `crm` crate (not in `tests/`) because Cargo gives an integration
//! test the path of its own crate's binaries only (`CARGO_BIN_EXE_crm`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

const CRM: &str = env!("CARGO_BIN_EXE_crm");

/// A probe's answer, for the message of a test that gives up: the status and the start of the
/// body, or the connection error.
async fn describe(answer: reqwest::Result<reqwest::Response>) -> String {
    match answer {
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            let body: String = body.chars().take(500).collect();
            format!("{status} {body}")
        }
        Err(e) => format!("error: {e}"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("crm-e2e-{name}-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `crm up` process.
struct Platform {
    child: Option<Child>,
    args: Vec<String>,
    data_dir: PathBuf,
    log: PathBuf,
    command: String,
    query: String,
    http: reqwest::Client,
}

impl Platform {
    /// Starts `crm up` with `extra` arguments (the backend) and waits until it serves.
    async fn start(data_dir: &Path, extra: &[String]) -> Platform {
        let (command_port, query_port) = (free_port(), free_port());
        let mut args: Vec<String> = [
            "up",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--command-listen",
            &format!("127.0.0.1:{command_port}"),
            "--query-listen",
            &format!("127.0.0.1:{query_port}"),
            "--partitions",
            "4",
            // the sweep and the RFM recompute soon after the data changes
            "--sweep-interval",
            "1s",
            "--rfm-check-interval",
            "1s",
            "--batch-wait",
            "50ms",
            "--query-max-wait-ms",
            "15000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        std::fs::create_dir_all(data_dir).unwrap();
        let mut p = Platform {
            child: None,
            args,
            data_dir: data_dir.to_owned(),
            log: data_dir.join("crm-up.log"),
            command: format!("http://127.0.0.1:{command_port}"),
            query: format!("http://127.0.0.1:{query_port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        p.launch().await;
        p
    }

    async fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(CRM)
            .args(&self.args)
            .env("RUST_LOG", "info,sqlx=warn")
            .env_remove("KAFKA_BROKERS")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready().await;
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Both APIs answer and the projection has a live version. When it gives up, the panic
    /// says what each probe was last answered, beside the log's tail.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last_query = String::from("(not asked yet)");
        let mut token: Option<String> = None;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("crm up exited ({status}):\n{}", self.log_tail());
            }
            let command = self
                .http
                .get(format!("{}/healthz", self.command))
                .send()
                .await;
            let command_ok = matches!(&command, Ok(c) if c.status().is_success());
            let last_command = describe(command).await;
            // The token is minted once the command API answers (the signing secret exists by
            // then), and again after a refusal.
            if command_ok && token.is_none() {
                token = Some(self.token("admin", "administrator"));
            }
            if let Some(t) = &token {
                let query = self
                    .http
                    .get(format!("{}/v1/customers?limit=1", self.query))
                    .bearer_auth(t)
                    .send()
                    .await;
                let status = query.as_ref().map(|q| q.status()).ok();
                last_query = describe(query).await;
                if command_ok && status.is_some_and(|s| s.is_success()) {
                    return;
                }
                if status == Some(reqwest::StatusCode::UNAUTHORIZED) {
                    token = None;
                }
            }
            assert!(
                Instant::now() < deadline,
                "crm up did not become ready within 120 s\n\
                 last answer of {}/healthz: {last_command}\n\
                 last answer of {}/v1/customers?limit=1: {last_query}\n\
                 log tail:\n{}",
                self.command,
                self.query,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM, and the exit status (within 60 s).
    async fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("crm up did not stop within 60 s:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no clean shutdown at all (the private PostgreSQL is left behind, orphaned).
    fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// `crm token` for this data directory.
    fn token(&self, subject: &str, role: &str) -> String {
        let out = Command::new(CRM)
            .args(["token", "--data-dir", self.data_dir.to_str().unwrap()])
            .args(["--subject", subject, "--role", role])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "crm token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A command; retried while the service answers 503 (partitions being taken over).
    async fn command(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Value,
        headers: &[(&str, String)],
    ) -> Answer {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.command))
                .bearer_auth(token)
                .json(&body);
            for (k, v) in headers {
                request = request.header(*k, v);
            }
            let answer = Answer::of(request.send().await.unwrap()).await;
            if answer.status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            return answer;
        }
    }

    async fn query(&self, path: &str, token: &str, min_position: Option<&str>) -> Answer {
        let mut request = self
            .http
            .get(format!("{}{path}", self.query))
            .bearer_auth(token);
        if let Some(p) = min_position {
            request = request.header("crm-min-position", p);
        }
        Answer::of(request.send().await.unwrap()).await
    }

    /// Polls a query until `pred` holds (at most 60 s); the last answer.
    async fn query_until(&self, path: &str, token: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = self.query(path, token, None).await;
            if a.status == StatusCode::OK && pred(&a.body) {
                return a.body;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} never matched; last answer {} {}\n{}",
                a.status,
                a.body,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // a failed test: stop it the way a user would (it stops its PostgreSQL)
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    async fn of(r: reqwest::Response) -> Answer {
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    fn position(&self) -> String {
        self.header("crm-position")
            .unwrap_or_else(|| panic!("no crm-position: {} {}", self.status, self.body))
    }

    /// Any 2xx.
    #[track_caller]
    fn ok(self) -> Answer {
        assert!(self.status.is_success(), "{} {}", self.status, self.body);
        self
    }

    #[track_caller]
    fn expect(self, status: StatusCode) -> Answer {
        assert_eq!(self.status, status, "{}", self.body);
        self
    }
}

/// What the scenario leaves to check after the restart.
struct Seen {
    customer: String,
    last_sequence: i64,
    stage_event: String,
    opportunity: String,
    /// The body first sent with the idempotency key `e2e-call-1`.
    keyed_touchpoint: Value,
}

async fn scenario(p: &Platform) -> Seen {
    let admin = p.token("admin", "administrator");
    let am = p.token("am-li", "account_manager");
    let adapter = p.token("adapter:callcentre", "channel_adapter");
    let auditor = p.token("audit-wu", "auditor");
    let now = Utc::now();
    let days_ago = |d: i64| (now - TimeDelta::days(d)).to_rfc3339();

    // register two customers for am-li
    let mut customers = Vec::new();
    for (n, name) in ["杭州远景科技有限公司", "上海恒远贸易有限公司"]
        .iter()
        .enumerate()
    {
        let a = p
            .command(
                Method::POST,
                "/v1/customers",
                &admin,
                json!({"profile": {"kind": "company", "name": name, "region": "华东", "industry": "software",
                                   "level": "key", "credit": 4, "satisfaction": 4, "number": format!("E2E-{n}")},
                       "owner": "am-li", "occurred_at": days_ago(90)}),
                &[],
            )
            .await
            .expect(StatusCode::CREATED);
        customers.push(a.body["customer_id"].as_str().unwrap().to_owned());
    }
    let c = customers[0].clone();

    // one touchpoint, retried with the same idempotency key: the first answer, nothing new
    let touchpoint = json!({"occurred_at": days_ago(1), "touchpoint": {"channel": {"kind": "phone_call",
        "direction": "inbound", "duration_seconds": 320, "wait_seconds": 15, "outcome": "answered"}, "summary": "询价"}});
    let keyed_touchpoint = touchpoint.clone();
    let first = p
        .command(
            Method::POST,
            &format!("/v1/customers/{c}/touchpoints"),
            &am,
            touchpoint.clone(),
            &[("idempotency-key", "e2e-call-1".into())],
        )
        .await
        .ok();
    let again = p
        .command(
            Method::POST,
            &format!("/v1/customers/{c}/touchpoints"),
            &am,
            touchpoint,
            &[("idempotency-key", "e2e-call-1".into())],
        )
        .await;
    assert!(again.status.is_success(), "{}", again.body);
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(again.body["sequence"], first.body["sequence"]);

    // read-your-writes: the command's position is waited for; a position on a topic or a
    // partition that does not exist is refused at once (it used to wait 2 s, then 503)
    let position = first.position();
    let a = p
        .query(&format!("/v1/customers/{c}"), &am, Some(&position))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let (topic, _) = position.rsplit_once(':').unwrap();
    let (topic, _) = topic.rsplit_once(':').unwrap();
    for bad in ["no-such-topic:0:1".to_owned(), format!("{topic}:4096:1")] {
        let asked = Instant::now();
        let a = p
            .query(&format!("/v1/customers/{c}"), &am, Some(&bad))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {}", a.body);
        assert_eq!(a.body["field"], "CRM-Min-Position", "{}", a.body);
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{bad}: answered late"
        );
    }

    // a batch from a channel adapter: both customers, three channels
    let batch: Vec<Value> = [
        (&customers[0], json!({"kind": "email", "direction": "inbound", "subject": "报价"})),
        (&customers[0], json!({"kind": "wechat", "direction": "outbound"})),
        (&customers[1], json!({"kind": "visit", "place": "客户办公室"})),
    ]
    .iter()
    .enumerate()
    .map(|(i, (customer, channel))| {
        json!({"customer_id": customer, "occurred_at": days_ago(2 + i as i64), "idempotency_key": format!("e2e-batch-{i}"),
               "touchpoint": {"channel": channel, "summary": "跟进"}})
    })
    .collect();
    let a = p
        .command(
            Method::POST,
            "/v1/touchpoints:batch",
            &adapter,
            Value::Array(batch),
            &[],
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(a.body["accepted"], 3, "{}", a.body);
    assert_eq!(a.body["rejected"], 0, "{}", a.body);

    // orders, for RFM
    for (k, d) in [40, 10].iter().enumerate() {
        p.command(
            Method::POST,
            &format!("/v1/customers/{c}/orders"),
            &am,
            json!({"order_number": format!("SO-E2E-{k}"), "lines": [{"product": "复印机", "quantity": 2, "unit_price": 1_250_000}],
                   "total": {"amount": 2_500_000, "currency": "CNY"}, "occurred_at": days_ago(*d)}),
            &[],
        )
        .await
        .ok();
    }

    // an opportunity, moved to proposal 50 days ago: past the 21-day threshold
    let o = Uuid::now_v7().to_string();
    let opened = p
        .command(
            Method::POST,
            &format!("/v1/customers/{c}/opportunities"),
            &admin,
            json!({"opportunity_id": o, "source": "referral", "title": "年度采购", "value": {"amount": 5_000_000, "currency": "CNY"},
                   "probability": 20, "expected_close": (now + TimeDelta::days(60)).date_naive(), "occurred_at": days_ago(60)}),
            &[],
        )
        .await
        .ok();
    let etag = opened.header("etag").unwrap();
    let moved = p
        .command(
            Method::PUT,
            &format!("/v1/customers/{c}/opportunities/{o}/stage"),
            &am,
            json!({"to": "proposal", "occurred_at": days_ago(50)}),
            &[("if-match", etag.clone())],
        )
        .await
        .expect(StatusCode::OK);
    let stage_event = moved.body["events"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        moved.body["events"][0]["type"],
        "crm.opportunity.stage_changed.v1"
    );
    // the same If-Match again is stale now
    let stale = p
        .command(
            Method::PUT,
            &format!("/v1/customers/{c}/opportunities/{o}/stage"),
            &am,
            json!({"to": "evaluation"}),
            &[("if-match", etag)],
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);

    // the 360° view, read-your-writes: the first answer already has the stage change
    let view = p
        .query(&format!("/v1/customers/{c}"), &am, Some(&moved.position()))
        .await
        .expect(StatusCode::OK)
        .body;
    let last_sequence = view["last_sequence"].as_i64().unwrap();
    assert_eq!(last_sequence, moved.body["sequence"].as_i64().unwrap());
    assert_eq!(view["name"], "杭州远景科技有限公司");
    assert_eq!(view["owner"], "am-li");
    assert_eq!(view["order_count"], 2);
    let per_channel: Vec<(String, i64)> = view["touchpoints"]
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
        per_channel,
        [
            ("email".to_owned(), 1),
            ("phone_call".to_owned(), 1),
            ("wechat".to_owned(), 1)
        ],
        "{view}"
    );
    let open: Vec<&Value> = view["open_opportunities"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(open.len(), 1, "{view}");
    assert_eq!(open[0]["stage"], "proposal", "{view}");

    // the timeline in business time
    let timeline = p
        .query(
            &format!("/v1/customers/{c}/timeline?category=touchpoint"),
            &am,
            None,
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(timeline["items"].as_array().unwrap().len(), 3, "{timeline}");

    // the pipeline
    let pipeline = p
        .query("/v1/pipeline", &am, None)
        .await
        .expect(StatusCode::OK)
        .body;
    assert!(pipeline.to_string().contains("proposal"), "{pipeline}");

    // the stage alert: the sweep (every second) opens it
    let alerts = p
        .query_until(&format!("/v1/alerts?customer={c}&status=open"), &am, |b| {
            b["items"].as_array().is_some_and(|i| !i.is_empty())
        })
        .await;
    let alert = &alerts["items"][0];
    assert_eq!(alert["opportunity_id"], o.as_str(), "{alerts}");
    assert_eq!(alert["stage"], "proposal", "{alerts}");
    assert_eq!(alert["threshold_days"], 21, "{alerts}");

    // RFM: once recomputed, the customer is in a segment, and the segment lists it
    let scored = p
        .query_until(&format!("/v1/customers/{c}"), &am, |v| {
            v["segment"].as_str().is_some_and(|s| s != "no_purchases")
        })
        .await;
    let segment = scored["segment"].as_str().unwrap().to_owned();
    let sizes = p
        .query("/v1/segments/rfm", &am, None)
        .await
        .expect(StatusCode::OK)
        .body;
    assert!(
        sizes["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["segment"] == segment.as_str() && s["customers"].as_i64() >= Some(1)),
        "{sizes}"
    );
    let members = p
        .query(&format!("/v1/segments/rfm/{segment}/customers"), &am, None)
        .await
        .expect(StatusCode::OK)
        .body;
    assert!(
        members["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["customer_id"] == c.as_str()),
        "{members}"
    );

    // the audit trail: who moved the opportunity, when, with which command
    let trail = p
        .query(
            &format!("/v1/audit?customer={c}&type=crm.opportunity.stage_changed.v1"),
            &auditor,
            None,
        )
        .await
        .expect(StatusCode::OK)
        .body;
    let entries = trail["items"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{trail}");
    assert_eq!(entries[0]["event_id"], stage_event.as_str());
    assert_eq!(entries[0]["actor"], "am-li");
    let change = p
        .query(&format!("/v1/audit/events/{stage_event}"), &auditor, None)
        .await
        .expect(StatusCode::OK)
        .body;
    assert!(change.to_string().contains("am-li"), "{change}");
    assert!(change.to_string().contains("change_stage"), "{change}");

    Seen {
        customer: c,
        last_sequence,
        stage_event,
        opportunity: o,
        keyed_touchpoint,
    }
}

/// After a restart: the read models are still there, the streams go on where they were.
async fn after_restart(p: &Platform, seen: &Seen) {
    let am = p.token("am-li", "account_manager");
    let auditor = p.token("audit-wu", "auditor");
    let c = &seen.customer;
    let view = p
        .query(&format!("/v1/customers/{c}"), &am, None)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(view["last_sequence"], seen.last_sequence, "{view}");
    assert_eq!(
        view["open_opportunities"][0]["opportunity_id"],
        seen.opportunity.as_str()
    );
    p.query(
        &format!("/v1/audit/events/{}", seen.stage_event),
        &auditor,
        None,
    )
    .await
    .expect(StatusCode::OK);
    // a new touchpoint continues the stream (the command side rebuilt it from the log)
    let next = p
        .command(
            Method::POST,
            &format!("/v1/customers/{c}/touchpoints"),
            &am,
            json!({"touchpoint": {"channel": {"kind": "web_form", "form": "contact-us"}, "summary": "复购"}}),
            &[],
        )
        .await
        .ok();
    assert_eq!(next.body["sequence"], seen.last_sequence + 1);
    let view = p
        .query(&format!("/v1/customers/{c}"), &am, Some(&next.position()))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(view["last_sequence"], seen.last_sequence + 1, "{view}");
    // the timeline (rebuilt alone before the restart) has the touchpoints of before and the
    // new one
    let timeline = p
        .query(
            &format!("/v1/customers/{c}/timeline?category=touchpoint"),
            &am,
            Some(&next.position()),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(timeline["items"].as_array().unwrap().len(), 4, "{timeline}");
    // the idempotency key of before the restart is still known, with the request it came
    // with: the same request gets the first answer, another one is refused naming the key
    let again = p
        .command(
            Method::POST,
            &format!("/v1/customers/{c}/touchpoints"),
            &am,
            seen.keyed_touchpoint.clone(),
            &[("idempotency-key", "e2e-call-1".into())],
        )
        .await;
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    let other = p
        .command(
            Method::POST,
            &format!("/v1/customers/{c}/touchpoints"),
            &am,
            json!({"occurred_at": Utc::now().to_rfc3339(), "touchpoint": {"channel": {"kind": "phone_call",
                "direction": "inbound", "duration_seconds": 320, "wait_seconds": 15, "outcome": "answered"}, "summary": "询价"}}),
            &[("idempotency-key", "e2e-call-1".into())],
        )
        .await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.body
    );
    assert_eq!(other.body["field"], "Idempotency-Key");
}

/// `crm <command>` against the data directory and backend of `crm up`; its output.
fn admin(data_dir: &Path, command: &str, args: &[&str], backend: &[String]) -> String {
    let out = Command::new(CRM)
        .arg(command)
        .args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--partitions",
            "4",
        ])
        .args(args)
        .args(backend)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "crm {command}: {text}");
    text
}

async fn run_everything(data_dir: &Path, backend: &[String]) {
    let started = Instant::now();
    let mut platform = Platform::start(data_dir, backend).await;
    eprintln!("started in {:?}", started.elapsed());
    let seen = scenario(&platform).await;
    eprintln!("scenario done at {:?}", started.elapsed());
    let status = platform.stop().await;
    assert!(
        status.success(),
        "crm up exited with {status}:\n{}",
        platform.log_tail()
    );
    let pg = data_dir.join("pg");
    if backend.is_empty() {
        // the private PostgreSQL ran, and stopped with it
        let log = std::fs::read_to_string(&platform.log).unwrap();
        assert!(log.contains("embedded PostgreSQL started"), "{log}");
        assert!(log.contains("embedded PostgreSQL stopped"), "{log}");
        assert!(
            !pg.join("postmaster.pid").exists(),
            "postgres still runs after crm up stopped"
        );
    }
    // with the platform stopped: migrate, and rebuild the read models into version 2 from
    // offset zero (it switches over); the restarted platform serves version 2
    admin(data_dir, "migrate", &[], backend);
    let replayed = admin(data_dir, "replay", &["--version", "2"], backend);
    assert!(
        replayed.contains("rm_v2") && replayed.contains("now live"),
        "{replayed}"
    );
    // one read model of it rebuilt alone and switched in: what follows still finds it all
    let rebuilt = admin(data_dir, "replay", &["--read-model", "timeline"], backend);
    assert!(
        rebuilt.contains("rm_v2: read model timeline rebuilt") && rebuilt.contains("switched in"),
        "{rebuilt}"
    );
    platform.launch().await;
    eprintln!("replayed and restarted at {:?}", started.elapsed());
    after_restart(&platform, &seen).await;
    // killed outright: the next start takes over (on the embedded default, stopping the
    // orphaned PostgreSQL first) and nothing acknowledged is lost
    let a = platform
        .command(
            Method::POST,
            &format!("/v1/customers/{}/touchpoints", seen.customer),
            &platform.token("am-li", "account_manager"),
            json!({"touchpoint": {"channel": {"kind": "wechat", "direction": "inbound"}, "summary": "在吗"}}),
            &[],
        )
        .await
        .ok();
    let before_kill = a.body["sequence"].as_i64().unwrap();
    platform.kill();
    platform.launch().await;
    eprintln!("restarted after SIGKILL at {:?}", started.elapsed());
    if backend.is_empty() {
        let log = std::fs::read_to_string(&platform.log).unwrap();
        assert!(
            log.contains("stopping a postgres left running by an earlier crm"),
            "{log}"
        );
    }
    let am = platform.token("am-li", "account_manager");
    let view = platform
        .query(
            &format!("/v1/customers/{}", seen.customer),
            &am,
            Some(&a.position()),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(view["last_sequence"], before_kill, "{view}");
    // every answer of both APIs carries the security headers: open, authenticated, refused,
    // unknown
    for url in [
        format!("{}/healthz", platform.command),
        format!("{}/openapi.json", platform.query),
        format!("{}/v1/customers/{}", platform.query, seen.customer),
        format!("{}/v1/customers", platform.command),
        format!("{}/v1/nowhere", platform.query),
    ] {
        let answer = platform
            .http
            .get(&url)
            .bearer_auth(&am)
            .send()
            .await
            .unwrap();
        for (name, value) in infra::headers::SECURITY_HEADERS {
            assert_eq!(
                answer.headers().get(*name).and_then(|v| v.to_str().ok()),
                Some(*value),
                "{url} ({}): {name}",
                answer.status()
            );
        }
    }
    let status = platform.stop().await;
    assert!(status.success(), "{}", platform.log_tail());
    // secrets never reach the logs: not the signing secret, not a token used in the run
    let log = std::fs::read_to_string(&platform.log).unwrap();
    let secret = std::fs::read_to_string(data_dir.join("auth").join("hs256-secret"));
    if let Ok(secret) = secret {
        assert!(
            !log.contains(secret.trim()),
            "the signing secret is in the log"
        );
    }
    for token in [&am, &platform.token("admin", "administrator")] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token is in the log");
    }
    eprintln!("done in {:?}", started.elapsed());
}

#[tokio::test]
async fn embedded_default_end_to_end() {
    let dir = temp_dir("embedded");
    run_everything(&dir.join("data"), &[]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ Kafka + PostgreSQL

fn admin_options() -> PgConnectOptions {
    std::env::var("CRM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
        .parse::<PgConnectOptions>()
        .unwrap()
        .disable_statement_logging()
}

/// A fresh database, dropped at the end.
struct TestDb {
    name: String,
}

impl TestDb {
    async fn new() -> TestDb {
        let name = format!("e2e_{}", Uuid::now_v7().simple());
        let mut admin = admin_options()
            .connect()
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (CRM_TEST_DATABASE_URL)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        TestDb { name }
    }

    fn url(&self) -> String {
        let base = std::env::var("CRM_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let base = base.split('?').next().unwrap_or_default().to_owned();
        let prefix = base.rsplit_once('/').map(|(p, _)| p).unwrap_or(&base);
        format!("{prefix}/{}", self.name)
    }

    async fn drop_it(self) {
        if let Ok(mut admin) = admin_options().connect().await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await;
        }
    }
}

#[tokio::test]
async fn kafka_and_postgresql_end_to_end() {
    let broker = crm_tests::KafkaBroker::start();
    broker.require_transactions();
    let db = TestDb::new().await;
    let dir = temp_dir("kafka");
    let backend: Vec<String> = [
        "--kafka-brokers",
        broker.brokers(),
        "--topic-prefix",
        &crm_tests::unique_prefix("e2e"),
        "--database-url",
        &db.url(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    run_everything(&dir.join("data"), &backend).await;
    // nothing embedded was used
    assert!(!dir.join("data/pg").exists());
    assert!(!dir.join("data/log").exists());
    db.drop_it().await;
    let _ = std::fs::remove_dir_all(&dir);
}
