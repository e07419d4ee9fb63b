//! `crm-bench soak`: the services at a steady load for a bounded time (default 10 minutes),
//! each in its own process, sampled every few seconds for what must stay flat: resident
//! memory, open file descriptors and threads of every process, and the connections each
//! holds to PostgreSQL. At the end every acknowledged command is looked for in the read
//! models. Prints one line per sample and writes the figures as JSON.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::gen::Rng;
use crate::procs::{self, Proc};
use crate::run::{broker, fresh_database, topics, touchpoint_command, BedArgs};
use crate::stats::{round, Machine};

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long the steady load lasts, in minutes.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Touchpoint commands per second (open loop), each with its own idempotency key.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// 360° view queries per second, beside the commands.
    #[arg(long, default_value_t = 10)]
    pub query_rate: u64,
    /// Customers registered before the load; the touchpoints go to them at random.
    #[arg(long, default_value_t = 2000)]
    pub customers: usize,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    pub sample_seconds: u64,
    /// Where to write the figures as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub bed: BedArgs,
    /// command-service's idempotency window (its default, 24 h, otherwise): memory levels off
    /// once a window of identified commands is held.
    #[arg(long)]
    pub idempotency_window: Option<String>,
}

/// One reading of one process.
#[derive(Debug, Clone, Serialize)]
struct ProcSample {
    rss_kib: Option<u64>,
    fds: Option<usize>,
    threads: Option<u64>,
}

fn sample(pid: u32) -> ProcSample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    ProcSample {
        rss_kib: field("VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()
            .map(|d| d.count()),
        threads: field("Threads:"),
    }
}

/// Everything one sample saw.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    seconds: f64,
    acknowledged: u64,
    failed: u64,
    queries: u64,
    projected: i64,
    postgres_connections: i64,
    processes: Vec<(String, ProcSample)>,
}

pub async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    let work = std::env::temp_dir().join(format!("crm-bench-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    eprintln!("crm-bench soak: logs in {}", work.display());
    let database = "crm_bench_soak";
    let (database_url, pg_version) = fresh_database(&args.bed.postgres, database).await?;
    // named, so that the samples count the services' connections only
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            database_url
                .parse::<sqlx::postgres::PgConnectOptions>()?
                .application_name("crm-bench-soak"),
        )
        .await
        .with_context(|| format!("connecting to {database_url}"))?;
    let machine = Machine::probe(pg_version);
    let (broker_proc, brokers) = broker(
        args.bed.brokers.as_deref(),
        args.bed.broker_bin.clone(),
        args.bed
            .broker_storage
            .unwrap_or(crate::procs::BrokerStorage::Memory),
        &work.join("broker"),
    )?;
    let prefix = format!("soak-{}.", Utc::now().timestamp_millis());
    let (_, log_args) = topics(&brokers, &prefix, args.bed.partitions).await?;
    let secret = format!("{}{}", Uuid::now_v7().simple(), Uuid::now_v7().simple());
    let (issuer, audience) = ("crm-bench", "crm");
    let token_args = vec![
        "--secret".to_owned(),
        secret.clone(),
        "--issuer".to_owned(),
        issuer.to_owned(),
        "--audience".to_owned(),
        audience.to_owned(),
    ];
    let admin = infra::auth::mint_hs256(
        secret.as_bytes(),
        issuer,
        audience,
        "bench-admin",
        &["administrator".to_owned()],
        Duration::from_secs(24 * 3600),
    )?;

    let command_port = procs::free_port()?;
    let mut role = vec!["serve-command".to_owned()];
    role.extend(log_args.clone());
    role.extend(["--listen".to_owned(), format!("127.0.0.1:{command_port}")]);
    if let Some(window) = &args.idempotency_window {
        role.extend(["--idempotency-window".to_owned(), window.clone()]);
    }
    role.extend(token_args.clone());
    let mut command = procs::spawn_role("command-service", &role, work.join("command.log"))?;
    procs::wait_for_port(&mut command, command_port, Duration::from_secs(120))?;
    let mut role = vec!["serve-projection".to_owned()];
    role.extend(log_args.clone());
    role.extend(["--database-url".to_owned(), database_url.clone()]);
    let mut projection =
        procs::spawn_role("projection-service", &role, work.join("projection.log"))?;
    let query_port = procs::free_port()?;
    let mut role = vec![
        "serve-query".to_owned(),
        "--database-url".to_owned(),
        database_url.clone(),
        "--listen".to_owned(),
        format!("127.0.0.1:{query_port}"),
    ];
    role.extend(token_args);
    let mut query = procs::spawn_role("query-service", &role, work.join("query.log"))?;
    procs::wait_for_port(&mut query, query_port, Duration::from_secs(60))?;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let command_url = format!("http://127.0.0.1:{command_port}");
    let query_url = format!("http://127.0.0.1:{query_port}");

    // the customers
    let mut rng = Rng(2026);
    let customers: Vec<Uuid> = (0..args.customers).map(|_| rng.uuid()).collect();
    let mut acknowledged_events: u64 = 0;
    {
        let mut tasks = JoinSet::new();
        for (n, c) in customers.iter().enumerate() {
            let request = http
                .post(format!("{command_url}/v1/customers"))
                .bearer_auth(&admin)
                .json(&json!({"customer_id": c, "owner": "am-li",
                    "profile": {"kind": "company", "name": format!("客户 {n}"), "region": "华东",
                                "industry": "retail", "level": "ordinary", "credit": 3, "satisfaction": 3}}));
            tasks.spawn(async move { request.send().await });
            while tasks.len() >= 32 {
                registered(tasks.join_next().await, &mut acknowledged_events)?;
            }
        }
        while let Some(r) = tasks.join_next().await {
            registered(Some(r), &mut acknowledged_events)?;
        }
    }
    eprintln!("{} customers registered", customers.len());

    // the steady load: commands and queries, open loop
    let customers = Arc::new(customers);
    let acknowledged = Arc::new(AtomicU64::new(acknowledged_events));
    let failed = Arc::new(AtomicU64::new(0));
    let queries = Arc::new(AtomicU64::new(0));
    let query_failed = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let started = tokio::time::Instant::now();
    let commands = {
        let (http, admin, customers) = (http.clone(), admin.clone(), customers.clone());
        let (acknowledged, failed) = (acknowledged.clone(), failed.clone());
        let period = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
        tokio::spawn(async move {
            let mut rng = Rng(7);
            let mut tasks = JoinSet::new();
            let mut i = 0u64;
            while started.elapsed() < duration {
                tokio::time::sleep_until(started + period.mul_f64(i as f64)).await;
                i += 1;
                let c = customers[rng.below(customers.len() as u64) as usize];
                // as a channel adapter sends them: each with its own idempotency key
                let request = http
                    .post(format!("{command_url}/v1/customers/{c}/touchpoints"))
                    .bearer_auth(&admin)
                    .header("idempotency-key", format!("soak-{i}"))
                    .json(&touchpoint_command(&mut rng));
                let (acknowledged, failed) = (acknowledged.clone(), failed.clone());
                tasks.spawn(async move {
                    match request.send().await {
                        Ok(r) if r.status().is_success() => {
                            let events = r
                                .json::<Value>()
                                .await
                                .ok()
                                .and_then(|v| v["events"].as_array().map(Vec::len))
                                .unwrap_or(0);
                            acknowledged.fetch_add(events as u64, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
                while let Some(done) = tasks.try_join_next() {
                    let _ = done;
                }
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    let reads = {
        let (http, admin, customers) = (http.clone(), admin.clone(), customers.clone());
        let (queries, query_failed) = (queries.clone(), query_failed.clone());
        let period = Duration::from_secs_f64(1.0 / args.query_rate.max(1) as f64);
        let query_url = query_url.clone();
        tokio::spawn(async move {
            let mut rng = Rng(11);
            let mut i = 0u64;
            while started.elapsed() < duration {
                tokio::time::sleep_until(started + period.mul_f64(i as f64)).await;
                i += 1;
                let c = customers[rng.below(customers.len() as u64) as usize];
                let answer = http
                    .get(format!("{query_url}/v1/customers/{c}"))
                    .bearer_auth(&admin)
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => {
                        let _ = r.bytes().await;
                        queries.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        query_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let mut samples: Vec<Sample> = Vec::new();
    let every = Duration::from_secs(args.sample_seconds.max(1));
    let mut next = started;
    loop {
        let done = started.elapsed() >= duration;
        command.check_alive()?;
        projection.check_alive()?;
        query.check_alive()?;
        let s = take_sample(
            &pool,
            database,
            started.elapsed(),
            &[&command, &projection, &query],
            broker_proc.as_ref(),
            (
                acknowledged.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                queries.load(Ordering::Relaxed),
            ),
        )
        .await;
        eprintln!("{}", line(&s));
        samples.push(s);
        if done {
            break;
        }
        next += every;
        tokio::time::sleep_until(next.min(started + duration)).await;
    }
    commands.await?;
    reads.await?;

    // every acknowledged event in the read models
    let acknowledged = acknowledged.load(Ordering::Relaxed);
    let caught_up = tokio::time::Instant::now();
    let mut projected = 0;
    while caught_up.elapsed() < Duration::from_secs(180) {
        projected = projected_events(&pool).await;
        if projected >= acknowledged as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let final_sample = take_sample(
        &pool,
        database,
        started.elapsed(),
        &[&command, &projection, &query],
        broker_proc.as_ref(),
        (
            acknowledged,
            failed.load(Ordering::Relaxed),
            queries.load(Ordering::Relaxed),
        ),
    )
    .await;
    eprintln!("after the load: {}", line(&final_sample));
    let report = json!({
        "what": "crm-bench soak: touchpoint commands (open loop) and 360° view queries at a steady rate; each service in its own process, sampled",
        "machine": machine,
        "started_at": Utc::now().to_rfc3339(),
        "minutes": args.minutes,
        "rate_per_second": args.rate,
        "query_rate_per_second": args.query_rate,
        "customers": args.customers,
        "partitions": args.bed.partitions,
        "idempotency_window": args.idempotency_window.as_deref().unwrap_or("24h (default)"),
        "events_acknowledged": acknowledged,
        "events_in_audit_trail": projected,
        "commands_failed": failed.load(Ordering::Relaxed),
        "queries_answered": queries.load(Ordering::Relaxed),
        "queries_failed": query_failed.load(Ordering::Relaxed),
        "drift": drift(&samples),
        "samples": samples,
        "after": final_sample,
    });
    eprintln!("drift: {}", report["drift"]);
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
        eprintln!("figures written to {}", out.display());
    }
    println!("{}", serde_json::to_string(&report["drift"])?);
    if projected != acknowledged as i64 {
        bail!("{acknowledged} events acknowledged, {projected} in the audit trail");
    }
    Ok(())
}

fn registered(
    joined: Option<Result<Result<reqwest::Response, reqwest::Error>, tokio::task::JoinError>>,
    events: &mut u64,
) -> anyhow::Result<()> {
    match joined {
        Some(Ok(Ok(r))) if r.status().is_success() => {
            *events += 1;
            Ok(())
        }
        Some(Ok(Ok(r))) => bail!("registering a customer: {}", r.status()),
        Some(Ok(Err(e))) => bail!("registering a customer: {e}"),
        Some(Err(e)) => bail!("registering a customer: {e}"),
        None => Ok(()),
    }
}

async fn projected_events(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM rm_v1.audit_trail")
        .fetch_one(pool)
        .await
        .map(|(n,)| n)
        .unwrap_or(-1)
}

async fn take_sample(
    pool: &sqlx::PgPool,
    database: &str,
    elapsed: Duration,
    services: &[&Proc],
    broker: Option<&Proc>,
    (acknowledged, failed, queries): (u64, u64, u64),
) -> Sample {
    let (postgres_connections,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name <> 'crm-bench-soak'",
    )
    .bind(database)
    .fetch_one(pool)
    .await
    .unwrap_or((-1,));
    let mut processes: Vec<(String, ProcSample)> = services
        .iter()
        .map(|p| (p.name.clone(), sample(p.pid())))
        .collect();
    if let Some(b) = broker {
        processes.push((b.name.clone(), sample(b.pid())));
    }
    Sample {
        seconds: round(elapsed.as_secs_f64()),
        acknowledged,
        failed,
        queries,
        projected: projected_events(pool).await,
        postgres_connections,
        processes,
    }
}

fn line(s: &Sample) -> String {
    let procs: Vec<String> = s
        .processes
        .iter()
        .map(|(n, p)| {
            format!(
                "{n}: {} MiB {} fds {} threads",
                p.rss_kib.map(|k| k / 1024).unwrap_or(0),
                p.fds.unwrap_or(0),
                p.threads.unwrap_or(0)
            )
        })
        .collect();
    format!(
        "t={:>6.0}s acknowledged={} failed={} projected={} queries={} pg_connections={} | {}",
        s.seconds,
        s.acknowledged,
        s.failed,
        s.projected,
        s.queries,
        s.postgres_connections,
        procs.join(" | ")
    )
}

/// For each process: its RSS, fds and threads at the first sample after the first quarter
/// (warmed up) and at the last, and the largest seen; the PostgreSQL connections' range.
fn drift(samples: &[Sample]) -> Value {
    let Some(last) = samples.last() else {
        return Value::Null;
    };
    let warm = &samples[samples.len() / 4];
    let mut out = serde_json::Map::new();
    for (i, (name, end)) in last.processes.iter().enumerate() {
        let at_warm = warm.processes.get(i).map(|(_, p)| p.clone());
        let max_rss = samples
            .iter()
            .filter_map(|s| s.processes.get(i).and_then(|(_, p)| p.rss_kib))
            .max();
        out.insert(
            name.clone(),
            json!({
                "rss_kib_warm": at_warm.as_ref().and_then(|p| p.rss_kib),
                "rss_kib_end": end.rss_kib,
                "rss_kib_max": max_rss,
                "fds_warm": at_warm.as_ref().and_then(|p| p.fds),
                "fds_end": end.fds,
                "threads_warm": at_warm.as_ref().and_then(|p| p.threads),
                "threads_end": end.threads,
            }),
        );
    }
    let connections: Vec<i64> = samples.iter().map(|s| s.postgres_connections).collect();
    out.insert(
        "postgres_connections".into(),
        json!({
            "warm": warm.postgres_connections,
            "end": last.postgres_connections,
            "min": connections.iter().min(),
            "max": connections.iter().max(),
        }),
    );
    out.insert("warm_at_seconds".into(), json!(warm.seconds));
    Value::Object(out)
}
