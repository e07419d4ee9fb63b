//! Read-your-writes. command-service answers every command with the log position of its last
//! event (`crm-position: topic:partition:offset`); a query that sends it back as
//! `CRM-Min-Position` waits, at most `max_wait`, until the live read-model version has applied
//! that offset (its checkpoint for the partition is at or past it), and otherwise answers 503
//! with `Retry-After`. Several positions may be given, comma separated: all must be reached.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use infra::problem::Problem;
use infra::Position;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::error::Result;

/// The request header.
pub const MIN_POSITION_HEADER: &str = "crm-min-position";
/// Its name as documented.
pub const MIN_POSITION_NAME: &str = "CRM-Min-Position";
/// How often the checkpoints are read while waiting, besides each notification of a
/// committed batch ([`CheckpointSignal`]).
const POLL: Duration = Duration::from_millis(20);

/// Wakes read-your-writes waits when the projection commits a batch: one `LISTEN` connection
/// per query-service (on `CHECKPOINT_CHANNEL`), started at the first wait, reconnecting after
/// a failure. Waits poll every 20 ms as well, so a lost listener only costs latency.
#[derive(Debug, Default)]
pub struct CheckpointSignal {
    notify: std::sync::Arc<tokio::sync::Notify>,
    listening: tokio::sync::OnceCell<()>,
}

impl CheckpointSignal {
    async fn listen(&self, pool: &PgPool) {
        self.listening
            .get_or_init(|| async {
                let notify = self.notify.clone();
                let pool = pool.clone();
                tokio::spawn(async move {
                    loop {
                        match sqlx::postgres::PgListener::connect_with(&pool).await {
                            Ok(mut listener) => {
                                match listener.listen(read_store::CHECKPOINT_CHANNEL).await {
                                    Ok(()) => loop {
                                        match listener.recv().await {
                                            Ok(_) => notify.notify_waiters(),
                                            Err(e) => {
                                                tracing::warn!(error = %e, "checkpoint listener");
                                                break;
                                            }
                                        }
                                    },
                                    Err(e) => tracing::warn!(error = %e, "LISTEN failed"),
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "checkpoint listener connection"),
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
            })
            .await;
    }
}
/// Most positions one header may carry.
const MAX_POSITIONS: usize = 64;

/// Parses `topic:partition:offset[, ...]`.
pub fn parse_positions(headers: &HeaderMap) -> Result<Vec<Position>, Problem> {
    let mut out = Vec::new();
    for value in headers.get_all(MIN_POSITION_HEADER) {
        let text = value
            .to_str()
            .map_err(|_| Problem::bad_parameter(MIN_POSITION_NAME, "not visible ASCII"))?;
        // an empty header is no header
        if text.trim().is_empty() {
            continue;
        }
        for item in text.split(',') {
            out.push(parse_position(item.trim())?);
        }
    }
    if out.len() > MAX_POSITIONS {
        return Err(Problem::bad_parameter(
            MIN_POSITION_NAME,
            format!("at most {MAX_POSITIONS} positions"),
        ));
    }
    Ok(out)
}

fn parse_position(text: &str) -> Result<Position, Problem> {
    let bad = || {
        Problem::bad_parameter(
            MIN_POSITION_NAME,
            format!(
                "`{text}` is not topic:partition:offset (the crm-position of a command's answer)"
            ),
        )
    };
    // topic names cannot contain `:`, so the last two fields are the numbers
    let mut parts = text.rsplitn(3, ':');
    let offset = parts
        .next()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(bad)?;
    let partition = parts
        .next()
        .and_then(|s| s.parse::<i32>().ok())
        .ok_or_else(bad)?;
    let topic = parts.next().filter(|t| !t.is_empty()).ok_or_else(bad)?;
    if offset < 0 || partition < 0 {
        return Err(bad());
    }
    Ok(Position {
        topic: topic.to_owned(),
        partition,
        offset,
    })
}

/// The positions of `wanted` the live version of `projection` has not reached yet.
async fn behind(pool: &PgPool, projection: &str, wanted: &[Position]) -> Result<Vec<Position>> {
    let topics: Vec<String> = wanted.iter().map(|p| p.topic.clone()).collect();
    let partitions: Vec<i32> = wanted.iter().map(|p| p.partition).collect();
    let offsets: Vec<i64> = wanted.iter().map(|p| p.offset).collect();
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        r#"SELECT w.topic, w.p, w.o
             FROM unnest($2::text[], $3::int[], $4::bigint[]) AS w(topic, p, o)
            WHERE NOT EXISTS (
                  SELECT 1 FROM projection.projection_versions v
                    JOIN projection.checkpoints c
                      ON c.projection = v.projection AND c.version = v.version
                   WHERE v.projection = $1 AND v.status = 'live'
                     AND c.topic = w.topic AND c."partition" = w.p AND c."offset" >= w.o)"#,
    )
    .bind(projection)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(topic, partition, offset)| Position {
            topic,
            partition,
            offset,
        })
        .collect())
}

/// A position on a topic the projection does not read, or past its partition count, can never
/// be reached: 400 at once. (Before the projection has recorded its topic, nothing is known
/// and the position is waited for as any other.)
async fn refuse_unknown(pool: &PgPool, wanted: &[Position]) -> Result<()> {
    let Ok(topics) = sqlx::query_as::<_, (String, i32)>(
        "SELECT topic, partitions FROM projection.topics ORDER BY topic",
    )
    .fetch_all(pool)
    .await
    else {
        return Ok(());
    };
    if topics.is_empty() {
        return Ok(());
    }
    for p in wanted {
        let reason = match topics.iter().find(|(t, _)| *t == p.topic) {
            None => format!(
                "unknown topic `{}`; positions are on {}",
                p.topic,
                topics
                    .iter()
                    .map(|(t, _)| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some((t, n)) if p.partition >= *n => format!(
                "topic `{t}` has partitions 0 to {}; there is no partition {}",
                n - 1,
                p.partition
            ),
            Some(_) => continue,
        };
        return Err(Problem::bad_parameter(MIN_POSITION_NAME, reason).into());
    }
    Ok(())
}

/// Waits until every position is reached by the live version, at most `max_wait`.
pub async fn wait_for(
    pool: &PgPool,
    signal: &CheckpointSignal,
    projection: &str,
    wanted: Vec<Position>,
    max_wait: Duration,
) -> Result<()> {
    refuse_unknown(pool, &wanted).await?;
    let deadline = Instant::now() + max_wait;
    let mut pending = wanted;
    loop {
        // registered before the check, so that a batch committed in between still wakes it
        let committed = signal.notify.notified();
        tokio::pin!(committed);
        committed.as_mut().enable();
        pending = behind(pool, projection, &pending).await?;
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() + POLL > deadline {
            let positions: Vec<String> = pending
                .iter()
                .map(|p| format!("{}:{}:{}", p.topic, p.partition, p.offset))
                .collect();
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "position-not-reached",
                "The read model has not reached the position yet",
            )
            .detail(format!(
                "waited {} ms; not yet applied: {}",
                max_wait.as_millis(),
                positions.join(", ")
            ))
            .field(MIN_POSITION_NAME)
            .with("pending", positions)
            .retry_after(1)
            .into());
        }
        signal.listen(pool).await;
        tokio::select! {
            _ = committed => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn positions_parse() {
        let mut h = HeaderMap::new();
        h.insert(
            MIN_POSITION_HEADER,
            HeaderValue::from_static("crm.customer-events:3:42, crm.customer-events:0:7"),
        );
        let p = parse_positions(&h).ok().unwrap_or_default();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].topic.as_str(), p[0].partition, p[0].offset),
            ("crm.customer-events", 3, 42)
        );
        // an empty header is no header
        let mut h = HeaderMap::new();
        h.insert(MIN_POSITION_HEADER, HeaderValue::from_static(" "));
        assert_eq!(parse_positions(&h).ok().map(|p| p.len()), Some(0));
        for bad in ["t:1", "t:x:1", ":1:2", "t:1:-1", "t:-1:1", "t:1:2,"] {
            let mut h = HeaderMap::new();
            h.insert(MIN_POSITION_HEADER, HeaderValue::from_static(bad));
            assert!(parse_positions(&h).is_err(), "{bad:?}");
        }
    }
}
