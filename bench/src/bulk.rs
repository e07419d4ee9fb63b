//! Bulk growth of the read models for the `large` preset: the data set loaded for real
//! (through HTTP and a replay) is replicated `scale - 1` more times in SQL, every uuid (customer,
//! contact, event, opportunity, ...) mapped to a new one per copy, so the distributions stay
//! those of the generator. Indexes and keys are dropped before and rebuilt after, as a bulk
//! load would. No event goes through HTTP, Kafka or the projector for the copies: the query
//! and freshness figures are measured at the grown size, the ingest and replay figures are not.

use std::time::Instant;

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::stats::{rate, round};

/// Tables grown; the outbox of alert messages is left alone (nothing reads it).
const TABLES: &[&str] = &[
    "customers",
    "contacts",
    "touchpoint_stats",
    "service_requests",
    "complaints",
    "orders",
    "timeline",
    "opportunities",
    "stage_history",
    "pipeline_customers",
    "stage_durations",
    "stage_alerts",
    "audit_trail",
    "rfm",
    "churn_cases",
    "churn_measures",
];

pub async fn grow(pool: &PgPool, scale: usize) -> anyhow::Result<Value> {
    let started = Instant::now();
    let copies = i64::try_from(scale.saturating_sub(1)).unwrap_or(0);
    let mut conn = pool.acquire().await?;
    sqlx::query("SET maintenance_work_mem = '1GB'")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut *conn)
        .await?;
    let mut rows_total = 0u64;
    let mut per_table = serde_json::Map::new();
    for t in TABLES {
        let t0 = Instant::now();
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
              WHERE table_schema = 'rm_v1' AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(t)
        .fetch_all(&mut *conn)
        .await?;
        let names: Vec<String> = columns.iter().map(|(c, _)| format!("\"{c}\"")).collect();
        let exprs: Vec<String> = columns
            .iter()
            .map(|(c, ty)| match (c.as_str(), ty.as_str()) {
                (_, "uuid") => format!("md5(\"{c}\"::text || ':' || k)::uuid"),
                ("offset", _) if *t == "audit_trail" => {
                    format!("\"{c}\" + k * 1000000000::bigint")
                }
                ("number", _) if *t == "customers" => format!("\"{c}\" || '-' || k"),
                _ => format!("\"{c}\""),
            })
            .collect();
        let constraints: Vec<(String, String)> = sqlx::query_as(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
              WHERE conrelid = ('rm_v1.' || $1)::regclass AND contype IN ('p', 'u')",
        )
        .bind(t)
        .fetch_all(&mut *conn)
        .await?;
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT indexname::text, indexdef FROM pg_indexes
              WHERE schemaname = 'rm_v1' AND tablename = $1",
        )
        .bind(t)
        .fetch_all(&mut *conn)
        .await?;
        let indexes: Vec<(String, String)> = indexes
            .into_iter()
            .filter(|(name, _)| !constraints.iter().any(|(c, _)| c == name))
            .collect();
        for (name, _) in &indexes {
            sqlx::query(&format!("DROP INDEX rm_v1.\"{name}\""))
                .execute(&mut *conn)
                .await?;
        }
        for (name, _) in &constraints {
            sqlx::query(&format!("ALTER TABLE rm_v1.{t} DROP CONSTRAINT \"{name}\""))
                .execute(&mut *conn)
                .await?;
        }
        let inserted = sqlx::query(&format!(
            "INSERT INTO rm_v1.{t} ({}) SELECT {} FROM rm_v1.{t}, generate_series(1, $1::bigint) AS k",
            names.join(", "),
            exprs.join(", ")
        ))
        .bind(copies)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        for (name, def) in &constraints {
            sqlx::query(&format!(
                "ALTER TABLE rm_v1.{t} ADD CONSTRAINT \"{name}\" {def}"
            ))
            .execute(&mut *conn)
            .await?;
        }
        for (_, def) in &indexes {
            sqlx::query(def).execute(&mut *conn).await?;
        }
        rows_total += inserted;
        per_table.insert(
            (*t).to_owned(),
            json!({"inserted": inserted, "seconds": round(t0.elapsed().as_secs_f64())}),
        );
        eprintln!(
            "bulk: {t}: {inserted} rows in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
    }
    // the pipeline's totals per customer owner are sums, not rows with ids: computed again
    // from the grown opportunities with the pipeline unit's own functions
    for (table, of) in [
        ("pipeline_stage_totals", "pipeline_stage_totals_of"),
        ("pipeline_owner_totals", "pipeline_owner_totals_of"),
        ("pipeline_forecast", "pipeline_forecast_of"),
    ] {
        sqlx::query(&format!("TRUNCATE rm_v1.{table}"))
            .execute(&mut *conn)
            .await?;
        let n = sqlx::query(&format!(
            "INSERT INTO rm_v1.{table} SELECT * FROM rm_v1.{of}(ARRAY(SELECT opportunity_id FROM rm_v1.opportunities))"
        ))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        per_table.insert(table.to_owned(), json!({"recomputed": n}));
    }
    sqlx::query("ANALYZE").execute(&mut *conn).await?;
    let elapsed = started.elapsed();
    Ok(json!({
        "what": "read models replicated in SQL (INSERT ... SELECT with every uuid remapped per copy; keys and indexes dropped before and rebuilt after; ANALYZE): no HTTP, Kafka or projector for the copies",
        "scale": scale,
        "rows_inserted": rows_total,
        "per_table": per_table,
        "seconds": round(elapsed.as_secs_f64()),
        "rows_per_second": rate(rows_total, elapsed),
    }))
}
