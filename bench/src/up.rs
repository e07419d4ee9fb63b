//! Freshness on the embedded default, as a user runs it: the real `crm up` binary (command,
//! projection and query service in one process, the embedded log under its `--data-dir`),
//! pointed at a database of its own on the run's PostgreSQL server, with the authentication it
//! sets up by itself (a signing secret under the data directory; tokens minted by
//! `crm token --data-dir`, as its start-up message tells a user to).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::gen::Generator;
use crate::procs;
use crate::run::{fresh_database, measure_freshness, Preset, Target};
use crate::stats::round;

/// Which `crm` binary the harness starts (`run` and `up-path`).
#[derive(Debug, Clone, clap::Args)]
pub struct CrmBinArgs {
    /// The `crm` binary, for `crm up` (default: beside crm-bench).
    #[arg(long, env = "CRM_BENCH_CRM_BIN")]
    pub crm_bin: Option<PathBuf>,
}

/// The `crm` binary: `explicit`, else beside this one (`cargo build --release -p crm-bench -p crm`
/// puts both in the same directory).
pub fn crm_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_owned());
        }
        bail!("--crm-bin {}: no such file", p.display());
    }
    let me = std::env::current_exe().context("locating crm-bench")?;
    let beside = me
        .parent()
        .map(|d| d.join("crm"))
        .context("crm-bench's own path has no directory")?;
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "no `crm` binary at {}: build it beside crm-bench (`cargo build --release -p crm-bench -p crm`) or pass --crm-bin (CRM_BENCH_CRM_BIN)",
        beside.display()
    )
}

/// Environment variables `crm up` and `crm token` read that would change what runs (another
/// backend, another authentication, other batches): a user's plain `crm up` has none of them.
pub(crate) fn clean_env(cmd: &mut std::process::Command) {
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if k.starts_with("CRM_") || k == "KAFKA_BROKERS" || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
}

/// `crm token --data-dir <dir> --subject <subject> --role <role>`.
async fn token(crm: &Path, data_dir: &Path, subject: &str, role: &str) -> anyhow::Result<String> {
    let mut cmd = std::process::Command::new(crm);
    clean_env(&mut cmd);
    cmd.arg("token").arg("--data-dir").arg(data_dir).args([
        "--subject",
        subject,
        "--role",
        role,
        "--hours",
        "24",
    ]);
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .with_context(|| format!("running {} token", crm.display()))?;
    if !out.status.success() {
        bail!(
            "crm token failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let token = String::from_utf8(out.stdout)
        .context("crm token printed no UTF-8")?
        .trim()
        .to_owned();
    if token.is_empty() {
        bail!("crm token printed nothing");
    }
    Ok(token)
}

pub struct Embedded<'a> {
    pub crm_bin: Option<&'a Path>,
    pub work: &'a Path,
    pub postgres: &'a str,
    pub database: &'a str,
    pub seed: u64,
    pub now: DateTime<Utc>,
    pub preset: &'a Preset,
}

/// A running `crm up` and what talks to it.
pub(crate) struct Running {
    pub up: procs::Proc,
    pub crm: PathBuf,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub http: reqwest::Client,
    pub command_url: String,
    pub query_url: String,
    /// The projection's /metrics.
    pub projection_url: String,
    pub admin: String,
    pub adapter: String,
    /// From the start to the query API serving.
    pub ready_seconds: f64,
}

/// Starts `crm up` on a fresh `database` and a fresh data directory `work/crm-up`, mints an
/// administrator's and a channel adapter's token with `crm token --data-dir`, and waits until
/// the query API serves.
pub(crate) async fn start(
    crm_bin: Option<&Path>,
    work: &Path,
    postgres: &str,
    database: &str,
) -> anyhow::Result<Running> {
    let crm = crm_binary(crm_bin)?;
    let (database_url, _) = fresh_database(postgres, database).await?;
    let data_dir = work.join("crm-up");
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let (command_port, query_port, projection_port) = (
        procs::free_port()?,
        procs::free_port()?,
        procs::free_port()?,
    );
    let args: Vec<String> = vec![
        "up".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--command-listen".into(),
        format!("127.0.0.1:{command_port}"),
        "--query-listen".into(),
        format!("127.0.0.1:{query_port}"),
        "--projection-listen".into(),
        format!("127.0.0.1:{projection_port}"),
        "--database-url".into(),
        database_url.clone(),
    ];
    let mut cmd = std::process::Command::new(&crm);
    clean_env(&mut cmd);
    let mut up = procs::spawn_command("crm up", cmd, &args, work.join("crm-up.log"))?;
    let started = Instant::now();
    procs::wait_for_port(&mut up, command_port, Duration::from_secs(120))?;
    procs::wait_for_port(&mut up, query_port, Duration::from_secs(60))?;
    // the signing secret exists once the ports are bound (`crm up` makes it first)
    let admin = token(&crm, &data_dir, "bench-admin", "administrator").await?;
    let adapter = token(&crm, &data_dir, "adapter:bench", "channel_adapter").await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()?;
    let command_url = format!("http://127.0.0.1:{command_port}");
    let query_url = format!("http://127.0.0.1:{query_port}");

    // serving: the query API answers once the projection has a live version
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        up.check_alive()?;
        let r = http
            .get(format!("{query_url}/v1/customers?limit=1"))
            .bearer_auth(&admin)
            .send()
            .await;
        if matches!(&r, Ok(a) if a.status().is_success()) {
            break;
        }
        if Instant::now() > deadline {
            let said = match r {
                Ok(a) => a.status().to_string(),
                Err(err) => err.to_string(),
            };
            bail!(
                "crm up's query API did not serve within 120 s (last answer: {said}); its log:\n{}",
                procs::tail(&up.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Running {
        up,
        crm,
        data_dir,
        database_url,
        http,
        command_url,
        query_url,
        projection_url: format!("http://127.0.0.1:{projection_port}"),
        admin,
        adapter,
        ready_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Starts `crm up`, loads the data set's first customers through its command API (their
/// single commands, then their touchpoints through the batch endpoint), then measures
/// freshness at the preset's rate; `crm up` is stopped (SIGTERM) at the end.
pub async fn freshness(e: Embedded<'_>) -> anyhow::Result<Value> {
    let Running {
        mut up,
        crm,
        data_dir,
        http,
        command_url,
        query_url,
        admin,
        adapter,
        ready_seconds,
        ..
    } = start(e.crm_bin, e.work, e.postgres, e.database).await?;

    // a few customers, through its command API
    let loading = Instant::now();
    let customers = e.preset.embedded_freshness_customers.max(1);
    let scripts: Vec<_> = Generator::new(e.seed, customers, e.preset.touchpoints, e.now).collect();
    let outcomes: Vec<anyhow::Result<usize>> = futures::stream::iter(scripts.iter().map(|s| {
        let (http, command_url, admin) = (&http, &command_url, &admin);
        async move {
            for c in &s.commands {
                let r = http
                    .request(c.method.clone(), format!("{command_url}{}", c.path))
                    .bearer_auth(admin)
                    .json(&c.body)
                    .send()
                    .await?;
                let status = r.status();
                if !status.is_success() {
                    let body = r.text().await.unwrap_or_default();
                    bail!("{} {}: {status} {body}", c.method, c.path);
                }
                let _ = r.bytes().await;
            }
            Ok(s.commands.len())
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    let mut commands = 0;
    for o in outcomes {
        commands += o.context("loading crm up")?;
    }
    let items: Vec<&Value> = scripts.iter().flat_map(|s| s.touchpoints.iter()).collect();
    let mut touchpoints = 0u64;
    for chunk in items.chunks(e.preset.ingest_batch.max(1)) {
        let mut body = Vec::new();
        for item in chunk {
            serde_json::to_writer(&mut body, item)?;
            body.push(b'\n');
        }
        let v = crate::run::post_touchpoints(&http, &command_url, &adapter, body).await?;
        touchpoints += v["accepted"].as_u64().unwrap_or(0);
    }
    let load_seconds = loading.elapsed().as_secs_f64();
    up.check_alive()?;

    let ids: Vec<Uuid> = scripts.iter().map(|s| s.customer_id).collect();
    let target = Arc::new(Target {
        http: http.clone(),
        command_url,
        token: admin,
        query_url,
    });
    let measured = measure_freshness(
        target,
        &ids,
        e.preset.freshness_rate,
        e.preset.freshness_seconds,
    )
    .await;
    let peak = up.peak_kib();
    let log = up.log.clone();
    let alive = up.check_alive();
    let stopped = up.terminate(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut v = measured?;
    alive?;
    v["what"] = json!("the real `crm up` binary as a user runs it (one process: command, projection and query service; the embedded log under --data-dir in the work directory; --database-url a database of its own on the run's PostgreSQL; every other setting its default, e.g. batches of 1000 records or 200 ms; tokens from `crm token --data-dir`): POST a touchpoint, then GET /v1/customers/{id} (360 view) with CRM-Min-Position = the answer's crm-position, polling on 503; from the command's answer to the view's 200; run after the Kafka-backed services were stopped");
    v["crm_binary"] = json!(crm.display().to_string());
    v["database"] = json!(e.database);
    v["customers_loaded"] = json!(ids.len());
    v["commands_loaded"] = json!(commands);
    v["touchpoints_loaded"] = json!(touchpoints);
    v["start_to_serving_seconds"] = json!(round(ready_seconds));
    v["load_seconds"] = json!(round(load_seconds));
    v["crm_up_peak_rss_kib"] = json!(peak);
    v["crm_up_stopped"] = match stopped {
        Ok(status) => json!(status),
        Err(err) => json!(format!("{err:#}; log: {}", log.display())),
    };
    Ok(v)
}
