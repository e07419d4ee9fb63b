//! The projection's batch loop, one for every record source: it reads records in offset
//! order per partition from a [`RecordSource`] (the Kafka consumer of [`crate::consumer`], or
//! the embedded log's tailer of [`crate::source`]), groups them into batches bounded by size
//! and time, and hands each batch to the [`Processor`], which applies it to the read models
//! with the checkpoints in one transaction.
//!
//! - **Two threads**: the loop's thread reads and decodes batch N+1 while an applier thread
//!   writes batch N; a rendezvous channel hands batches over in order, so reading never runs
//!   more than one batch ahead, and a replay or a stop waits for the last one written.
//! - **Batches** are applied when full, when their time is up, as soon as every partition has
//!   been read to its end, and, live, as soon as a read brings nothing more (a lone event does
//!   not wait for a batch). A replay stops once the source says it has caught up.
//! - Each record is decoded; a record that does not decode (bad envelope, unknown type or
//!   version, a body that fails its schema) goes to the dead-letter sink with the reason, and
//!   its offset is checkpointed with the batch, so the partition goes on. An event that decodes
//!   but cannot be applied (a constraint of the read models refuses it) is found by applying
//!   the batch one event at a time; the projection stops before it. Transient failures (the
//!   database or the broker away) are retried with backoff; nothing is checkpointed until it
//!   is written.
//! - A dead letter is sent before the checkpoint that passes it commits: after a crash in
//!   between it is sent again (at least once), never lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::StreamEvent;
use infra::kafka::{DeadLetter, LogError, StoredRecord};
use infra::Position;
use rdkafka::error::KafkaError;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::error::ProjectionError;
use crate::metrics::Metrics;
use crate::Projector;

/// Where the batch loop reads records: the Kafka consumer, or the embedded log.
pub(crate) trait RecordSource {
    /// The records there are, at most `room`, in offset order per partition, waiting at most
    /// `wait` when there is none yet. Keeps the partitions' read, end and at-end progress in
    /// the consumer state up to date.
    fn read(&mut self, room: usize, wait: Duration) -> Result<Vec<StoredRecord>, ConsumerError>;

    /// Partitions revoked or assigned again since the last call: their pending records are
    /// stale (read again from the checkpoint by whoever has them now).
    fn take_changed(&mut self) -> BTreeSet<i32> {
        BTreeSet::new()
    }

    /// A replay's stop condition: at most `max_lag` records left before the ends of the
    /// partitions (called with nothing pending).
    fn caught_up(&mut self, max_lag: u64) -> bool;
}

/// Everything the batch loop needs besides its source.
pub(crate) struct BatchLoop {
    pub topic: String,
    pub processor: Processor,
    pub batch: BatchOptions,
    /// A replay: stop once caught up to at most this many records (see
    /// [`RecordSource::caught_up`]); `None`: live, until stopped.
    pub catch_up: Option<u64>,
}

impl BatchLoop {
    /// Reads, batches and applies until stopped, caught up (a replay), or failed; applies
    /// what was read before returning (unless the database is away: then it is read again
    /// from the checkpoint).
    ///
    /// Two threads: this one reads and decodes the next batch while an applier writes the
    /// one before (batches go over a rendezvous channel, in order, so at most one waits
    /// decoded while one is written).
    pub(crate) fn run(self, source: &mut dyn RecordSource) -> Result<(), ConsumerError> {
        let (to_apply, batches) = std::sync::mpsc::sync_channel::<Prepared>(0);
        let mut applier = self.processor.clone();
        let state = self.processor.state.clone();
        let metrics = self.processor.metrics.clone();
        let topic = self.topic.clone();
        let (read, applied) = std::thread::scope(|scope| {
            let applying = scope.spawn(move || -> Result<(), ConsumerError> {
                for batch in batches {
                    applier.finish(batch)?;
                }
                Ok(())
            });
            let read = self.read(source, &to_apply);
            drop(to_apply);
            match applying.join() {
                Ok(applied) => (read, applied),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        });
        // the gauges as the last batch left them (nothing applies any more: 0 events/s)
        let last = state.snapshot();
        update_gauges(&topic, &last, &metrics, &mut Rate::new(last.events_applied));
        // the applier's failure first: it is why the reading stopped
        applied.and(read)
    }

    /// The reading side of [`BatchLoop::run`]: hands each batch, decoded, to the applier.
    /// Returns `Ok` when the applier has gone (its own result says why).
    fn read(
        self,
        source: &mut dyn RecordSource,
        to_apply: &std::sync::mpsc::SyncSender<Prepared>,
    ) -> Result<(), ConsumerError> {
        let state = self.processor.state.clone();
        let stop = self.processor.stop.clone();
        let metrics = self.processor.metrics.clone();
        let batch = self.batch;
        let live = self.catch_up.is_none();
        let mut pending: Vec<StoredRecord> = Vec::with_capacity(batch.max_records);
        let mut deadline: Option<Instant> = None;
        let mut rate = Rate::new(state.snapshot().events_applied);
        let mut last_gauges = Instant::now();
        let result = loop {
            if stop.load(Ordering::Acquire) {
                break Ok(());
            }
            // live, with records pending: if nothing more comes within a few milliseconds the
            // loop has what there is, and applies it
            let wait = if live && !pending.is_empty() {
                Duration::from_millis(5)
            } else {
                deadline
                    .map(|d| d.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_millis(100))
                    .min(Duration::from_millis(100))
            };
            let room = batch.max_records.saturating_sub(pending.len()).max(1);
            let records = match source.read(room, wait) {
                Ok(records) => records,
                Err(e) => break Err(e),
            };
            let idle = live && records.is_empty();
            // a rebalance makes pending records of its partitions stale
            let changed = source.take_changed();
            if !changed.is_empty() {
                pending.retain(|r| !changed.contains(&r.position.partition));
            }
            if !records.is_empty() {
                deadline.get_or_insert_with(|| Instant::now() + batch.max_wait);
                pending.extend(records);
            }
            if pending.is_empty() {
                deadline = None;
            }
            // read to the end of every partition: apply now, live or catching up (no batch
            // wait while the log is idle); under load a batch fills or its wait bounds it
            let all_at_end = !pending.is_empty() && state.all_at_end();
            let due = deadline.is_some_and(|d| Instant::now() >= d);
            if !pending.is_empty()
                && (pending.len() >= batch.max_records || due || all_at_end || idle)
            {
                let records = std::mem::take(&mut pending);
                deadline = None;
                match self.processor.prepare(records) {
                    Ok(Some(batch)) => {
                        if to_apply.send(batch).is_err() {
                            // the applier failed: nothing more is applied
                            return Ok(());
                        }
                    }
                    Ok(None) => {}
                    Err(e) => break Err(e),
                }
            }
            if last_gauges.elapsed() >= Duration::from_secs(1) {
                last_gauges = Instant::now();
                update_gauges(&self.topic, &state.snapshot(), &metrics, &mut rate);
            }
            if let Some(max_lag) = self.catch_up {
                if pending.is_empty() && source.caught_up(max_lag) {
                    state.set_reached_end();
                    tracing::info!(topic = %self.topic, "caught up with the end of the log");
                    break Ok(());
                }
            }
        };
        let result = match result {
            Ok(()) if !pending.is_empty() => {
                let records: Vec<StoredRecord> = pending
                    .into_iter()
                    .filter(|r| state.is_assigned(r.position.partition))
                    .collect();
                self.processor.prepare(records).map(|batch| {
                    if let Some(batch) = batch {
                        // a failed applier has said why already
                        let _ = to_apply.send(batch);
                    }
                })
            }
            other => other,
        };
        update_gauges(&self.topic, &state.snapshot(), &metrics, &mut rate);
        result
    }
}

/// Where records that cannot be projected go, with the reason.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Writes the dead letter durably; where it went.
    async fn send(&self, letter: &DeadLetter) -> Result<Position, LogError>;
}

/// Why the consumer stopped other than by request.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("projection: {0}")]
    Projection(#[from] ProjectionError),
    #[error("topic `{0}` has no partitions (does it exist?)")]
    NoPartitions(String),
    #[error("consumer thread: {0}")]
    Thread(String),
    /// An event the command side accepted that a read model cannot store. It is never
    /// dead-lettered (the dead-letter topic is for records the command side never wrote): the
    /// projection stops before it, so nothing after it is applied around a hole.
    #[error("the event at {position} cannot be applied; the projection stops before it: {reason}")]
    Unapplicable { position: String, reason: String },
    /// Asked to stop while work was pending: nothing of it was checkpointed.
    #[error("stopped")]
    Stopped,
}

/// A replay's records per transaction by default: five times the live service's. Measured on
/// the small preset (docs/benchmarks.md): 0.42 of a bare `COPY` at 1,000, 0.53 at 5,000, for
/// ~70 MiB more peak memory.
pub const REPLAY_BATCH_RECORDS: usize = 5000;

/// How records are grouped into one read-model transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// At most this many records per batch.
    pub max_records: usize,
    /// A batch is applied at the latest this long after its first record arrived.
    pub max_wait: Duration,
    /// A batch's partitions are split into at most this many lanes, each applied in a
    /// transaction of its own on a connection of its own, at the same time (each partition's
    /// order kept: a partition is in one lane).
    pub lanes: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_records: 1000,
            max_wait: Duration::from_millis(200),
            lanes: 2,
        }
    }
}

/// What the consumer knows about one assigned partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PartitionProgress {
    /// The last offset applied or skipped (-1: none yet).
    pub checkpoint: i64,
    /// The end of the readable log (last stable offset) as last reported by the client.
    pub end: Option<i64>,
    /// The consumer reached the end of the partition and nothing was read since.
    pub at_end: bool,
    /// The last offset read from the log (handed to a batch, applied or not).
    pub last_read: i64,
    /// Since the assignment, every record read was applied at a moment the consumer was at
    /// the end of the partition: the read models had caught up with the log once.
    pub caught_up_once: bool,
}

impl PartitionProgress {
    /// Records not applied yet: at the end of the partition, those read but not applied yet
    /// (transaction markers, which take offsets but are not records, do not count); else to
    /// the end the client reported; unknown before it reported.
    pub fn lag(&self) -> Option<i64> {
        if self.at_end {
            return Some((self.last_read - self.checkpoint).max(0));
        }
        self.end.map(|end| (end - (self.checkpoint + 1)).max(0))
    }

    fn note_caught_up(&mut self) {
        if self.at_end && self.checkpoint >= self.last_read {
            self.caught_up_once = true;
        }
    }
}

#[derive(Debug, Default)]
struct StateInner {
    /// An assignment was received (possibly empty).
    assigned: bool,
    partitions: BTreeMap<i32, PartitionProgress>,
    records_done: u64,
    events_applied: u64,
    dead_letters: u64,
    /// Dead letters the version had counted before this consumer started (from PostgreSQL).
    dead_letters_before: u64,
    reached_end: bool,
}

/// The consumer's view of its partitions, shared with the HTTP endpoints and the replay's
/// progress line.
#[derive(Debug, Default)]
pub struct ConsumerState {
    inner: Mutex<StateInner>,
}

/// A copy of [`ConsumerState`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConsumerSnapshot {
    pub assigned: bool,
    pub partitions: BTreeMap<i32, PartitionProgress>,
    /// Records handled since the consumer started: applied, skipped or dead-lettered.
    pub records_done: u64,
    pub events_applied: u64,
    /// Records of this version sent to the dead-letter topic, over its whole life (counted
    /// in PostgreSQL with the checkpoints, so a restart does not reset it).
    pub dead_letters: u64,
    /// A replay's consumer caught up with the end of the log and stopped.
    pub reached_end: bool,
}

impl ConsumerSnapshot {
    /// Assigned (an empty assignment counts), every partition caught up with the log once
    /// since (a restart is not ready while it re-reads what it missed) and its lag at most
    /// `max_lag`.
    pub fn ready(&self, max_lag: i64) -> bool {
        self.assigned
            && self
                .partitions
                .values()
                .all(|p| p.caught_up_once && p.lag().is_some_and(|lag| lag <= max_lag))
    }

    pub fn total_lag(&self) -> Option<i64> {
        self.partitions
            .values()
            .map(PartitionProgress::lag)
            .sum::<Option<i64>>()
    }
}

impl ConsumerState {
    fn lock(&self) -> std::sync::MutexGuard<'_, StateInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn snapshot(&self) -> ConsumerSnapshot {
        let inner = self.lock();
        ConsumerSnapshot {
            assigned: inner.assigned,
            partitions: inner.partitions.clone(),
            records_done: inner.records_done,
            events_applied: inner.events_applied,
            dead_letters: inner.dead_letters_before + inner.dead_letters,
            reached_end: inner.reached_end,
        }
    }

    pub(crate) fn set_dead_letters_before(&self, count: u64) {
        let mut inner = self.lock();
        inner.dead_letters_before = count;
        inner.dead_letters = 0;
    }

    pub(crate) fn set_reached_end(&self) {
        self.lock().reached_end = true;
    }

    pub(crate) fn assign(&self, partitions: &BTreeMap<i32, i64>, incremental: bool) {
        let mut inner = self.lock();
        inner.assigned = true;
        if !incremental {
            inner.partitions.clear();
        }
        for (p, checkpoint) in partitions {
            inner.partitions.insert(
                *p,
                PartitionProgress {
                    checkpoint: *checkpoint,
                    end: None,
                    at_end: false,
                    last_read: *checkpoint,
                    caught_up_once: false,
                },
            );
        }
    }

    pub(crate) fn revoke(&self, partitions: &[i32]) {
        let mut inner = self.lock();
        for p in partitions {
            inner.partitions.remove(p);
        }
    }

    pub(crate) fn revoke_all(&self) {
        let mut inner = self.lock();
        inner.partitions.clear();
        inner.assigned = false;
    }

    pub(crate) fn checkpoint(&self, partition: i32) -> Option<i64> {
        self.lock().partitions.get(&partition).map(|p| p.checkpoint)
    }

    pub(crate) fn is_assigned(&self, partition: i32) -> bool {
        self.lock().partitions.contains_key(&partition)
    }

    /// True when partitions are assigned and every one has been read to its end: what was
    /// read can be applied at once (cheaper than [`ConsumerState::snapshot`]).
    pub(crate) fn all_at_end(&self) -> bool {
        let inner = self.lock();
        inner.assigned && inner.partitions.values().all(|p| p.at_end)
    }

    pub(crate) fn set_at_end(&self, partition: i32, at_end: bool) {
        if let Some(p) = self.lock().partitions.get_mut(&partition) {
            p.at_end = at_end;
            p.note_caught_up();
        }
    }

    /// A record of `partition` at `offset` was read (it is pending until applied).
    pub(crate) fn set_read(&self, partition: i32, offset: i64) {
        if let Some(p) = self.lock().partitions.get_mut(&partition) {
            p.last_read = p.last_read.max(offset);
        }
    }

    pub(crate) fn set_end(&self, partition: i32, end: i64) {
        if let Some(p) = self.lock().partitions.get_mut(&partition) {
            p.end = Some(end);
        }
    }

    pub(crate) fn record(&self, positions: &[Position], done: u64, applied: u64, dead: u64) {
        let mut inner = self.lock();
        for pos in positions {
            if let Some(p) = inner.partitions.get_mut(&pos.partition) {
                p.checkpoint = p.checkpoint.max(pos.offset);
                p.last_read = p.last_read.max(p.checkpoint);
                p.note_caught_up();
            }
        }
        inner.records_done += done;
        inner.events_applied += applied;
        inner.dead_letters += dead;
    }
}

/// Says which topic the projection reads and how many partitions it has, for query-service
/// to tell a position on an unknown topic or partition (400) from one not reached yet.
pub(crate) fn record_topic(handle: &Handle, projector: &Projector, topic: &str, partitions: usize) {
    if let Err(e) = handle.block_on(projector.record_topic(topic, partitions as i32)) {
        tracing::warn!(error = %e, %topic, "recording the topic's partitions failed");
    }
}

/// Reads a version's checkpoints, blocking, retrying until it succeeds or `stop` is set; the
/// dead letters the version counted with them seed `state`'s count (it survives restarts).
pub(crate) fn load_checkpoints(
    handle: &Handle,
    projector: &Projector,
    topic: &str,
    stop: &AtomicBool,
    metrics: &Metrics,
    state: &ConsumerState,
) -> Option<BTreeMap<i32, i64>> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let read = handle.block_on(async {
            let positions = projector.positions().await?;
            let dead_letters = projector.dead_letters().await?;
            Ok::<_, crate::ProjectionError>((positions, dead_letters))
        });
        match read {
            Ok((positions, dead_letters)) => {
                state.set_dead_letters_before(dead_letters);
                metrics.dead_letters_recorded.set(dead_letters as i64);
                return Some(
                    positions
                        .into_iter()
                        .filter(|p| p.topic == topic)
                        .map(|p| (p.partition, p.offset))
                        .collect(),
                );
            }
            Err(e) => {
                metrics.errors.with_label_values(&["checkpoints"]).inc();
                tracing::warn!(error = %e, "reading checkpoints failed; retrying");
                if stop.load(Ordering::Acquire) {
                    return None;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A running consumer thread.
pub struct ConsumerHandle {
    stop: Arc<AtomicBool>,
    state: Arc<ConsumerState>,
    thread: Option<JoinHandle<Result<(), ConsumerError>>>,
}

impl std::fmt::Debug for ConsumerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerHandle")
            .field("state", &self.state.snapshot())
            .finish_non_exhaustive()
    }
}

impl ConsumerHandle {
    pub(crate) fn new(
        stop: Arc<AtomicBool>,
        state: Arc<ConsumerState>,
        thread: JoinHandle<Result<(), ConsumerError>>,
    ) -> Self {
        ConsumerHandle {
            stop,
            state,
            thread: Some(thread),
        }
    }

    pub fn state(&self) -> &Arc<ConsumerState> {
        &self.state
    }

    /// The thread ended (an error, or the replay caught up).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Asks the thread to stop (it applies what it holds, then leaves the group) and waits.
    pub async fn stop(mut self) -> Result<(), ConsumerError> {
        self.stop.store(true, Ordering::Release);
        self.join().await
    }

    /// Waits for the thread to end on its own.
    pub async fn join(&mut self) -> Result<(), ConsumerError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(result)) => match result {
                Err(ConsumerError::Stopped) => Ok(()),
                other => other,
            },
            Ok(Err(_)) => Err(ConsumerError::Thread("the consumer thread panicked".into())),
            Err(e) => Err(ConsumerError::Thread(e.to_string())),
        }
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Events per second over the last interval.
pub(crate) struct Rate {
    at: Instant,
    applied: u64,
}

impl Rate {
    pub(crate) fn new(applied: u64) -> Self {
        Rate {
            at: Instant::now(),
            applied,
        }
    }
}

pub(crate) fn update_gauges(
    topic: &str,
    snapshot: &ConsumerSnapshot,
    metrics: &Metrics,
    rate: &mut Rate,
) {
    metrics
        .dead_letters_recorded
        .set(snapshot.dead_letters as i64);
    let elapsed = rate.at.elapsed().as_secs_f64();
    if elapsed > 0.0 {
        let delta = snapshot.events_applied.saturating_sub(rate.applied);
        metrics
            .events_per_second
            .set(delta as f64 / elapsed.max(0.001));
    }
    *rate = Rate::new(snapshot.events_applied);
    metrics.lag.reset();
    metrics.checkpoint.reset();
    for (partition, p) in &snapshot.partitions {
        let label = partition.to_string();
        if let Some(lag) = p.lag() {
            metrics.lag.with_label_values(&[topic, &label]).set(lag);
        }
        metrics
            .checkpoint
            .with_label_values(&[topic, &label])
            .set(p.checkpoint);
    }
}

/// One record of a batch, decoded or not.
enum Item {
    /// Decoded: its event is the next of the batch's events.
    Event(StoredRecord),
    /// Not an event: already dead-lettered, to be checkpointed.
    Poison(Position),
}

/// Whether a failed apply will fail again however often it is retried: the read models
/// refuse the data (integrity or data errors), as opposed to the database being away.
fn is_permanent(e: &ProjectionError) -> bool {
    match e {
        ProjectionError::Database(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        ProjectionError::Encode(_) | ProjectionError::OutOfRange(_) => true,
        _ => false,
    }
}

/// The batch logic, whatever the source: decode, dead-letter what does not decode, apply
/// with the skipped positions, retry transient failures, and find (one event at a time) and
/// dead-letter the events the read models refuse.
#[derive(Clone)]
pub(crate) struct Processor {
    pub(crate) projector: Projector,
    pub(crate) handle: Handle,
    pub(crate) state: Arc<ConsumerState>,
    pub(crate) metrics: Metrics,
    pub(crate) dead_letters: Arc<dyn DeadLetterSink>,
    pub(crate) alerts_closed: Arc<Notify>,
    pub(crate) stop: Arc<AtomicBool>,
}

/// A batch decoded and ready to apply.
pub(crate) struct Prepared {
    items: Vec<Item>,
    events: Vec<(Position, StreamEvent)>,
    skipped: Vec<Position>,
    records: usize,
    redelivered: u64,
    started: Instant,
}

impl Processor {
    /// Leaves out what the checkpoints passed, decodes the rest, and dead-letters what does
    /// not decode. Nothing to apply: `None`.
    pub(crate) fn prepare(
        &self,
        records: Vec<StoredRecord>,
    ) -> Result<Option<Prepared>, ConsumerError> {
        if records.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let count = records.len();
        let mut redelivered = 0u64;
        let mut items = Vec::with_capacity(count);
        // decoded once: the batch applies these; one at a time, the items take them in order
        let mut events: Vec<(Position, StreamEvent)> = Vec::with_capacity(count);
        for record in records {
            // at or below the checkpoint: applied (or dead-lettered) before
            let checkpoint = self.state.checkpoint(record.position.partition);
            if checkpoint.is_some_and(|c| record.position.offset <= c) {
                redelivered += 1;
                continue;
            }
            // either stream of the topic: customers' and the organisation's (teams)
            match record.decode_stream() {
                Ok(event) => {
                    events.push((record.position.clone(), event));
                    items.push(Item::Event(record));
                }
                Err(e) => {
                    let reason = format!("undecodable event: {e}");
                    self.dead_letter(&record, &reason, "decode")?;
                    items.push(Item::Poison(record.position));
                }
            }
        }
        let skipped: Vec<Position> = items
            .iter()
            .filter_map(|item| match item {
                Item::Poison(pos) => Some(pos.clone()),
                Item::Event(_) => None,
            })
            .collect();
        Ok(Some(Prepared {
            items,
            events,
            skipped,
            records: count,
            redelivered,
            started,
        }))
    }

    /// Applies a prepared batch: in one transaction, or, when the read models refuse it, one
    /// event at a time.
    pub(crate) fn finish(&mut self, batch: Prepared) -> Result<(), ConsumerError> {
        let Prepared {
            items,
            events,
            skipped,
            records: count,
            redelivered,
            started,
        } = batch;
        let poison = skipped.len() as u64;
        match self.apply(&events, &skipped)? {
            Ok(outcome) => {
                self.done(&outcome, count as u64, poison);
                self.metrics
                    .events_skipped
                    .inc_by(redelivered + outcome.skipped as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the batch cannot be applied; applying it one event at a time");
                self.one_at_a_time(items, events, redelivered)?;
            }
        }
        tracing::debug!(records = count, elapsed = ?started.elapsed(), "batch applied");
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(count as f64);
        Ok(())
    }

    fn done(&self, outcome: &crate::ApplyOutcome, records: u64, dead: u64) {
        self.state
            .record(&outcome.positions, records, outcome.applied as u64, dead);
        if dead > 0 {
            self.metrics
                .dead_letters_recorded
                .set(self.state.snapshot().dead_letters as i64);
        }
        self.metrics.events_applied.inc_by(outcome.applied as u64);
        if !outcome.alerts_closed.is_empty() {
            self.alerts_closed.notify_one();
        }
    }

    /// Each event in its own transaction: the ones the read models refuse are dead-lettered.
    fn one_at_a_time(
        &mut self,
        items: Vec<Item>,
        events: Vec<(Position, StreamEvent)>,
        redelivered: u64,
    ) -> Result<(), ConsumerError> {
        let mut events = events.into_iter();
        let mut first = true;
        for item in items {
            // the redelivered records of the batch count once, with its first item
            let records = if first { 1 + redelivered } else { 1 };
            first = false;
            match item {
                Item::Poison(pos) => {
                    let outcome = self.apply(&[], std::slice::from_ref(&pos))?;
                    match outcome {
                        Ok(outcome) => self.done(&outcome, records, 1),
                        Err(e) => return Err(e.into()),
                    }
                }
                Item::Event(record) => {
                    let Some((pos, event)) = events.next() else {
                        return Err(ConsumerError::Thread(
                            "a decoded record without its event".to_owned(),
                        ));
                    };
                    let metadata = event.metadata().clone();
                    match self.apply(&[(pos.clone(), event)], &[])? {
                        Ok(outcome) => self.done(&outcome, records, 0),
                        Err(e) if self.already_recorded(&metadata)? => {
                            // the same event appended twice (a producer's retry): its first
                            // copy is in the read models, this one goes to the dead letters
                            let reason = format!("duplicate of an applied event: {e}");
                            self.dead_letter(&record, &reason, "duplicate")?;
                            match self.apply(&[], std::slice::from_ref(&pos))? {
                                Ok(outcome) => self.done(&outcome, records, 1),
                                Err(e) => return Err(e.into()),
                            }
                        }
                        Err(e) => {
                            // Accepted by the command side, refused by a read model: stop
                            // before it, with its position, rather than apply around a hole.
                            let position =
                                format!("{}:{}:{}", pos.topic, pos.partition, pos.offset);
                            tracing::error!(%position, error = %e, "an accepted event cannot be applied; the projection stops before it");
                            self.metrics
                                .errors
                                .with_label_values(&["unapplicable"])
                                .inc();
                            return Err(ConsumerError::Unapplicable {
                                position,
                                reason: e.to_string(),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether an event with this id, or this stream's sequence, is in the read models already.
    fn already_recorded(&self, metadata: &domain::EventMetadata) -> Result<bool, ConsumerError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .handle
                .block_on(self.projector.already_recorded(metadata))
            {
                Ok(found) => return Ok(found),
                Err(e) => {
                    tracing::warn!(error = %e, "looking for a duplicate failed; retrying");
                    if self.stop.load(Ordering::Acquire) {
                        return Err(ConsumerError::Stopped);
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Applies, retrying transient failures until it succeeds or the consumer stops. The
    /// inner error is a permanent one (the read models refuse the data).
    #[allow(clippy::type_complexity)]
    fn apply(
        &self,
        events: &[(Position, StreamEvent)],
        skipped: &[Position],
    ) -> Result<Result<crate::ApplyOutcome, ProjectionError>, ConsumerError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .handle
                .block_on(self.projector.apply_with_skips(events, skipped))
            {
                Ok(outcome) => return Ok(Ok(outcome)),
                Err(e) if is_permanent(&e) => return Ok(Err(e)),
                Err(e) => {
                    self.metrics.errors.with_label_values(&["apply"]).inc();
                    tracing::warn!(error = %e, ?backoff, "applying a batch failed; retrying");
                    if self.stop.load(Ordering::Acquire) {
                        return Err(ConsumerError::Stopped);
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn dead_letter(
        &self,
        record: &StoredRecord,
        reason: &str,
        kind: &str,
    ) -> Result<(), ConsumerError> {
        let letter = DeadLetter::from_stored(record, reason);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.handle.block_on(self.dead_letters.send(&letter)) {
                Ok(at) => {
                    tracing::warn!(source = ?record.position, dead_letter = ?at, %reason, "dead-lettered a record");
                    self.metrics.dead_letters.with_label_values(&[kind]).inc();
                    return Ok(());
                }
                Err(e) => {
                    self.metrics
                        .errors
                        .with_label_values(&["dead_letter"])
                        .inc();
                    tracing::warn!(error = %e, "sending a dead letter failed; retrying");
                    if self.stop.load(Ordering::Acquire) {
                        return Err(ConsumerError::Stopped);
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
