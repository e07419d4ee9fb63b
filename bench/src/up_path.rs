//! A whole preset through the embedded default's real path, as a user runs it: the real
//! `crm up` (command API → embedded log → its live projection into PostgreSQL) loaded with the
//! data set's single commands and its touchpoints through the batch endpoint; the live
//! projection's catch-up; then `crm replay` of the whole log into a new version, `crm up`
//! stopped, as the replay needs. No Kafka, and no read-model row copied in SQL. Each phase's
//! wall time, crm up's and the replay's peak memory, and a `COPY` of the rows for the limit.
//!
//! The large preset's log does not fit nisshi's memory engine and takes hours on its SQLite
//! engine (docs/benchmarks.md); the embedded log keeps its records on disk, so this is how the
//! large preset goes through the real path on one machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use serde_json::{json, Value};

use crate::procs;
use crate::run::{self, Ctx, Preset};
use crate::spool;
use crate::stats::{rate, ratio, round, Latency};
use crate::up;
use futures::StreamExt as _;

#[derive(Debug, clap::Args)]
pub struct EmbeddedPathArgs {
    /// tiny, small or large (its customers and touchpoints; its broker settings do not apply).
    #[arg(long, default_value = "large")]
    pub preset: String,
    /// Override the preset's customer count.
    #[arg(long)]
    pub customers: Option<usize>,
    /// Override the preset's load concurrency (customers loaded at once).
    #[arg(long)]
    pub load_concurrency: Option<usize>,
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// PostgreSQL server (the run's database is created afresh on it).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres: String,
    /// The database (dropped and created afresh; default `crm_bench_<preset>_embedded`).
    #[arg(long)]
    pub database: Option<String>,
    #[command(flatten)]
    pub crm: crate::up::CrmBinArgs,
    /// Where the data set and crm up's data directory go (default: the temporary directory;
    /// the large preset's log is ~12 GB).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Write the figures here as JSON too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Sums the `projection_partition_lag` series of a Prometheus text page; `None` when it has
/// none (the projection has not reported yet).
fn total_lag(metrics: &str) -> Option<i64> {
    let lags: Vec<i64> = metrics
        .lines()
        .filter(|l| l.starts_with("projection_partition_lag{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
        .collect();
    (!lags.is_empty()).then(|| lags.iter().sum())
}

pub async fn embedded_path(args: EmbeddedPathArgs) -> anyhow::Result<()> {
    let wall = Instant::now();
    let mut preset = Preset::named(&args.preset)?;
    if let Some(c) = args.customers {
        preset.customers = c;
    }
    if let Some(c) = args.load_concurrency {
        preset.load_concurrency = c.max(1);
    }
    let work = args
        .work
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!(
            "crm-bench-embedded-{}-{}",
            preset.name,
            std::process::id()
        ));
    std::fs::create_dir_all(&work)?;
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| format!("crm_bench_{}_embedded", preset.name));
    eprintln!(
        "crm-bench: preset {} through crm up (work directory {})",
        preset.name,
        work.display()
    );
    let mut phases = serde_json::Map::new();
    let mut phase = |name: &str, started: Instant| {
        let s = round(started.elapsed().as_secs_f64());
        eprintln!("crm-bench: phase {name}: {s:.1} s");
        phases.insert(name.to_owned(), json!(s));
    };

    let t = Instant::now();
    let data_set = run::generate(work.join("data-set"), args.seed, &preset, Utc::now()).await?;
    eprintln!("data set: {}", data_set.summary());
    phase("generate", t);

    let t = Instant::now();
    let mut running = up::start(
        args.crm.crm_bin.as_deref(),
        &work,
        &args.postgres,
        &database,
    )
    .await?;
    phase("start", t);
    let ctx = Ctx {
        http: running.http.clone(),
        command_url: running.command_url.clone(),
        admin: running.admin.clone(),
        adapter: running.adapter.clone(),
    };

    let t = Instant::now();
    let load = run::load(&ctx, &data_set, preset.load_concurrency).await?;
    eprintln!("load: {load}");
    running.up.check_alive()?;
    phase("load", t);

    let t = Instant::now();
    let posted = run::post_batches(&ctx, &data_set, preset.ingest_concurrency).await?;
    let ingest = json!({
        "what": "POST /v1/touchpoints:batch (NDJSON, a channel_adapter token from `crm token`) to crm up: parse, authorize, decide, one embedded-log append (fsync) per partition per batch",
        "touchpoints": posted.items,
        "accepted": posted.accepted,
        "rejected": posted.rejected,
        "request_bytes": posted.body_bytes,
        "seconds": round(posted.elapsed.as_secs_f64()),
        "touchpoints_per_second": rate(posted.accepted, posted.elapsed),
        "batch_latency": Latency::of(&posted.lat),
    });
    eprintln!("ingest: {ingest}");
    running.up.check_alive()?;
    phase("ingest", t);

    // the inbound third (every third touchpoint again, new ids): channel adapters publish it
    // on the inbound topic with Kafka; the embedded default has none, so it goes through the
    // batch endpoint too
    let t = Instant::now();
    let inbound = post_inbound(&ctx, &data_set, &preset).await?;
    eprintln!("inbound: {inbound}");
    running.up.check_alive()?;
    phase("inbound_as_batches", t);
    data_set.remove();

    // the live projection applies what the load appended: done when every partition's lag
    // is 0 twice in a row
    let t = Instant::now();
    let metrics_url = format!("{}/metrics", running.projection_url);
    let mut zero_seen = 0;
    let mut next_report = Instant::now() + Duration::from_secs(30);
    loop {
        running.up.check_alive()?;
        let page = running.http.get(&metrics_url).send().await?.text().await?;
        match total_lag(&page) {
            Some(0) => zero_seen += 1,
            Some(lag) => {
                zero_seen = 0;
                if Instant::now() >= next_report {
                    next_report += Duration::from_secs(30);
                    eprintln!("catch-up: {lag} records behind");
                }
            }
            None => zero_seen = 0,
        }
        if zero_seen >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    phase("live_catch_up", t);
    let behind_seconds = t.elapsed();

    let pool = crate::serve::connect(&running.database_url, 2).await?;
    let data = run::data_size(&pool, "rm_v1").await?;
    let log_bytes = run::dir_bytes(&running.data_dir.join("log"));
    let up_peak = running.up.peak_kib();
    let crm = running.crm.clone();
    let data_dir = running.data_dir.clone();
    let database_url = running.database_url.clone();
    let stopped = running.up.terminate(Duration::from_secs(120));
    eprintln!("crm up stopped: {stopped:?}");

    // a full replay of the log into a new version, as `crm replay` runs it
    let t = Instant::now();
    let mut cmd = std::process::Command::new(&crm);
    up::clean_env(&mut cmd);
    let replay_args: Vec<String> = vec![
        "replay".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--database-url".into(),
        database_url.clone(),
        // version 2 is where the COPY baseline writes
        "--version".into(),
        "3".into(),
        "--no-activate".into(),
    ];
    let mut replay =
        procs::spawn_command("crm replay", cmd, &replay_args, work.join("replay.log"))?;
    let mut replay_peak = None;
    let status = loop {
        replay_peak = replay.peak_kib().or(replay_peak);
        if let Some(status) = replay.exited()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let replay_elapsed = t.elapsed();
    if !status.success() {
        bail!(
            "crm replay failed ({status}); its log:\n{}",
            procs::tail(&replay.log)
        );
    }
    phase("replay", t);
    let (replayed,): (i64,) = sqlx::query_as("SELECT count(*) FROM rm_v3.audit_trail")
        .fetch_one(&pool)
        .await
        .context("counting the replayed events")?;
    let replay_eps = rate(u64::try_from(replayed).unwrap_or(0), replay_elapsed);

    let t = Instant::now();
    let copy = run::copy_baseline(
        &pool,
        u64::try_from(replayed).unwrap_or(0),
        &work.join("copy"),
        preset.copy_baseline_rows,
    )
    .await?;
    let copy_eps = copy["events_per_second_equivalent"].as_f64().unwrap_or(0.0);
    phase("copy_baseline", t);
    pool.close().await;

    let report = json!({
        "what": "the preset through the real crm up (command API -> embedded log -> live projection into PostgreSQL), then crm replay of the whole log; no Kafka, no read-model row copied in SQL",
        "preset": preset,
        "started_at": Utc::now().to_rfc3339(),
        "crm_binary": crm.display().to_string(),
        "database": database,
        "data": data,
        "log_bytes": log_bytes,
        "load": load,
        "ingest": ingest,
        "inbound_as_batches": inbound,
        "live_catch_up_seconds_after_ingest": round(behind_seconds.as_secs_f64()),
        "crm_up_peak_rss_kib": up_peak,
        "crm_up_stopped": match stopped {
            Ok(s) => json!(s),
            Err(e) => json!(format!("{e:#}")),
        },
        "replay": {
            "what": "crm replay --data-dir (the embedded log) --database-url --version 3 --no-activate: the whole log into a new version, then RFM recompute and alert sweep; wall time of the process",
            "events": replayed,
            "seconds": round(replay_elapsed.as_secs_f64()),
            "events_per_second": replay_eps,
            "peak_rss_kib": replay_peak,
            "copy_baseline": copy,
            "ratio_to_copy": ratio(replay_eps, copy_eps),
        },
        "phase_seconds": phases,
        "wall_seconds": round(wall.elapsed().as_secs_f64()),
    });
    run::publish(&report, args.out.as_deref())?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The data set's inbound records as batch items (`occurred_at` its CloudEvents `time`,
/// `idempotency_key` its `id`), `ingest_batch` a request, `ingest_concurrency` in flight.
async fn post_inbound(
    ctx: &Ctx,
    data_set: &spool::Spool,
    preset: &Preset,
) -> anyhow::Result<Value> {
    let mut records = spool::InboundRecords::open(data_set)?;
    let batch = preset.ingest_batch.max(1);
    let bodies = std::iter::from_fn(move || {
        let mut body = Vec::new();
        for _ in 0..batch {
            let Some(next) = records.next() else { break };
            match next {
                Ok(r) => {
                    let mut item: Value = match serde_json::from_slice(&r.body) {
                        Ok(v) => v,
                        Err(e) => return Some(Err(anyhow::Error::from(e))),
                    };
                    item["occurred_at"] = json!(r.time);
                    item["idempotency_key"] = json!(format!("inbound-{}", r.id));
                    if let Some(m) = item.as_object_mut() {
                        m.remove("touchpoint_id");
                    }
                    if let Err(e) = serde_json::to_writer(&mut body, &item) {
                        return Some(Err(e.into()));
                    }
                    body.push(b'\n');
                }
                Err(e) => return Some(Err(e)),
            }
        }
        (!body.is_empty()).then_some(Ok(body))
    });
    let started = Instant::now();
    let mut answers = futures::stream::iter(bodies.map(|body| async move {
        run::post_touchpoints(&ctx.http, &ctx.command_url, &ctx.adapter, body?).await
    }))
    .buffer_unordered(preset.ingest_concurrency.max(1));
    let (mut accepted, mut rejected) = (0u64, 0u64);
    while let Some(v) = futures::StreamExt::next(&mut answers).await {
        let v = v?;
        accepted += v["accepted"].as_u64().unwrap_or(0);
        rejected += v["rejected"].as_u64().unwrap_or(0);
    }
    let elapsed = started.elapsed();
    Ok(json!({
        "what": "the inbound records (every third touchpoint again, new ids) as NDJSON batches through POST /v1/touchpoints:batch",
        "records": data_set.inbound,
        "accepted": accepted,
        "rejected": rejected,
        "seconds": round(elapsed.as_secs_f64()),
        "touchpoints_per_second": rate(accepted, elapsed),
    }))
}

#[cfg(test)]
mod tests {
    use super::total_lag;

    #[test]
    fn lag_is_summed_over_the_partitions() {
        let page = "# HELP projection_partition_lag x\nprojection_partition_lag{partition=\"0\",topic=\"t\"} 3\nprojection_partition_lag{partition=\"1\",topic=\"t\"} 0\nprojection_checkpoint_offset{partition=\"0\",topic=\"t\"} 9\n";
        assert_eq!(total_lag(page), Some(3));
        assert_eq!(total_lag("projection_checkpoint_offset{} 1\n"), None);
    }
}
