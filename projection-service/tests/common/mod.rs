//! Test support: a fresh database per test and the event-stream world (the test bed's
//! `crm_tests::world`, shared with query-service's tests), plus what is projection-service's
//! own: batching a log as a consumer polls it, snapshots of the read models, replays, and the
//! projection-service process.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use domain::RecordedEvent;
use infra::Position;
use sqlx::PgPool;

pub use crm_tests::world::*;

/// Splits the log into batches of the given sizes (cycled), as a consumer would poll them.
pub fn batches(
    log: &[(Position, RecordedEvent)],
    sizes: &[usize],
) -> Vec<Vec<(Position, RecordedEvent)>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < log.len() {
        let n = sizes[k % sizes.len()].max(1);
        out.push(log[i..(i + n).min(log.len())].to_vec());
        i += n;
        k += 1;
    }
    out
}

/// Every read-model table of a schema that a rebuild reproduces (the registry's), as text,
/// for comparing two versions or two moments.
pub async fn snapshot(pool: &PgPool, schema: &str) -> BTreeMap<String, String> {
    let tables = projection_service::read_models::tables();
    let mut out = BTreeMap::new();
    for table in tables {
        let (text,): (String,) = sqlx::query_as(&format!(
            "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM {schema}.{table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.insert(table.to_owned(), text);
    }
    out
}

/// As [`snapshot`], less the tables whose rows depend on when a replay ran, not on the log:
/// RFM (recomputed as of now) and stage alerts (opened by the sweep).
pub async fn projected_facts(pool: &PgPool, schema: &str) -> BTreeMap<String, String> {
    let mut facts = snapshot(pool, schema).await;
    for t in ["rfm", "rfm_runs", "stage_alerts"] {
        facts.remove(t);
    }
    facts
}

/// Replays the whole log of `source` into version `version` of projection `rm` from offset
/// zero, to its end, in batches of `batch`; activates it when told to.
pub async fn replay_into(
    pool: &PgPool,
    source: projection_service::EventSource,
    version: i32,
    batch: projection_service::BatchOptions,
    activate: bool,
) -> projection_service::ReplayOutcome {
    projection_service::replay_on(
        pool.clone(),
        source,
        projection_service::ReplayOptions {
            projection: "rm".into(),
            version,
            batch,
            activate,
            catch_up_lag: 0,
            jobs: projection_service::JobOptions::default(),
        },
        std::sync::Arc::new(projection_service::SystemClock),
        projection_service::Metrics::new().unwrap(),
        |_| {},
    )
    .await
    .unwrap()
}

/// Asserts two snapshots are equal, naming the tables that differ.
pub fn assert_same(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, what: &str) {
    let differ: Vec<&String> = a.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
    assert!(differ.is_empty(), "{what}: tables differ: {differ:?}");
}

/// A projection-service process (its binary), killed when dropped, so that a failing test
/// leaves none behind. Its output is appended to `log`.
pub struct ProjectionProcess(std::process::Child);

impl ProjectionProcess {
    /// Starts `projection-service <args>` on the settings' broker and topics and on
    /// `database_url`, with small batches and a short session timeout.
    pub fn spawn(
        s: &infra::kafka::KafkaSettings,
        database_url: &str,
        log: &std::path::Path,
        args: &[&str],
    ) -> ProjectionProcess {
        use std::process::Stdio;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_projection-service"))
            .args(args)
            .args(["--kafka-brokers", s.brokers.as_str()])
            .args(["--topic-prefix", s.topic_prefix.as_str()])
            .args(["--partitions", &s.partitions.to_string()])
            .args(["--database-url", database_url])
            .args(["--batch-max", "100", "--batch-wait", "50ms"])
            .args(["--session-timeout-ms", "3000"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .map(ProjectionProcess)
            .unwrap()
    }

    /// SIGKILL, and waits for it.
    pub fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for ProjectionProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// command-service on `log`, with authentication off (every caller an administrator) and the
/// default business-time window; `source` is the events' CloudEvents source.
pub fn command_app(
    source: &str,
    log: std::sync::Arc<dyn infra::log::CustomerLog>,
) -> std::sync::Arc<command_service::App> {
    let auth = infra::auth::Authenticator::from_args(&infra::auth::AuthArgs {
        auth_disabled: true,
        ..infra::auth::AuthArgs::default()
    })
    .unwrap();
    command_service::App::new(
        log,
        source.into(),
        auth,
        domain::limits::BusinessTimeWindow::default(),
    )
    .unwrap()
}

/// Waits until `check` holds; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
