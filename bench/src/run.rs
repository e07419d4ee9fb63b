//! The orchestrator: starts the broker and the services, loads the data set, and measures
//! each figure beside its physical limit in the same run.
//!
//! The data set is generated once into files (`spool`) and every phase streams its part from
//! there, so that the harness's memory stays bounded at any size: every event of every preset
//! goes through the real path (the command API, the batch endpoint, the inbound topic, the
//! log, the projection's replay), none is copied into the read models in SQL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use futures::StreamExt;
use infra::kafka::{provision_topics, KafkaSettings, StoredRecord};
use infra::log::CustomerLog;
use projection_service::{
    drop_version, BatchOptions, EmbeddedTopics, EventSource, JobOptions, ProjectionVersion,
    Projector, ReplayOptions, SystemClock,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::gen::{self, Rng};
use crate::procs::{self, BrokerStorage, Proc};
use crate::serve::connect;
use crate::spool::{self, Spool};
use crate::stats::{rate, ratio, round, CpuMeter, Latency, Machine};

/// Sizes and rates of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Preset {
    pub name: String,
    pub customers: usize,
    /// Touchpoints per customer, from..to (exclusive).
    pub touchpoints: (u64, u64),
    /// Customers loaded at once (each customer's commands in order).
    pub load_concurrency: usize,
    pub ingest_batch: usize,
    pub ingest_concurrency: usize,
    /// At most this many of the records the batch endpoint appended are read back and sent by
    /// the bare producer (the limit): the first ones of each partition.
    pub bare_producer_records: usize,
    /// At most this many events go into the embedded log for its figure (the first ones of
    /// each partition), to bound the phase's time.
    pub embedded_records: usize,
    /// At most this many rows in the COPY baseline (the same share of every table).
    pub copy_baseline_rows: usize,
    pub latency_rate: u64,
    pub latency_seconds: u64,
    pub freshness_rate: u64,
    pub freshness_seconds: u64,
    /// Customers loaded into `crm up` for the freshness of the embedded default.
    pub embedded_freshness_customers: usize,
    pub query_seconds: u64,
    pub query_concurrency: usize,
    /// Where the private broker keeps the log (nothing when `--brokers` is given).
    pub broker_storage: BrokerStorage,
}

impl Preset {
    pub fn named(name: &str) -> anyhow::Result<Preset> {
        let base = Preset {
            name: name.to_owned(),
            customers: 2000,
            touchpoints: (15, 45),
            load_concurrency: 48,
            ingest_batch: 1000,
            ingest_concurrency: 4,
            bare_producer_records: 100_000,
            embedded_records: 1_000_000,
            copy_baseline_rows: 5_000_000,
            latency_rate: 200,
            latency_seconds: 15,
            freshness_rate: 20,
            freshness_seconds: 15,
            embedded_freshness_customers: 50,
            query_seconds: 10,
            query_concurrency: 4,
            broker_storage: BrokerStorage::Memory,
        };
        Ok(match name {
            "tiny" => Preset {
                customers: 30,
                touchpoints: (5, 10),
                ingest_batch: 100,
                latency_rate: 20,
                latency_seconds: 2,
                freshness_rate: 5,
                freshness_seconds: 2,
                embedded_freshness_customers: 10,
                query_seconds: 1,
                ..base
            },
            "small" => base,
            // 100k customers, ~12.6M events, every one through the real path
            // (the memory engine would need ~3 KB a record: ~45 GB for this log)
            "large" => Preset {
                customers: 100_000,
                touchpoints: (50, 110),
                broker_storage: BrokerStorage::Sqlite,
                ..base
            },
            other => bail!("unknown preset `{other}` (tiny, small, large)"),
        })
    }
}

/// Where a measurement runs: the broker, PostgreSQL, the partitions.
#[derive(Debug, Clone, clap::Args)]
pub struct BedArgs {
    /// An existing Kafka-protocol broker; otherwise a private nisshi with its memory engine.
    #[arg(long, env = "CRM_BENCH_BROKERS")]
    pub brokers: Option<String>,
    /// The nisshi (or tansu) binary for the private broker.
    #[arg(long, env = "CRM_BENCH_BROKER_BIN")]
    pub broker_bin: Option<PathBuf>,
    /// Where the private broker keeps the log (default: the preset's; `memory` for tiny and
    /// small, `sqlite` for large, whose log does not fit in memory).
    #[arg(long, env = "CRM_BENCH_BROKER_STORAGE", value_enum)]
    pub broker_storage: Option<BrokerStorage>,
    /// PostgreSQL server (the run's database is created afresh on it).
    #[arg(
        long,
        env = "CRM_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub postgres: String,
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// tiny (smoke test), small (about 5 minutes), large (100k customers / ~12.6M events, about
    /// an hour).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Where to write the figures as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub bed: BedArgs,
    /// The database to create afresh (default `crm_bench_<preset>`; the embedded default's
    /// freshness uses `<database>_up`); left in place afterwards for inspection.
    #[arg(long)]
    pub database: Option<String>,
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Override the preset's customer count.
    #[arg(long)]
    pub customers: Option<usize>,
    /// Override the preset's load concurrency (customers loaded at once).
    #[arg(long)]
    pub load_concurrency: Option<usize>,
    /// Override the preset's cap on the events of the embedded default's figure.
    #[arg(long)]
    pub embedded_records: Option<usize>,
    /// Override the preset's cap on the rows of the COPY baseline.
    #[arg(long)]
    pub copy_baseline_rows: Option<usize>,
    #[command(flatten)]
    pub crm: crate::up::CrmBinArgs,
}

/// Everything measured, as written to the JSON file.
#[derive(Debug, Default, Serialize)]
struct Report {
    preset: Value,
    machine: Value,
    started_at: String,
    data_set: Value,
    data: Value,
    load: Value,
    ingest: Value,
    command_latency: Value,
    replay: Value,
    embedded: Value,
    freshness: Value,
    freshness_embedded: Value,
    queries: Value,
    queries_jit_off: Value,
    memory: Value,
    targets: Value,
    /// Wall time of each phase, in seconds.
    phase_seconds: serde_json::Map<String, Value>,
    /// The phases in the order they ran.
    phase_order: Vec<String>,
    /// The harness's own peak resident set (VmHWM) at the end of each phase, in KiB: it
    /// stays bounded whatever the data set's size.
    harness_peak_kib: serde_json::Map<String, Value>,
    wall_seconds: f64,
}

impl Report {
    /// Records and prints the wall time of a phase that started at `started`.
    fn phase(&mut self, name: &str, started: Instant) {
        let s = round(started.elapsed().as_secs_f64());
        let peak = crate::stats::vm_hwm_kib(std::process::id());
        eprintln!(
            "crm-bench: phase {name}: {s:.1} s (harness peak {} MiB)",
            peak.unwrap_or(0) / 1024
        );
        self.phase_seconds.insert(name.to_owned(), json!(s));
        self.phase_order.push(name.to_owned());
        self.harness_peak_kib.insert(name.to_owned(), json!(peak));
    }
}

pub(crate) struct Ctx {
    pub http: reqwest::Client,
    pub command_url: String,
    pub admin: String,
    pub adapter: String,
}

fn default_broker_bin() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/crm-tools/nisshi-0.7.0/bin/nisshi")
}

/// Creates `database` afresh on the server `postgres` (dropping it first); returns its URL and
/// the server's version.
pub(crate) async fn fresh_database(
    postgres: &str,
    database: &str,
) -> anyhow::Result<(String, String)> {
    let admin_pool = connect(&format!("{postgres}/postgres"), 1).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&admin_pool)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&admin_pool)
        .await?;
    let (pg_version,): (String,) = sqlx::query_as("SELECT version()")
        .fetch_one(&admin_pool)
        .await?;
    admin_pool.close().await;
    Ok((format!("{postgres}/{database}"), pg_version))
}

/// The broker: `brokers` when given, else a private nisshi (memory engine) started in `dir`.
pub(crate) fn broker(
    brokers: Option<&str>,
    broker_bin: Option<PathBuf>,
    storage: BrokerStorage,
    dir: &std::path::Path,
) -> anyhow::Result<(Option<Proc>, String)> {
    if let Some(b) = brokers {
        return Ok((None, b.to_owned()));
    }
    let bin = broker_bin.unwrap_or_else(default_broker_bin);
    if !bin.is_file() {
        bail!(
            "no broker: {} is missing (scripts/kafka-testbed.sh ensure builds it), and no --brokers",
            bin.display()
        );
    }
    let (p, b) = procs::start_broker(&bin, dir, storage)?;
    Ok((Some(p), b))
}

/// The topics of a run under `prefix`, created; returns the harness's settings and the
/// arguments that point a service role at them.
pub(crate) async fn topics(
    brokers: &str,
    prefix: &str,
    partitions: i32,
) -> anyhow::Result<(KafkaSettings, Vec<String>)> {
    let mut settings = KafkaSettings::new(brokers.to_owned(), prefix.to_owned());
    settings.partitions = partitions;
    settings.client_id = "crm-bench".into();
    provision_topics(&settings)
        .await
        .context("provisioning topics")?;
    let log_args = vec![
        "--brokers".to_owned(),
        brokers.to_owned(),
        "--prefix".to_owned(),
        prefix.to_owned(),
        "--partitions".to_owned(),
        partitions.to_string(),
    ];
    Ok((settings, log_args))
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let wall = Instant::now();
    let mut preset = Preset::named(&args.preset)?;
    if let Some(c) = args.customers {
        preset.customers = c;
    }
    if let Some(c) = args.load_concurrency {
        preset.load_concurrency = c.max(1);
    }
    if let Some(n) = args.embedded_records {
        preset.embedded_records = n.max(1);
    }
    if let Some(n) = args.copy_baseline_rows {
        preset.copy_baseline_rows = n.max(1);
    }
    if let Some(s) = args.bed.broker_storage {
        preset.broker_storage = s;
    }
    let work =
        std::env::temp_dir().join(format!("crm-bench-{}-{}", preset.name, std::process::id()));
    std::fs::create_dir_all(&work)?;
    eprintln!(
        "crm-bench: preset {} (logs in {})",
        preset.name,
        work.display()
    );

    // ---------------------------------------------------------------- the test bed
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| format!("crm_bench_{}", preset.name));
    if !database
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        bail!("--database: lower-case letters, digits and _ only");
    }
    let (database_url, pg_version) = fresh_database(&args.bed.postgres, &database).await?;
    let pool = connect(&database_url, 4).await?;
    let machine = Machine::probe(pg_version);

    let (broker, brokers) = broker(
        args.bed.brokers.as_deref(),
        args.bed.broker_bin.clone(),
        preset.broker_storage,
        &work.join("broker"),
    )?;
    let prefix = format!("bench-{}-{}.", preset.name, Utc::now().timestamp_millis());
    let (settings, log_args) = topics(&brokers, &prefix, args.bed.partitions).await?;
    let topic = settings.topics().customer_events();

    // ---------------------------------------------------------------- command-service
    let secret = format!("{}{}", Uuid::now_v7().simple(), Uuid::now_v7().simple());
    let (issuer, audience) = ("crm-bench", "crm");
    let mint = |subject: &str, role: &str| {
        infra::auth::mint_hs256(
            secret.as_bytes(),
            issuer,
            audience,
            subject,
            &[role.to_owned()],
            Duration::from_secs(24 * 3600),
        )
    };
    let command_port = procs::free_port()?;
    let mut role = vec!["serve-command".to_owned()];
    role.extend(log_args.clone());
    role.extend([
        "--listen".to_owned(),
        format!("127.0.0.1:{command_port}"),
        "--secret".to_owned(),
        secret.clone(),
        "--issuer".to_owned(),
        issuer.to_owned(),
        "--audience".to_owned(),
        audience.to_owned(),
    ]);
    let mut command = procs::spawn_role("command-service", &role, work.join("command.log"))?;
    procs::wait_for_port(&mut command, command_port, Duration::from_secs(120))?;
    let ctx = Ctx {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(60))
            .build()?,
        command_url: format!("http://127.0.0.1:{command_port}"),
        admin: mint("bench-admin", "administrator")?,
        adapter: mint("adapter:bench", "channel_adapter")?,
    };

    let mut preset_value = serde_json::to_value(&preset)?;
    preset_value["services_kafka_extra"] =
        json!(std::env::var("CRM_BENCH_KAFKA_EXTRA").unwrap_or_default());
    let mut report = Report {
        preset: preset_value,
        machine: serde_json::to_value(&machine)?,
        started_at: Utc::now().to_rfc3339(),
        ..Report::default()
    };

    // ---------------------------------------------------------------- the data set, on disk
    let t = Instant::now();
    let now = Utc::now();
    let data_set = generate(work.join("data-set"), args.seed, &preset, now).await?;
    report.data_set = data_set.summary();
    eprintln!("data set: {}", report.data_set);
    report.phase("generate", t);

    // ---------------------------------------------------------------- load (single commands)
    let t = Instant::now();
    report.load = load(&ctx, &data_set, preset.load_concurrency).await?;
    eprintln!("load: {}", report.load);
    report.phase("load", t);

    // ---------------------------------------------------------------- 1. ingest vs bare producer
    let t = Instant::now();
    // whose CPU time each ingest figure counts (per 1,000 records: steadier than a rate)
    let mut cpu = vec![
        ("command_service", command.pid()),
        ("harness", std::process::id()),
    ];
    if let Some(b) = &broker {
        cpu.push(("broker", b.pid()));
    }
    report.ingest = ingest(&ctx, &settings, &topic, &data_set, &preset, &cpu).await?;
    eprintln!("ingest: {}", report.ingest);
    report.phase("ingest", t);
    let bare = report.ingest["bare_producer"]["records_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let t = Instant::now();
    report.ingest["inbound_topic"] = inbound(&ctx, &settings, &data_set, bare).await?;
    eprintln!("inbound: {}", report.ingest["inbound_topic"]);
    report.phase("inbound", t);

    // ---------------------------------------------------------------- 2. command latency
    let t = Instant::now();
    report.command_latency = command_latency(&ctx, &data_set.customers, &preset).await?;
    eprintln!("command latency: {}", report.command_latency);
    command.check_alive()?;
    report.phase("command_latency", t);
    data_set.remove();

    // ---------------------------------------------------------------- 3. replay vs COPY
    let t = Instant::now();
    let ends = end_offsets(&settings, &topic).await?;
    let log_records: i64 = ends.iter().sum();
    // the replay's batch size (records per transaction): `crm replay`'s default unless
    // CRM_BENCH_REPLAY_BATCH
    let replay_batch: usize = std::env::var("CRM_BENCH_REPLAY_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(projection_service::REPLAY_BATCH_RECORDS);
    let mut role = vec!["replay".to_owned()];
    role.extend(log_args.clone());
    role.extend(["--database-url".to_owned(), database_url.clone()]);
    role.extend(["--max-records".to_owned(), replay_batch.to_string()]);
    let replay_proc = procs::spawn_role("replay", &role, work.join("replay.log"))?;
    let replay_out = watch_replay(replay_proc, &[&command]).await?;
    let events_applied = replay_out["events_applied"].as_u64().unwrap_or(0);
    let replay_seconds = replay_out["total_seconds"].as_f64().unwrap_or(0.0);
    let consumer_seconds = replay_out["consumer_seconds"]
        .as_f64()
        .unwrap_or(replay_seconds);
    let replay_eps = events_applied as f64 / consumer_seconds.max(1e-9);
    report.phase("replay", t);
    let t = Instant::now();
    let copy = copy_baseline(
        &pool,
        events_applied,
        &work.join("copy"),
        preset.copy_baseline_rows,
    )
    .await?;
    let copy_eps = copy["events_per_second_equivalent"].as_f64().unwrap_or(0.0);
    report.phase("copy_baseline", t);
    report.replay = json!({
        "what": "projection_service::replay (Kafka consumer, manual assignment, batches of `batch` records, one transaction per lane per batch) from offset 0 into rm_v1, then RFM recompute, alert sweep and activation; a separate process",
        "batch": replay_batch,
        "log_records": log_records,
        "events_applied": events_applied,
        "consumer_seconds": round(consumer_seconds),
        "total_seconds_with_rfm_sweep_activation": round(replay_seconds),
        "events_per_second": round(replay_eps),
        "copy_baseline": copy,
        "ratio_to_copy": ratio(replay_eps, copy_eps),
        "peak_rss_kib": replay_out["vm_hwm_kib"],
        "peak_rss_during_replay_kib": replay_out["others_peak_kib"],
    });
    eprintln!("replay: {}", report.replay);

    // ---------------------------------------------------------------- embedded default
    let t = Instant::now();
    report.embedded = embedded(&pool, &settings, &topic, &work, preset.embedded_records).await?;
    eprintln!("embedded: {}", report.embedded);
    report.phase("embedded", t);
    let sizes = data_size(&pool, "rm_v1").await?;
    report.data = sizes.clone();

    // ---------------------------------------------------------------- live projection + query
    let t = Instant::now();
    let mut role = vec!["serve-projection".to_owned()];
    role.extend(log_args.clone());
    role.extend(["--database-url".to_owned(), database_url.clone()]);
    let mut projection =
        procs::spawn_role("projection-service", &role, work.join("projection.log"))?;
    let query_port = procs::free_port()?;
    let role = vec![
        "serve-query".to_owned(),
        "--database-url".to_owned(),
        database_url.clone(),
        "--listen".to_owned(),
        format!("127.0.0.1:{query_port}"),
        "--secret".to_owned(),
        secret.clone(),
        "--issuer".to_owned(),
        issuer.to_owned(),
        "--audience".to_owned(),
        audience.to_owned(),
    ];
    let mut query = procs::spawn_role("query-service", &role, work.join("query.log"))?;
    procs::wait_for_port(&mut query, query_port, Duration::from_secs(60))?;
    let query_url = format!("http://127.0.0.1:{query_port}");
    projection.check_alive()?;

    // ---------------------------------------------------------------- 4. freshness
    report.freshness = freshness(&ctx, &query_url, &data_set.customers, &preset).await?;
    eprintln!("freshness: {}", report.freshness);
    projection.check_alive()?;
    report.phase("freshness", t);

    // ---------------------------------------------------------------- 5. queries
    let t = Instant::now();
    report.queries = queries(&ctx, &query_url, &pool, &preset).await?;
    eprintln!("queries: {}", report.queries);

    // the same queries with PostgreSQL's JIT compilation off (a database setting, no code)
    sqlx::query(&format!("ALTER DATABASE {database} SET jit = off"))
        .execute(&pool)
        .await?;
    let jit_port = procs::free_port()?;
    let mut role = role.clone();
    if let Some(listen) = role.iter_mut().find(|a| a.starts_with("127.0.0.1:")) {
        *listen = format!("127.0.0.1:{jit_port}");
    }
    let mut query_jit_off = procs::spawn_role(
        "query-service (jit=off)",
        &role,
        work.join("query-jit-off.log"),
    )?;
    procs::wait_for_port(&mut query_jit_off, jit_port, Duration::from_secs(60))?;
    let mut q = queries(
        &ctx,
        &format!("http://127.0.0.1:{jit_port}"),
        &pool,
        &preset,
    )
    .await?;
    q["what"] = json!("the same, against a second query-service after ALTER DATABASE ... SET jit = off (PostgreSQL compiles expensive plans with LLVM by default: hundreds of ms per call for the pipeline's functions)");
    report.queries_jit_off = q;
    eprintln!("queries (jit off): {}", report.queries_jit_off);
    query_jit_off.stop();
    sqlx::query(&format!("ALTER DATABASE {database} RESET jit"))
        .execute(&pool)
        .await?;
    report.phase("queries", t);

    // ---------------------------------------------------------------- 6. memory
    report.memory = json!({
        "what": "VmHWM (peak resident set) of each process over the whole run; the replay process's own figure is the replay; crm up's is in freshness_embedded",
        "command_service_kib": command.peak_kib(),
        "projection_replay_kib": report.replay["peak_rss_kib"],
        "projection_service_live_kib": projection.peak_kib(),
        "query_service_kib": query.peak_kib(),
        "broker_kib": broker.as_ref().and_then(Proc::peak_kib),
        "broker_storage": if broker.is_some() { json!(preset.broker_storage) } else { json!("--brokers") },
        "broker_directory_bytes": dir_bytes(&work.join("broker")),
        "harness_kib": crate::stats::vm_hwm_kib(std::process::id()),
    });
    query.stop();
    projection.stop();
    command.stop();
    if let Some(b) = broker {
        b.stop();
    }
    // the SQLite broker's files (tens of GB at large); its log stays
    if let Ok(entries) = std::fs::read_dir(work.join("broker")) {
        for e in entries.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with("nisshi.db") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    // ---------------------------------------------------------------- 7. the embedded default's freshness
    let t = Instant::now();
    report.freshness_embedded = match crate::up::freshness(crate::up::Embedded {
        crm_bin: args.crm.crm_bin.as_deref(),
        work: &work,
        postgres: &args.bed.postgres,
        database: &format!("{database}_up"),
        seed: args.seed,
        now,
        preset: &preset,
    })
    .await
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("crm-bench: the embedded default's freshness failed: {e:#}");
            json!({"error": format!("{e:#}")})
        }
    };
    eprintln!(
        "freshness (embedded default): {}",
        report.freshness_embedded
    );
    report.phase("freshness_embedded", t);

    report.targets = targets(&report);
    report.wall_seconds = round(wall.elapsed().as_secs_f64());
    pool.close().await;

    publish(&report, args.out.as_deref())?;
    eprintln!("crm-bench: wall time of each phase (s):");
    for name in &report.phase_order {
        if let Some(s) = report.phase_seconds.get(name) {
            eprintln!("  {name:<20} {s}");
        }
    }
    eprintln!("  {:<20} {}", "whole run", report.wall_seconds);
    let _ = std::fs::remove_dir_all(work.join("embedded"));
    Ok(())
}

/// The bytes of the files under `dir` (the private broker's SQLite file and its journal).
pub(crate) fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn targets(r: &Report) -> Value {
    let replay = r.replay["events_per_second"].as_f64().unwrap_or(0.0);
    let ingest = r.ingest["http_batch"]["touchpoints_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let view = r.queries["customer_360"]["latency"]["p99_ms"]
        .as_f64()
        .unwrap_or(f64::MAX);
    let fresh = r.freshness["latency"]["p99_ms"]
        .as_f64()
        .unwrap_or(f64::MAX);
    // null (and not met) when the phase failed or measured nothing
    let embedded = r.freshness_embedded["latency"]["p99_ms"]
        .as_f64()
        .filter(|_| r.freshness_embedded["measured"].as_u64() > Some(0));
    json!({
        "replay_events_per_second": {"target": 50000, "measured": replay, "met": replay >= 50000.0},
        "ingest_touchpoints_per_second": {"target": 20000, "measured": ingest, "met": ingest >= 20000.0},
        "customer_360_p99_ms": {"target": 20, "measured": view, "met": view <= 20.0},
        "freshness_p99_ms": {"target": 500, "measured": fresh, "met": fresh <= 500.0},
        "freshness_embedded_p99_ms": {"target": 100, "measured": embedded, "met": embedded.is_some_and(|p| p <= 100.0)},
    })
}

// -------------------------------------------------------------------- load

/// What loading one customer gave.
#[derive(Default)]
struct Loaded {
    ok: usize,
    failed: usize,
    lat: Vec<Duration>,
    first_error: Option<String>,
}

/// Every customer's single commands through the HTTP API, `concurrency` customers at a time,
/// read from the data set's file as they go.
/// Prints a run's figures as JSON, and writes them to `out` too when given.
pub(crate) fn publish(
    report: &impl Serialize,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    println!("{text}");
    if let Some(out) = out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, format!("{text}\n"))
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("crm-bench: wrote {}", out.display());
    }
    Ok(())
}

/// The preset's data set, generated from `seed` into files under `dir` (off the async threads).
pub(crate) async fn generate(
    dir: PathBuf,
    seed: u64,
    preset: &Preset,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<Spool> {
    let preset = preset.clone();
    tokio::task::spawn_blocking(move || {
        spool::write(
            &dir,
            seed,
            preset.customers,
            preset.touchpoints,
            now,
            preset.ingest_batch,
        )
    })
    .await?
}

pub(crate) async fn load(ctx: &Ctx, data_set: &Spool, concurrency: usize) -> anyhow::Result<Value> {
    let customers = spool::Commands::open(data_set)?;
    let total_customers = data_set.customers.len();
    let started = Instant::now();
    let mut outcomes = futures::stream::iter(customers.map(|commands| async move {
        let commands = commands?;
        let mut l = Loaded::default();
        for r in &commands {
            let t = Instant::now();
            let sent = ctx
                .http
                .request(r.method.clone(), format!("{}{}", ctx.command_url, r.path))
                .bearer_auth(&ctx.admin)
                .header("content-type", "application/json")
                .body(r.body.clone())
                .send()
                .await;
            match sent {
                Ok(a) if a.status().is_success() => {
                    let _ = a.bytes().await;
                    l.ok += 1;
                    l.lat.push(t.elapsed());
                }
                Ok(a) => {
                    l.failed += 1;
                    let status = a.status();
                    let body = a.text().await.unwrap_or_default();
                    l.first_error
                        .get_or_insert(format!("{} {}: {status} {body}", r.method, r.path));
                }
                Err(e) => {
                    l.failed += 1;
                    l.first_error.get_or_insert(e.to_string());
                }
            }
        }
        anyhow::Ok(l)
    }))
    .buffer_unordered(concurrency.max(1));
    let mut all = Loaded::default();
    let mut done = 0usize;
    let mut next_report = Instant::now() + Duration::from_secs(30);
    while let Some(l) = outcomes.next().await {
        let l = l?;
        all.ok += l.ok;
        all.failed += l.failed;
        all.lat.extend(l.lat);
        if all.first_error.is_none() {
            all.first_error = l.first_error;
        }
        done += 1;
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            eprintln!(
                "load: {done}/{total_customers} customers, {} commands ({:.0}/s), {} failed",
                all.ok,
                all.ok as f64 / started.elapsed().as_secs_f64(),
                all.failed
            );
        }
    }
    let elapsed = started.elapsed();
    if all.ok == 0 {
        bail!(
            "no command was accepted: {}",
            all.first_error.unwrap_or_default()
        );
    }
    Ok(json!({
        "what": "the data set's single commands over HTTP (register, contacts, orders, opportunities, service requests, complaints, churn), each customer's in order, customers concurrently",
        "customers": done,
        "commands_accepted": all.ok,
        "commands_failed": all.failed,
        "first_error": all.first_error,
        "concurrency": concurrency,
        "seconds": round(elapsed.as_secs_f64()),
        "commands_per_second": rate(all.ok as u64, elapsed),
        "latency": Latency::of(&all.lat),
    }))
}

// -------------------------------------------------------------------- ingest

async fn end_offsets(settings: &KafkaSettings, topic: &str) -> anyhow::Result<Vec<i64>> {
    let settings = settings.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<i64>> {
        let consumer: BaseConsumer = settings.reader_config().create()?;
        (0..settings.partitions)
            .map(|p| {
                Ok(consumer
                    .fetch_watermarks(&topic, p, settings.operation_timeout())?
                    .1)
            })
            .collect()
    })
    .await?
}

/// A consumer for [`scan`]: committed records, partitions assigned by hand; a fetch that finds
/// nothing comes back after 10 ms (the end of a partition is seen when a fetch comes back
/// empty: the transaction's marker follows the last record).
fn scanner(settings: &KafkaSettings) -> anyhow::Result<BaseConsumer> {
    let mut config = settings.reader_config();
    config.set("fetch.wait.max.ms", "10");
    Ok(config.create()?)
}

/// The committed records of one partition from offset `from` up to (not including) `until`
/// (its end when `None`), to `f` one at a time; `f` answering `false` stops the scan. Blocking.
fn scan(
    consumer: &BaseConsumer,
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from: i64,
    until: Option<i64>,
    mut f: impl FnMut(StoredRecord) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let timeout = settings.operation_timeout();
    // read_committed: the high watermark is the last stable offset
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    let end = until.map_or(high, |u| u.min(high));
    let start = from.max(low);
    if start >= end {
        return Ok(());
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&assignment)?;
    let mut idle_deadline = Instant::now() + timeout;
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                if Instant::now() >= idle_deadline {
                    bail!("reading {topic}/{partition} from {start} to {end}: nothing for {timeout:?}");
                }
            }
            Some(Ok(message)) => {
                use rdkafka::Message;
                idle_deadline = Instant::now() + timeout;
                let offset = message.offset();
                if offset >= end {
                    return Ok(());
                }
                if !f(StoredRecord::from_message(&message))? || offset + 1 >= end {
                    return Ok(());
                }
            }
            // the end of what is readable (transaction markers may sit before `high`)
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// One NDJSON batch to `POST /v1/touchpoints:batch`, as a channel adapter sends it: its answer
/// (`accepted`, `rejected`, ...), or why it failed.
pub(crate) async fn post_touchpoints(
    http: &reqwest::Client,
    command_url: &str,
    token: &str,
    body: Vec<u8>,
) -> anyhow::Result<Value> {
    let r = http
        .post(format!("{command_url}/v1/touchpoints:batch"))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        bail!("{command_url}'s batch endpoint answered {status}: {v}");
    }
    Ok(v)
}

/// What [`post_batches`] sent and what the batch endpoint answered.
pub(crate) struct Posted {
    pub items: u64,
    pub body_bytes: usize,
    pub accepted: u64,
    pub rejected: u64,
    pub lat: Vec<Duration>,
    pub elapsed: Duration,
}

/// The data set's touchpoints through the batch endpoint, as channel adapters use it,
/// `concurrency` batches in flight, the bodies read from the data set's file as they go.
pub(crate) async fn post_batches(
    ctx: &Ctx,
    data_set: &Spool,
    concurrency: usize,
) -> anyhow::Result<Posted> {
    let batches = spool::Batches::open(data_set)?;
    let started = Instant::now();
    let mut answers = futures::stream::iter(batches.map(|batch| async move {
        let (items, body) = batch?;
        let bytes = body.len();
        let t = Instant::now();
        let v = post_touchpoints(&ctx.http, &ctx.command_url, &ctx.adapter, body).await?;
        anyhow::Ok((
            items,
            bytes,
            v["accepted"].as_u64().unwrap_or(0),
            v["rejected"].as_u64().unwrap_or(0),
            t.elapsed(),
        ))
    }))
    .buffer_unordered(concurrency.max(1));
    let (mut items, mut body_bytes, mut accepted, mut rejected, mut lat) =
        (0u64, 0usize, 0u64, 0u64, Vec::new());
    let mut next_report = Instant::now() + Duration::from_secs(30);
    while let Some(a) = answers.next().await {
        let (n, b, ok, no, d) = a?;
        items += n;
        body_bytes += b;
        accepted += ok;
        rejected += no;
        lat.push(d);
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            eprintln!(
                "ingest: {accepted}/{} touchpoints ({:.0}/s)",
                data_set.touchpoints,
                accepted as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(Posted {
        items,
        body_bytes,
        accepted,
        rejected,
        lat,
        elapsed: started.elapsed(),
    })
}

async fn ingest(
    ctx: &Ctx,
    settings: &KafkaSettings,
    topic: &str,
    data_set: &Spool,
    preset: &Preset,
    cpu: &[(&'static str, u32)],
) -> anyhow::Result<Value> {
    // what the processes spend with nothing to do (consumers polling, heartbeats, timers):
    // part of every figure below, in proportion to its wall time
    let idle_meter = CpuMeter::start(cpu);
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = idle_meter.per_second(idle_started.elapsed());
    let before = end_offsets(settings, topic).await?;
    let transactions_before = append_transactions(ctx).await?;
    let meter = CpuMeter::start(cpu);
    let posted = post_batches(ctx, data_set, preset.ingest_concurrency).await?;
    let http_cpu = meter.since_start(posted.accepted);
    let transactions_after = append_transactions(ctx).await?;
    let Posted {
        items,
        body_bytes,
        accepted,
        rejected,
        ref lat,
        elapsed: http_elapsed,
    } = posted;
    let after = end_offsets(settings, topic).await?;

    // the same records (the first of each partition, up to the preset's count), read back and
    // written by a bare producer to a topic of their own
    let per_partition =
        (preset.bare_producer_records / (settings.partitions.max(1) as usize)).max(1);
    let records = {
        let (settings, topic, before, after) = (
            settings.clone(),
            topic.to_owned(),
            before.clone(),
            after.clone(),
        );
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<StoredRecord>> {
            let mut out = Vec::new();
            let consumer = scanner(&settings)?;
            for p in 0..settings.partitions {
                let (from, until) = (
                    before.get(p as usize).copied().unwrap_or(0),
                    after.get(p as usize).copied().unwrap_or(0),
                );
                let mut n = 0;
                scan(&consumer, &settings, &topic, p, from, Some(until), |r| {
                    out.push(r);
                    n += 1;
                    Ok(n < per_partition)
                })?;
            }
            Ok(out)
        })
        .await??
    };
    let record_bytes: usize = records
        .iter()
        .map(|r| {
            r.key.as_ref().map_or(0, Vec::len)
                + r.value.as_ref().map_or(0, Vec::len)
                + r.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                    .sum::<usize>()
        })
        .sum();
    let bare_topic = format!("{}bare-producer", settings.topic_prefix);
    create_topic(settings, &bare_topic).await?;
    let producer: FutureProducer = settings.producer_config().create()?;
    // one warm-up record so that metadata and the producer id are there before timing
    let _ = producer
        .send(
            FutureRecord::<[u8], [u8]>::to(&bare_topic)
                .partition(0)
                .payload(b"warm-up".as_slice()),
            Duration::from_secs(30),
        )
        .await;
    // the pass is short (under a second): the limit is the median of a few, each reported
    let mut passes = Vec::with_capacity(BARE_PASSES);
    for _ in 0..BARE_PASSES {
        passes.push(bare_pass(&producer, &records, &bare_topic, cpu).await);
    }
    passes.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let pass_rates: Vec<f64> = passes.iter().map(|p| p.rate).collect();
    let BarePass {
        delivered: bare_ok,
        elapsed: bare_elapsed,
        rate: bare_rate,
        cpu: bare_cpu,
    } = passes.swap_remove(passes.len() / 2);
    let http_rate = rate(accepted, http_elapsed);
    drop(producer);

    // the same records again, in the command path's transaction shape: the limit of that shape
    let (records_appended, transactions) = (
        transactions_after.0 - transactions_before.0,
        transactions_after.1 - transactions_before.1,
    );
    let per_transaction = if transactions > 0.0 {
        ((records_appended / transactions).round() as usize).max(1)
    } else {
        1
    };
    let transactional = bare_transactional(
        settings,
        &records,
        per_transaction,
        transactions_before.1 as usize,
        preset,
        cpu,
    )
    .await?;
    let transactional_rate = transactional["records_per_second"].as_f64().unwrap_or(0.0);
    let with_history_rate = transactional["with_history"]["records_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let sample = (records.len() as u64) < accepted;
    Ok(json!({
        "http_batch": {
            "what": "POST /v1/touchpoints:batch (NDJSON, minted channel_adapter token) to command-service in its own process: parse, authorize, decide against the customer's state, one Kafka transaction per partition per batch; the bodies read from the data set's file as they are sent",
            "touchpoints": items,
            "accepted": accepted,
            "rejected": rejected,
            "batch_size": preset.ingest_batch,
            "concurrent_batches": preset.ingest_concurrency,
            "request_bytes": body_bytes,
            "seconds": round(http_elapsed.as_secs_f64()),
            "touchpoints_per_second": http_rate,
            "batch_latency": Latency::of(lat),
            "cpu": http_cpu,
        },
        "bare_producer": {
            "what": if sample {
                format!("a sample: the first {per_partition} records the batch endpoint appended to each partition (key, CloudEvents headers, JSON body; {} of {accepted}), read back and produced by one idempotent rdkafka producer (acks=all, librdkafka defaults) to a topic with the same partitions on the same broker", records.len())
            } else {
                "the very records the batch endpoint appended (key, CloudEvents headers, JSON body), read back and produced by one idempotent rdkafka producer (acks=all, librdkafka defaults) to a topic with the same partitions on the same broker".to_owned()
            },
            "sample": sample,
            "records": records.len(),
            "delivered": bare_ok,
            "record_bytes": record_bytes,
            "seconds": round(bare_elapsed.as_secs_f64()),
            "records_per_second": bare_rate,
            "passes": BARE_PASSES,
            "passes_records_per_second": pass_rates,
            "cpu": bare_cpu,
        },
        "bare_transactional": transactional,
        "idle_cpu_per_second": idle,
        "ratio_http_to_bare": ratio(http_rate, bare_rate),
        "ratio_transactional_to_bare": ratio(transactional_rate, bare_rate),
        "ratio_http_to_transactional": ratio(http_rate, transactional_rate),
        "ratio_http_to_transactional_with_history": ratio(http_rate, with_history_rate),
    }))
}

/// The bare producer's passes over the same records; its figure is the median pass.
const BARE_PASSES: usize = 3;

/// One pass of the bare producer.
struct BarePass {
    delivered: u64,
    elapsed: Duration,
    rate: f64,
    cpu: Value,
}

/// The records produced once more by the bare producer, all in flight at once.
async fn bare_pass(
    producer: &FutureProducer,
    records: &[StoredRecord],
    bare_topic: &str,
    cpu: &[(&'static str, u32)],
) -> BarePass {
    let meter = CpuMeter::start(cpu);
    let started = Instant::now();
    let delivered: Vec<bool> = futures::stream::iter(records.iter().map(|r| async move {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k.as_str(),
                value: v.as_deref(),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(bare_topic)
            .partition(r.position.partition)
            .headers(headers);
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            record = record.payload(v.as_slice());
        }
        producer.send(record, Duration::from_secs(60)).await.is_ok()
    }))
    .buffer_unordered(50_000)
    .collect()
    .await;
    let bare_elapsed = started.elapsed();
    let bare_ok = delivered.iter().filter(|d| **d).count() as u64;
    let bare_cpu = meter.since_start(bare_ok);
    BarePass {
        delivered: bare_ok,
        elapsed: bare_elapsed,
        rate: rate(bare_ok, bare_elapsed),
        cpu: bare_cpu,
    }
}

/// At most this many one-record transactions make the history of [`bare_transactional`]'s
/// second pass (about 33 s on the test machine).
const MAX_HISTORY_TRANSACTIONS: usize = 36_000;

/// command-service's `/metrics`, as text.
async fn command_metrics(ctx: &Ctx) -> anyhow::Result<String> {
    Ok(ctx
        .http
        .get(format!("{}/metrics", ctx.command_url))
        .send()
        .await?
        .text()
        .await?)
}

/// `crm_append_batch_size`'s sum and count in command-service: records appended and the
/// transactions that carried them.
async fn append_transactions(ctx: &Ctx) -> anyhow::Result<(f64, f64)> {
    let text = command_metrics(ctx).await?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("crm_append_batch_size_sum"),
        value("crm_append_batch_size_count"),
    ))
}

/// The records, written as command-service writes them: by one [`PartitionWriter`] per
/// partition (a transactional producer whose `transactional.id` is bound to the partition), in
/// transactions of `per_transaction` records one after the other, all partitions at once, to a
/// topic of their own on the same broker. Nothing is decided: what is left is what the
/// transaction shape costs.
async fn bare_transactional(
    settings: &KafkaSettings,
    records: &[StoredRecord],
    per_transaction: usize,
    history_transactions: usize,
    preset: &Preset,
    cpu: &[(&'static str, u32)],
) -> anyhow::Result<Value> {
    use infra::kafka::PartitionWriter;
    let mut own = settings.clone();
    own.topic_prefix = format!("{}bare-transactional-", settings.topic_prefix);
    provision_topics(&own).await?;
    // the header names as the writer takes them: each distinct name made static once
    let mut names: HashMap<String, &'static str> = HashMap::new();
    let mut by_partition: Vec<Vec<domain::KafkaRecord>> =
        (0..own.partitions).map(|_| Vec::new()).collect();
    for r in records {
        let headers = r
            .headers
            .iter()
            .map(|(k, v)| {
                let name = *names
                    .entry(k.clone())
                    .or_insert_with(|| Box::leak(k.clone().into_boxed_str()));
                (name, v.clone().unwrap_or_default())
            })
            .collect();
        let record = domain::KafkaRecord {
            key: r.key.clone().unwrap_or_default(),
            headers,
            value: r.value.clone().unwrap_or_default(),
        };
        if let Some(p) = by_partition.get_mut(r.position.partition as usize) {
            p.push(record);
        }
    }
    let mut writers = Vec::new();
    for p in 0..own.partitions {
        writers.push(PartitionWriter::open(&own, p).await?);
    }
    let (writers, by_partition) = (Arc::new(writers), Arc::new(by_partition));
    // every partition's records in transactions of `per_transaction`, all partitions at once
    let pass = || async {
        let meter = CpuMeter::start(cpu);
        let started = Instant::now();
        let appended: Vec<anyhow::Result<(usize, usize)>> =
            futures::future::join_all(writers.iter().zip(by_partition.iter()).map(
                |(writer, records)| async move {
                    let (mut n, mut transactions) = (0, 0);
                    for chunk in records.chunks(per_transaction) {
                        n += writer.append(chunk).await?.len();
                        transactions += 1;
                    }
                    Ok((n, transactions))
                },
            ))
            .await;
        let elapsed = started.elapsed();
        let (mut delivered, mut transactions) = (0usize, 0usize);
        for a in appended {
            let (n, t) = a?;
            delivered += n;
            transactions += t;
        }
        anyhow::Ok((
            delivered,
            transactions,
            elapsed,
            meter.since_start(delivered as u64),
        ))
    };
    let (delivered, transactions, elapsed, transactional_cpu) = pass().await?;
    // The test broker's cost per transaction grows with the transactions a partition already
    // holds (seen here: twice the CPU per record after 3,000 a partition). The customer-events
    // partitions hold the load phase's when the batch ingest begins, so the fair limit is the
    // same shape on partitions with as many: one-record transactions first, then the same pass.
    let history = history_transactions.min(MAX_HISTORY_TRANSACTIONS);
    let per_partition = history / writers.len().max(1);
    let history_started = Instant::now();
    let made: Vec<anyhow::Result<usize>> =
        futures::future::join_all(writers.iter().zip(by_partition.iter()).map(
            |(writer, records)| async move {
                let mut n = 0;
                if let Some(record) = records.first() {
                    for _ in 0..per_partition {
                        writer.append(std::slice::from_ref(record)).await?;
                        n += 1;
                    }
                }
                Ok(n)
            },
        ))
        .await;
    let mut made_history = 0;
    for m in made {
        made_history += m?;
    }
    let history_seconds = history_started.elapsed();
    let (again, _, again_elapsed, again_cpu) = pass().await?;

    // one record per transaction on a random partition, open loop at the latency rate: the
    // floor under a single command's latency
    let mut rng = Rng(11);
    let total = preset.latency_rate * preset.latency_seconds;
    // the partitions with a record to write (a small data set leaves some empty)
    let filled: Vec<usize> = (0..by_partition.len())
        .filter(|p| by_partition.get(*p).is_some_and(|r| !r.is_empty()))
        .collect();
    let (lat, errors, _) = open_loop(preset.latency_rate, preset.latency_seconds, || {
        let p = *filled.get(rng.below(filled.len() as u64) as usize)?;
        let (writers, by_partition) = (writers.clone(), by_partition.clone());
        Some(async move {
            let (Some(writer), Some(record)) =
                (writers.get(p), by_partition.get(p).and_then(|r| r.first()))
            else {
                return Err("no record for the partition".to_owned());
            };
            writer
                .append(std::slice::from_ref(record))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    })
    .await;
    Ok(json!({
        "what": "the same records, each partition's written by a transactional producer bound to the partition (command-service's PartitionWriter) in transactions of the mean size command-service's batch ingest committed, one transaction after the other per partition, all partitions at once, to a topic of their own on the same broker: the command path's transaction shape with nothing decided",
        "records": records.len(),
        "delivered": delivered,
        "records_per_transaction": per_transaction,
        "transactions": transactions,
        "seconds": round(elapsed.as_secs_f64()),
        "records_per_second": rate(delivered as u64, elapsed),
        "cpu": transactional_cpu,
        "with_history": {
            "what": "the same records again, the same way, after as many one-record transactions as command-service had committed on the customer-events topic when the batch ingest began (at most 36,000): the transaction shape on partitions with the same history, the fair limit of the batch endpoint on this broker",
            "history_transactions": made_history,
            "history_seconds": round(history_seconds.as_secs_f64()),
            "delivered": again,
            "seconds": round(again_elapsed.as_secs_f64()),
            "records_per_second": rate(again as u64, again_elapsed),
            "cpu": again_cpu,
        },
        "single_record_transactions": {
            "what": "one record per transaction on the writer of a random partition that has records, open loop at the command-latency rate: the floor under a single command's latency on this broker",
            "rate_per_second": preset.latency_rate,
            "sent": total,
            "ok": lat.len(),
            "errors": errors.len(),
            "first_error": errors.first(),
            "latency": Latency::of(&lat),
        },
    }))
}

/// `crm_inbound_records_total{outcome="appended"}` of command-service.
async fn inbound_appended(ctx: &Ctx) -> anyhow::Result<u64> {
    let text = command_metrics(ctx).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("crm_inbound_records_total") && l.contains("\"appended\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum())
}

/// A third of the data set's touchpoints again (new ids), published by one bare producer on
/// the inbound topic as channel adapters do (CloudEvents binary mode), while command-service's
/// inbound readers validate, decide and append them; timed from the first record produced to
/// the last one appended (command-service's own counter).
async fn inbound(
    ctx: &Ctx,
    settings: &KafkaSettings,
    data_set: &Spool,
    bare_rate: f64,
) -> anyhow::Result<Value> {
    use domain::envelope::header;
    let records = spool::InboundRecords::open(data_set)?;
    let topic = settings.topics().inbound();
    let producer: FutureProducer = settings.producer_config().create()?;
    // metadata before timing (no warm-up record: the readers would take it)
    {
        use rdkafka::producer::Producer;
        let (p, t, timeout) = (
            producer.clone(),
            topic.clone(),
            settings.operation_timeout(),
        );
        tokio::task::spawn_blocking(move || {
            p.client().fetch_metadata(Some(&t), timeout).map(|_| ())
        })
        .await??;
    }
    let before = inbound_appended(ctx).await?;
    let started = Instant::now();
    let mut delivered = futures::stream::iter(records.map(|r| {
        let producer = &producer;
        let topic = &topic;
        async move {
            let r = r?;
            let headers = [
                (header::SPEC_VERSION, domain::envelope::SPEC_VERSION),
                (header::ID, r.id.as_str()),
                (header::SOURCE, crate::serve::INBOUND_SOURCE),
                (header::TYPE, command_service::inbound::INBOUND_TYPE),
                (header::TIME, r.time.as_str()),
                (header::SUBJECT, r.key.as_str()),
                (header::CONTENT_TYPE, domain::envelope::CONTENT_TYPE),
            ]
            .iter()
            .fold(OwnedHeaders::new_with_capacity(7), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            });
            let sent = producer
                .send(
                    FutureRecord::to(topic)
                        .key(r.key.as_bytes())
                        .payload(r.body.as_slice())
                        .headers(headers),
                    Duration::from_secs(60),
                )
                .await
                .is_ok();
            anyhow::Ok(sent)
        }
    }))
    .buffer_unordered(50_000);
    let (mut produced_records, mut sent) = (0u64, 0u64);
    while let Some(d) = delivered.next().await {
        produced_records += 1;
        sent += u64::from(d?);
    }
    drop(delivered);
    let produced = started.elapsed();
    let mut appended = 0;
    // the readers may lag the producer: at least 5 minutes, more for a large data set
    let patience = Duration::from_secs(300.max(sent / 1000));
    while started.elapsed() < patience {
        appended = inbound_appended(ctx).await?.saturating_sub(before);
        if appended >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let inbound_rate = rate(appended, elapsed);
    Ok(json!({
        "what": "a third of the touchpoints again (new ids), read from the data set's file and produced by one bare producer on the inbound topic as CloudEvents (binary mode); command-service's inbound readers (one per partition, batches of up to 500) validate, decide and append them; from the first record produced to the last one appended; compared with the bare producer figure above",
        "records": produced_records,
        "produced": sent,
        "produce_seconds": round(produced.as_secs_f64()),
        "appended": appended,
        "seconds": round(elapsed.as_secs_f64()),
        "touchpoints_per_second": inbound_rate,
        "ratio_to_bare": ratio(inbound_rate, bare_rate),
    }))
}

async fn create_topic(settings: &KafkaSettings, name: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = settings.admin_config().create()?;
    let topic = NewTopic::new(name, settings.partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics(&[topic], &AdminOptions::new()).await? {
        if let Err((t, e)) = r {
            bail!("creating {t}: {e}");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

// -------------------------------------------------------------------- command latency

pub(crate) fn touchpoint_command(rng: &mut Rng) -> Value {
    let mut body = json!({"touchpoint": gen::touchpoint(rng, "上海", None)});
    if let Value::Object(m) = &mut body {
        m.insert("occurred_at".into(), json!(Utc::now().to_rfc3339()));
    }
    body
}

/// Open loop: `call()` is started every 1/`rate` s for `seconds`, whatever the earlier calls
/// do (a `None` skips its turn); each call's latency counts from the moment it was due, so a
/// stall counts for every call it delays. The latencies of the calls that succeeded, the
/// errors of the others, and how long the whole loop took.
async fn open_loop<F, Fut>(
    rate: u64,
    seconds: u64,
    mut call: F,
) -> (Vec<Duration>, Vec<String>, Duration)
where
    F: FnMut() -> Option<Fut>,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut tasks = JoinSet::new();
    let started = tokio::time::Instant::now();
    for i in 0..rate * seconds {
        let due = started + period.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let Some(call) = call() else {
            continue;
        };
        tasks.spawn(async move { call.await.map(|()| due.elapsed()) });
    }
    let (mut lat, mut errors) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(d)) => lat.push(d),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (lat, errors, started.elapsed())
}

/// One touchpoint command every 1/rate s on a random loaded customer, whatever the answers do
/// ([`open_loop`]).
async fn command_latency(ctx: &Ctx, customers: &[Uuid], preset: &Preset) -> anyhow::Result<Value> {
    let mut rng = Rng(7);
    let total = preset.latency_rate * preset.latency_seconds;
    let (lat, errors, elapsed) = open_loop(preset.latency_rate, preset.latency_seconds, || {
        let customer = customers.get(rng.below(customers.len() as u64) as usize)?;
        let url = format!("{}/v1/customers/{customer}/touchpoints", ctx.command_url);
        let body = touchpoint_command(&mut rng);
        let request = ctx.http.post(url).bearer_auth(&ctx.admin).json(&body);
        Some(async move {
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    Ok(())
                }
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
    })
    .await;
    Ok(json!({
        "what": "POST /v1/customers/{id}/touchpoints (one command, one event, one Kafka transaction) on random loaded customers, open loop",
        "rate_per_second": preset.latency_rate,
        "seconds": preset.latency_seconds,
        "sent": total,
        "ok": lat.len(),
        "errors": errors.len(),
        "first_error": errors.first(),
        "achieved_per_second": rate(lat.len() as u64, elapsed),
        "latency": Latency::of(&lat),
    }))
}

// -------------------------------------------------------------------- replay

/// Waits for the replay process, sampling the other processes' peak memory meanwhile.
async fn watch_replay(mut replay: Proc, others: &[&Proc]) -> anyhow::Result<Value> {
    let log = replay.log.clone();
    let deadline = Instant::now() + Duration::from_secs(4 * 3600);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if replay.check_alive().is_err() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the replay did not finish within 4 hours");
        }
    }
    let text = std::fs::read_to_string(&log)?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| {
            format!(
                "the replay printed no result; its log:\n{}",
                procs::tail(&log)
            )
        })?;
    let mut v: Value = serde_json::from_str(line)?;
    let peaks: HashMap<String, Option<u64>> = others
        .iter()
        .map(|p| (p.name.clone(), p.peak_kib()))
        .collect();
    v["others_peak_kib"] = serde_json::to_value(peaks)?;
    drop(replay);
    Ok(v)
}

/// The rows the replay wrote into rm_v1, copied with a bare `COPY ... FROM STDIN (binary)`
/// into the same tables of a fresh version (same schema, same indexes), in one transaction.
/// The rows are first copied out to files in `dir` (not timed), then streamed from there.
/// More rows than `cap` in all: the same share of every table (its first rows), and the events
/// counted in the same share.
pub(crate) async fn copy_baseline(
    pool: &PgPool,
    events: u64,
    dir: &std::path::Path,
    cap: usize,
) -> anyhow::Result<Value> {
    use std::io::{Read, Write};
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut conn = pool.acquire().await?;
    let mut files: Vec<(&str, PathBuf)> = Vec::new();
    let mut rows_total = 0i64;
    let mut bytes = 0u64;
    let mut per_table = serde_json::Map::new();
    // the tables a rebuild reproduces, as the registry of read models lists them
    let mut counts: Vec<(&str, i64)> = Vec::new();
    for t in projection_service::read_models::tables() {
        let (rows,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM rm_v1.{t}"))
            .fetch_one(&mut *conn)
            .await?;
        counts.push((t, rows));
    }
    let all: i64 = counts.iter().map(|(_, r)| r).sum();
    let share = if all as f64 > cap as f64 {
        cap as f64 / all as f64
    } else {
        1.0
    };
    for (t, rows) in counts {
        let taken = (rows as f64 * share).ceil() as i64;
        rows_total += taken;
        per_table.insert(t.to_owned(), json!(taken));
        let path = dir.join(format!("{t}.copy"));
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        let source = if share < 1.0 {
            format!("(SELECT * FROM rm_v1.{t} LIMIT {taken})")
        } else {
            format!("rm_v1.{t}")
        };
        let mut stream = conn
            .copy_out_raw(&format!("COPY {source} TO STDOUT (FORMAT binary)"))
            .await?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            bytes += chunk.len() as u64;
            out.write_all(&chunk)?;
        }
        drop(stream);
        out.flush()?;
        files.push((t, path));
    }
    drop(conn);
    let pv = ProjectionVersion::new("rm", 2)?;
    Projector::open(pool.clone(), pv.clone()).await?;
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    let mut buf = vec![0u8; 1 << 20];
    for (t, path) in &files {
        // the migration's own seed rows (funnel stages, rfm_order_versions) are not in these tables
        let mut copy = tx
            .copy_in_raw(&format!("COPY rm_v2.{t} FROM STDIN (FORMAT binary)"))
            .await?;
        let mut file = std::fs::File::open(path)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            copy.send(&buf[..n]).await?;
        }
        copy.finish().await?;
    }
    tx.commit().await?;
    let elapsed = started.elapsed();
    drop_version(pool, &pv).await?;
    let _ = std::fs::remove_dir_all(dir);
    let what = "COPY ... FROM STDIN (FORMAT binary) into the same tables of a fresh version (same DDL and indexes), one transaction; the same PostgreSQL; the rows copied out to files first (not timed) and streamed from them";
    let equivalent = (events as f64 * share).round() as u64;
    Ok(json!({
        "what": if share < 1.0 {
            format!("a sample: the first {:.1} % of the rows of every read-model table the replay wrote (rm_v1), {what}; events counted in the same share", share * 100.0)
        } else {
            format!("the rows the replay wrote (every read-model table of rm_v1), {what}")
        },
        "share_of_rows": round(share),
        "rows_in_rm_v1": all,
        "rows": rows_total,
        "rows_per_table": per_table,
        "bytes": bytes,
        "seconds": round(elapsed.as_secs_f64()),
        "rows_per_second": rate(rows_total as u64, elapsed),
        "events_equivalent": equivalent,
        "events_per_second_equivalent": rate(equivalent, elapsed),
    }))
}

// -------------------------------------------------------------------- embedded default

/// The same events in the embedded log (files, fsync per transaction), then the same
/// Projector fed from it in-process (what `crm up` without Kafka runs), into a fresh version.
/// The log is read from Kafka a partition at a time, in chunks of 1000 records; only the
/// appends are timed. At most `cap` records: the first of each partition (a prefix of every
/// partition is a consistent history: each customer's events are in one partition, in order).
async fn embedded(
    pool: &PgPool,
    settings: &KafkaSettings,
    topic: &str,
    work: &std::path::Path,
    cap: usize,
) -> anyhow::Result<Value> {
    let per_partition = (cap / (settings.partitions.max(1) as usize)).max(1);
    let ends = end_offsets(settings, topic).await?;
    let mut prefix = false;
    let dir = work.join("embedded");
    let _ = std::fs::remove_dir_all(&dir);
    let topics = EmbeddedTopics::open(&dir, settings.partitions)?;
    let (mut appended, mut append_elapsed) = (0u64, Duration::ZERO);
    for p in 0..settings.partitions {
        let writer = topics.customer_events.open_writer(p).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<domain::KafkaRecord>>(4);
        let reader = {
            let (settings, topic) = (settings.clone(), topic.to_owned());
            tokio::task::spawn_blocking(move || -> anyhow::Result<(usize, i64)> {
                let mut chunk = Vec::with_capacity(1000);
                let consumer = scanner(&settings)?;
                let (mut n, mut last) = (0, -1);
                scan(&consumer, &settings, &topic, p, 0, None, |r| {
                    let r_offset = r.position.offset;
                    // what is not an event (none expected) is left out, as the projection does
                    if let Ok(e) = r.decode() {
                        chunk.push(e.to_kafka()?);
                    }
                    if chunk.len() == 1000 {
                        tx.blocking_send(std::mem::take(&mut chunk))
                            .map_err(|_| anyhow::anyhow!("the appender stopped"))?;
                    }
                    n += 1;
                    last = r_offset;
                    Ok(n < per_partition)
                })?;
                if !chunk.is_empty() {
                    tx.blocking_send(chunk)
                        .map_err(|_| anyhow::anyhow!("the appender stopped"))?;
                }
                Ok((n, last))
            })
        };
        while let Some(chunk) = rx.recv().await {
            let t = Instant::now();
            writer.append(&chunk).await?;
            append_elapsed += t.elapsed();
            appended += chunk.len() as u64;
        }
        let (n, last) = reader.await??;
        // stopped at the cap with records after the last one taken (beyond its commit marker)
        prefix |= n >= per_partition && last + 2 < ends.get(p as usize).copied().unwrap_or(0);
    }

    // the embedded default's own path: its record source and batch loop, into a fresh version
    let started = Instant::now();
    let pv = ProjectionVersion::new("rm", 3)?;
    let mut consumed = None;
    let outcome = projection_service::replay_on(
        pool.clone(),
        EventSource::Embedded(topics),
        ReplayOptions {
            projection: "rm".into(),
            version: pv.version(),
            batch: BatchOptions::default(),
            activate: false,
            catch_up_lag: 0,
            jobs: JobOptions::default(),
        },
        Arc::new(SystemClock),
        projection_service::Metrics::new()?,
        |p| {
            if p.caught_up {
                consumed = Some(p.elapsed);
            }
        },
    )
    .await?;
    let applied = outcome.events_applied;
    let apply_elapsed = consumed.unwrap_or(outcome.elapsed);
    let replay_seconds = started.elapsed();
    drop_version(pool, &pv).await?;
    let _ = std::fs::remove_dir_all(&dir);
    let what = "appended to the embedded log (one file per partition, fsync per append of 1000; read from Kafka a partition at a time, only the appends timed), then replayed from it by the embedded default's own record source and batch loop (default batches and lanes, in-process, no Kafka) into a fresh version";
    Ok(json!({
        "what": if prefix {
            format!("a prefix: the first {per_partition} records of each partition of the log (the cap `embedded_records` bounds the phase's time), {what}")
        } else {
            format!("the same events {what}")
        },
        "prefix": prefix,
        "events": applied,
        "appended": appended,
        "append_seconds": round(append_elapsed.as_secs_f64()),
        "append_events_per_second": rate(appended, append_elapsed),
        "projection_seconds": round(apply_elapsed.as_secs_f64()),
        "projection_events_per_second": rate(applied, apply_elapsed),
        "replay_seconds_with_rfm_sweep": round(replay_seconds.as_secs_f64()),
    }))
}

pub(crate) async fn data_size(pool: &PgPool, schema: &str) -> anyhow::Result<Value> {
    let (customers,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {schema}.customers"))
        .fetch_one(pool)
        .await?;
    let (events,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {schema}.audit_trail"))
        .fetch_one(pool)
        .await?;
    let (opportunities,): (i64,) =
        sqlx::query_as(&format!("SELECT count(*) FROM {schema}.opportunities"))
            .fetch_one(pool)
            .await?;
    let (bytes,): (i64,) = sqlx::query_as("SELECT pg_database_size(current_database())")
        .fetch_one(pool)
        .await?;
    Ok(json!({
        "customers": customers,
        "events": events,
        "opportunities": opportunities,
        "database_bytes": bytes,
    }))
}

// -------------------------------------------------------------------- freshness

/// Where freshness is measured: a command API, a query API, and a token for both.
pub(crate) struct Target {
    pub http: reqwest::Client,
    pub command_url: String,
    pub token: String,
    pub query_url: String,
}

/// Open loop at `rate` for `seconds`: a touchpoint command on a random one of `customers`,
/// then the 360 view with `CRM-Min-Position` set to the command's position; freshness is from
/// the command's answer to the view's answer. First a warm-up until one command is visible
/// within a second (the projection has caught up), for at most 120 s.
pub(crate) async fn measure_freshness(
    target: Arc<Target>,
    customers: &[Uuid],
    rate_per_second: u64,
    seconds: u64,
) -> anyhow::Result<Value> {
    let mut rng = Rng(11);
    let first = *customers
        .first()
        .context("no customer to measure freshness on")?;
    let warm = Instant::now();
    let mut warmed = false;
    let mut last_error = None;
    while warm.elapsed() < Duration::from_secs(120) {
        match fresh(&target, first, touchpoint_command(&mut rng)).await {
            Ok((_, Some(d))) if d < Duration::from_secs(1) => {
                warmed = true;
                break;
            }
            Ok(_) => {}
            Err(e) => {
                last_error = Some(format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if !warmed {
        bail!(
            "the live projection did not catch up within 120 s (last error: {})",
            last_error.unwrap_or_else(|| "none".into())
        );
    }
    let warm_up = warm.elapsed();
    let total = rate_per_second * seconds;
    let period = Duration::from_secs_f64(1.0 / rate_per_second.max(1) as f64);
    let mut tasks = JoinSet::new();
    let started = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(started + period.mul_f64(i as f64)).await;
        let Some(customer) = customers.get(rng.below(customers.len() as u64) as usize) else {
            continue;
        };
        let body = touchpoint_command(&mut rng);
        let (target, customer) = (target.clone(), *customer);
        tasks.spawn(async move { fresh(&target, customer, body).await });
    }
    let (mut lat, mut command_lat, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok((c, Some(d)))) => {
                command_lat.push(c);
                lat.push(d);
            }
            Ok(Ok((_, None))) => errors.push("not visible within 10 s".to_owned()),
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Ok(json!({
        "rate_per_second": rate_per_second,
        "seconds": seconds,
        "warm_up_seconds": round(warm_up.as_secs_f64()),
        "measured": lat.len(),
        "errors": errors.len(),
        "first_error": errors.first(),
        "latency": Latency::of(&lat),
        "command_latency": Latency::of(&command_lat),
    }))
}

/// The live consumer's `fetch.wait.max.ms`, as projection-service's group consumer is
/// configured in this run (`CRM_BENCH_KAFKA_EXTRA` over librdkafka's default).
fn consumer_fetch_wait() -> Value {
    let extra = std::env::var("CRM_BENCH_KAFKA_EXTRA").unwrap_or_default();
    let log = crate::serve::LogArgs {
        brokers: "127.0.0.1:9092".into(),
        prefix: "bench.".into(),
        partitions: 12,
        kafka_extra: extra,
    };
    let settings = log.settings("bench-projection-service");
    let set = settings.extra.iter().any(|(k, _)| k == "fetch.wait.max.ms");
    let in_effect = settings
        .group_consumer_config("bench.projection")
        .create_native_config()
        .and_then(|c| c.get("fetch.wait.max.ms"));
    match in_effect {
        Ok(v) => json!({
            "fetch_wait_max_ms": v.parse::<u64>().ok(),
            "set_by": if set { "CRM_BENCH_KAFKA_EXTRA" } else { "librdkafka's default" },
        }),
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// The Kafka-backed services: command-service, the live projection-service and query-service,
/// each in its own process.
async fn freshness(
    ctx: &Ctx,
    query_url: &str,
    customers: &[Uuid],
    preset: &Preset,
) -> anyhow::Result<Value> {
    let target = Arc::new(Target {
        http: ctx.http.clone(),
        command_url: ctx.command_url.clone(),
        token: ctx.admin.clone(),
        query_url: query_url.to_owned(),
    });
    let mut v = measure_freshness(
        target,
        customers,
        preset.freshness_rate,
        preset.freshness_seconds,
    )
    .await?;
    v["what"] = json!("POST a touchpoint, then GET /v1/customers/{id} (360 view) with CRM-Min-Position = the answer's crm-position, polling on 503; from the command's answer to the view's 200 (projection-service following the live version in its own process, default batches: 1000 records or 200 ms, applied early when the consumer is caught up)");
    v["consumer"] = consumer_fetch_wait();
    v["consumer_note"] = json!("part of this figure is the broker's: a fetch waiting for data is answered at the latest after fetch.wait.max.ms, and nisshi answers it only then (not when data arrives, as Apache Kafka does), so up to that long of every sample is the test broker's wait");
    Ok(v)
}

async fn fresh(
    target: &Target,
    customer: Uuid,
    body: Value,
) -> anyhow::Result<(Duration, Option<Duration>)> {
    let Target {
        http,
        command_url,
        token,
        query_url,
    } = target;
    let t0 = Instant::now();
    let r = http
        .post(format!("{command_url}/v1/customers/{customer}/touchpoints"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("command answered {}", r.status());
    }
    let position = r
        .headers()
        .get("crm-position")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .context("no crm-position in the command's answer")?;
    let _ = r.bytes().await;
    let answered = Instant::now();
    let command = answered - t0;
    while answered.elapsed() < Duration::from_secs(10) {
        let q = http
            .get(format!("{query_url}/v1/customers/{customer}"))
            .bearer_auth(token)
            .header("crm-min-position", &position)
            .send()
            .await?;
        let status = q.status();
        let _ = q.bytes().await;
        if status.is_success() {
            return Ok((command, Some(answered.elapsed())));
        }
        if status.as_u16() != 503 {
            bail!("the 360 view answered {status}");
        }
    }
    Ok((command, None))
}

// -------------------------------------------------------------------- queries

/// The URL of the i-th request to an endpoint.
type UrlFor = Box<dyn Fn(u64) -> String + Send + Sync>;

async fn queries(
    ctx: &Ctx,
    query_url: &str,
    pool: &PgPool,
    preset: &Preset,
) -> anyhow::Result<Value> {
    // ids from the read model (a random sample of every customer loaded)
    let ids: Vec<(Uuid,)> =
        sqlx::query_as("SELECT customer_id FROM rm_v1.customers ORDER BY random() LIMIT 20000")
            .fetch_all(pool)
            .await?;
    let ids: Arc<Vec<Uuid>> = Arc::new(ids.into_iter().map(|(id,)| id).collect());
    let segments: Value = ctx
        .http
        .get(format!("{query_url}/v1/segments/rfm"))
        .bearer_auth(&ctx.admin)
        .send()
        .await?
        .json()
        .await?;
    let segment = segments["items"]
        .as_array()
        .or_else(|| segments.as_array())
        .and_then(|items| {
            items
                .iter()
                .filter(|i| i["segment"] != "no_purchases")
                .max_by_key(|i| i["customers"].as_i64().unwrap_or(0))
        })
        .and_then(|i| i["segment"].as_str())
        .unwrap_or("champions")
        .to_owned();
    let mut out = serde_json::Map::new();
    let endpoints: Vec<(&str, UrlFor)> = vec![
        ("customer_360", {
            let ids = ids.clone();
            let base = query_url.to_owned();
            Box::new(move |i| {
                let id = ids
                    .get(i as usize % ids.len().max(1))
                    .copied()
                    .unwrap_or_default();
                format!("{base}/v1/customers/{id}")
            })
        }),
        ("timeline_page", {
            let ids = ids.clone();
            let base = query_url.to_owned();
            Box::new(move |i| {
                let id = ids
                    .get(i as usize % ids.len().max(1))
                    .copied()
                    .unwrap_or_default();
                format!("{base}/v1/customers/{id}/timeline?limit=50")
            })
        }),
        ("pipeline", {
            let base = query_url.to_owned();
            Box::new(move |_| format!("{base}/v1/pipeline"))
        }),
        ("segment_customers", {
            let base = query_url.to_owned();
            let segment = segment.clone();
            Box::new(move |_| format!("{base}/v1/segments/rfm/{segment}/customers?limit=50"))
        }),
    ];
    for (name, url) in endpoints {
        let url = Arc::new(url);
        let sample = ctx.http.get(url(0)).bearer_auth(&ctx.admin).send().await?;
        let sample_status = sample.status();
        let sample_bytes = sample.bytes().await?.len();
        let deadline = Instant::now() + Duration::from_secs(preset.query_seconds);
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let started = Instant::now();
        let mut workers = JoinSet::new();
        for _ in 0..preset.query_concurrency.max(1) {
            let http = ctx.http.clone();
            let token = ctx.admin.clone();
            let url = url.clone();
            let counter = counter.clone();
            workers.spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let t = Instant::now();
                    match http.get(url(i)).bearer_auth(&token).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            lat.push(t.elapsed());
                        }
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            });
        }
        let (mut lat, mut errors) = (Vec::new(), 0u64);
        while let Some(r) = workers.join_next().await {
            let (l, e) = r?;
            lat.extend(l);
            errors += e;
        }
        let elapsed = started.elapsed();
        out.insert(
            name.to_owned(),
            json!({
                "example": url(0).replace(query_url, ""),
                "sample_status": sample_status.as_u16(),
                "sample_bytes": sample_bytes,
                "concurrency": preset.query_concurrency,
                "requests": lat.len(),
                "errors": errors,
                "per_second": rate(lat.len() as u64, elapsed),
                "latency": Latency::of(&lat),
            }),
        );
    }
    out.insert(
        "what".into(),
        json!("closed loop, `concurrency` clients for `query_seconds` each, keep-alive HTTP/1.1 to query-service in its own process (16 PostgreSQL connections); random customers for the 360 view and the timeline page (first 50 by business time), the biggest RFM segment for the segment list"),
    );
    Ok(Value::Object(out))
}
