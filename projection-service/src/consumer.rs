//! The Kafka side of the projection-service: a consumer that reads the customer-events topic
//! in batches and hands them to a [`Projector`], on a thread of its own; and the batch logic
//! ([`Processor`]) that the embedded log's tailer ([`crate::source`]) shares.
//!
//! - **Positions come from PostgreSQL, never from Kafka.** In a consumer group, the rebalance
//!   callback reads the version's checkpoints and assigns every partition at checkpoint + 1
//!   (the beginning when there is none). The replay assigns every partition by hand the same
//!   way. Nothing is ever committed to Kafka (`enable.auto.commit=false`).
//! - **Batches** are bounded by size and by time. Each record is decoded; a record that does
//!   not decode (bad envelope, unknown type or version, a body that fails its schema) goes to
//!   the dead-letter topic with the reason, and its offset is checkpointed with the batch, so
//!   the partition goes on. An event that decodes but cannot be applied (a constraint of the
//!   read models refuses it) is found by applying the batch one event at a time, and is
//!   dead-lettered the same way. Transient failures (the database or the broker away) are
//!   retried with backoff; nothing is checkpointed until it is written.
//! - A dead letter is sent before the checkpoint that passes it commits: after a crash in
//!   between it is sent again (at least once), never lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use domain::StreamEvent;
use infra::kafka::{DeadLetter, DeadLetterProducer, KafkaSettings, LogError, StoredRecord};
use infra::Position;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, Statistics, TopicPartitionList};
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::error::ProjectionError;
use crate::metrics::Metrics;
use crate::source::DeadLetterSink;
use crate::Projector;

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

/// How records are grouped into one read-model transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// At most this many records per batch.
    pub max_records: usize,
    /// A batch is applied at the latest this long after its first record arrived.
    pub max_wait: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_records: 1000,
            max_wait: Duration::from_millis(200),
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

    fn revoke(&self, partitions: &[i32]) {
        let mut inner = self.lock();
        for p in partitions {
            inner.partitions.remove(p);
        }
    }

    fn revoke_all(&self) {
        let mut inner = self.lock();
        inner.partitions.clear();
        inner.assigned = false;
    }

    fn checkpoint(&self, partition: i32) -> Option<i64> {
        self.lock().partitions.get(&partition).map(|p| p.checkpoint)
    }

    fn is_assigned(&self, partition: i32) -> bool {
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

    fn record(&self, positions: &[Position], done: u64, applied: u64, dead: u64) {
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

/// How partitions are assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// As a member of this consumer group; instances of one version share its partitions.
    Group(String),
    /// Every partition of the topic, by hand (a replay): no group, no rebalances.
    Manual,
}

/// The consumer group of a projection version: `{prefix}projection-{name}-v{N}`.
pub fn group_id(settings: &KafkaSettings, projector: &Projector) -> String {
    format!(
        "{}projection-{}-v{}",
        settings.topic_prefix,
        projector.version().name(),
        projector.version().version()
    )
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

/// The partitions' start offsets: checkpoint + 1, or the beginning.
fn start_list(
    topic: &str,
    partitions: &[i32],
    checkpoints: &BTreeMap<i32, i64>,
) -> Result<(TopicPartitionList, BTreeMap<i32, i64>), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    let mut known = BTreeMap::new();
    for p in partitions {
        let checkpoint = checkpoints.get(p).copied().unwrap_or(-1);
        let offset = if checkpoint >= 0 {
            Offset::Offset(checkpoint + 1)
        } else {
            Offset::Beginning
        };
        tpl.add_partition_offset(topic, *p, offset)?;
        known.insert(*p, checkpoint);
    }
    Ok((tpl, known))
}

struct ProjectionContext {
    topic: String,
    projector: Projector,
    handle: Handle,
    state: Arc<ConsumerState>,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
    /// Partitions assigned or revoked since the loop last looked: their pending records are
    /// stale (a new assignment starts again at the checkpoint).
    changed: Mutex<BTreeSet<i32>>,
}

impl ProjectionContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    fn mark_changed(&self, partitions: &[i32]) {
        self.changed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(partitions.iter().copied());
    }

    fn take_changed(&self) -> BTreeSet<i32> {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let incremental = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions = self.partitions(tpl);
        let checkpoints = load_checkpoints(
            &self.handle,
            &self.projector,
            &self.topic,
            &self.stop,
            &self.metrics,
            &self.state,
        )
        // stopping without the database: start anywhere, nothing will be applied
        .unwrap_or_default();
        let (list, known) = match start_list(&self.topic, &partitions, &checkpoints) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the assignment");
                return;
            }
        };
        let result = if incremental {
            consumer.incremental_assign(&list)
        } else {
            consumer.assign(&list)
        };
        match result {
            Ok(()) => {
                tracing::info!(topic = %self.topic, partitions = ?known, "partitions assigned at their checkpoints");
                self.state.assign(&known, incremental);
                self.mark_changed(&partitions);
            }
            Err(e) => tracing::error!(error = %e, "assign failed"),
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let partitions = self.partitions(tpl);
        let result = if matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        ) {
            self.state.revoke(&partitions);
            consumer.incremental_unassign(tpl)
        } else {
            self.state.revoke_all();
            consumer.unassign()
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "unassign failed");
        }
        tracing::info!(topic = %self.topic, ?partitions, "partitions revoked");
        self.mark_changed(&partitions);
    }
}

impl ClientContext for ProjectionContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // the end of a partition is reported here too: it is news, not an error
        if matches!(
            error.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::trace!(%reason, "end of partition");
        } else {
            tracing::warn!(error = %error, %reason, "kafka client");
        }
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (partition, p) in &topic.partitions {
            // read_committed: the last stable offset is the end of what can be read
            let end = if p.ls_offset >= 0 {
                p.ls_offset
            } else {
                p.hi_offset
            };
            if *partition >= 0 && end >= 0 {
                self.state.set_end(*partition, end);
            }
        }
    }
}

impl ConsumerContext for ProjectionContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                tracing::warn!(error = ?other, "rebalance failed; dropping the assignment");
                self.state.revoke_all();
                let partitions = self.partitions(tpl);
                self.mark_changed(&partitions);
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "unassign failed");
                }
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

/// Everything the consumer thread needs.
pub struct ConsumerConfig {
    pub settings: KafkaSettings,
    pub projector: Projector,
    pub assignment: Assignment,
    pub batch: BatchOptions,
    pub metrics: Metrics,
    /// Woken when a batch closed alerts (the publisher then puts them on the alerts topic).
    pub alerts_closed: Arc<Notify>,
    /// A replay: stop once caught up, i.e. when, after reaching the ends of the partitions
    /// as they were when last asked, at most this many records have arrived since.
    pub catch_up: Option<u64>,
}

/// Starts the consumer on a thread of its own. Must be called inside a tokio runtime (the
/// thread runs the database work on it).
pub fn start(config: ConsumerConfig) -> Result<ConsumerHandle, ConsumerError> {
    let handle = Handle::current();
    let stop = Arc::new(AtomicBool::new(false));
    let state = Arc::new(ConsumerState::default());
    let dead_letters: Arc<dyn DeadLetterSink> =
        Arc::new(DeadLetterProducer::new(&config.settings)?);
    let thread = {
        let stop = stop.clone();
        let state = state.clone();
        std::thread::Builder::new()
            .name(format!(
                "projection-{}",
                config.projector.version().schema()
            ))
            .spawn(move || run(config, handle, stop, state, dead_letters))
            .map_err(|e| ConsumerError::Thread(e.to_string()))?
    };
    Ok(ConsumerHandle {
        stop,
        state,
        thread: Some(thread),
    })
}

fn run(
    config: ConsumerConfig,
    handle: Handle,
    stop: Arc<AtomicBool>,
    state: Arc<ConsumerState>,
    dead_letters: Arc<dyn DeadLetterSink>,
) -> Result<(), ConsumerError> {
    let topic = config.settings.topics().customer_events();
    let context = ProjectionContext {
        topic: topic.clone(),
        projector: config.projector.clone(),
        handle: handle.clone(),
        state: state.clone(),
        metrics: config.metrics.clone(),
        stop: stop.clone(),
        changed: Mutex::new(BTreeSet::new()),
    };
    let mut client = match &config.assignment {
        Assignment::Group(group) => config.settings.group_consumer_config(group),
        Assignment::Manual => config.settings.reader_config(),
    };
    client
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "1000");
    let consumer: BaseConsumer<ProjectionContext> = client.create_with_context(context)?;
    let timeout = config.settings.operation_timeout();
    let topic_partitions = |consumer: &BaseConsumer<ProjectionContext>| {
        consumer.fetch_metadata(Some(&topic), timeout).map(|m| {
            m.topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect::<Vec<i32>>()
        })
    };
    match &config.assignment {
        Assignment::Group(group) => {
            tracing::info!(%group, %topic, "joining the consumer group");
            consumer.subscribe(&[topic.as_str()])?;
            match topic_partitions(&consumer) {
                Ok(partitions) if !partitions.is_empty() => {
                    record_topic(&handle, &config.projector, &topic, partitions.len())
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, %topic, "reading the topic's partitions"),
            }
        }
        Assignment::Manual => {
            let partitions = topic_partitions(&consumer)?;
            if partitions.is_empty() {
                return Err(ConsumerError::NoPartitions(topic));
            }
            let checkpoints = load_checkpoints(
                &handle,
                &config.projector,
                &topic,
                &stop,
                &config.metrics,
                &state,
            )
            .ok_or(ConsumerError::Stopped)?;
            // explicit offsets (the low watermark rather than the logical `beginning`):
            // nothing to resolve before the first fetch
            let mut list = TopicPartitionList::new();
            for p in &partitions {
                let start = match checkpoints.get(p) {
                    Some(checkpoint) => checkpoint + 1,
                    None => consumer.fetch_watermarks(&topic, *p, timeout)?.0,
                };
                list.add_partition_offset(&topic, *p, Offset::Offset(start))?;
            }
            let known = partitions
                .iter()
                .map(|p| (*p, checkpoints.get(p).copied().unwrap_or(-1)))
                .collect();
            consumer.assign(&list)?;
            state.assign(&known, false);
            tracing::info!(%topic, partitions = ?known, "assigned every partition at its checkpoint");
        }
    }

    let mut processor = Processor {
        projector: config.projector,
        handle,
        state: state.clone(),
        metrics: config.metrics.clone(),
        dead_letters,
        alerts_closed: config.alerts_closed,
        stop: stop.clone(),
    };
    let batch = config.batch;
    let mut pending: Vec<StoredRecord> = Vec::with_capacity(batch.max_records);
    let mut deadline: Option<Instant> = None;
    let mut rate = Rate::new(state.snapshot().events_applied);
    let mut last_gauges = Instant::now();
    let mut last_target_check = Instant::now();

    let result = loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        // live, with records pending: if nothing more comes within a few milliseconds the
        // consumer has what there is, and applies it (a lone event does not wait for a batch)
        let live = config.catch_up.is_none();
        let wait = if live && !pending.is_empty() {
            Duration::from_millis(5)
        } else {
            deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100))
        };
        let polled = consumer.poll(wait);
        let idle = live && polled.is_none();
        // a rebalance (inside poll) makes pending records of its partitions stale
        let changed = consumer.context().take_changed();
        if !changed.is_empty() {
            pending.retain(|r| !changed.contains(&r.position.partition));
            if pending.is_empty() {
                deadline = None;
            }
        }
        match polled {
            Some(Ok(message)) => {
                let record = StoredRecord::from_message(&message);
                drop(message);
                state.set_at_end(record.position.partition, false);
                state.set_read(record.position.partition, record.position.offset);
                pending.push(record);
                deadline.get_or_insert_with(|| Instant::now() + batch.max_wait);
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                state.set_at_end(partition, true);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer");
                config.metrics.errors.with_label_values(&["consume"]).inc();
            }
            None => {}
        }
        // read to the end of every partition: apply now, live or catching up (no batch wait
        // while the log is idle); under load a batch fills or its wait bounds it
        let all_at_end = !pending.is_empty() && state.all_at_end();
        let due = deadline.is_some_and(|d| Instant::now() >= d);
        if !pending.is_empty() && (pending.len() >= batch.max_records || due || all_at_end || idle)
        {
            let records = std::mem::take(&mut pending);
            deadline = None;
            if let Err(e) = processor.process(records) {
                break Err(e);
            }
        }
        if last_gauges.elapsed() >= Duration::from_secs(1) {
            last_gauges = Instant::now();
            update_gauges(&topic, &state.snapshot(), &config.metrics, &mut rate);
        }
        if let Some(max_lag) = config.catch_up {
            if pending.is_empty() && last_target_check.elapsed() >= Duration::from_millis(200) {
                last_target_check = Instant::now();
                if catch_up(&consumer, &topic, &state, max_lag) {
                    state.set_reached_end();
                    tracing::info!(%topic, "caught up with the end of the log");
                    break Ok(());
                }
            }
        }
    };
    // apply what was read before leaving (unless the database or broker is away: then it
    // is read again from the checkpoint by whoever gets the partitions)
    let result = match result {
        Ok(()) if !pending.is_empty() => {
            let records: Vec<StoredRecord> = pending
                .into_iter()
                .filter(|r| state.is_assigned(r.position.partition))
                .collect();
            processor.process(records)
        }
        other => other,
    };
    update_gauges(&topic, &state.snapshot(), &config.metrics, &mut rate);
    // dropping the consumer leaves the group (a final revocation is served here)
    drop(consumer);
    result
}

/// A replay's stop condition: the end of every partition is known (from the client's
/// statistics, at most a second or two old: asking the broker instead would queue behind
/// the consumer's own long-polling fetches) and at most `max_lag` records remain before the
/// ends, counting from the checkpoints or the consumer's positions (which pass transaction
/// markers); a partition whose end the consumer reached counts as done. Events may keep
/// arriving: the service that takes the version over applies what is left.
fn catch_up(
    consumer: &BaseConsumer<ProjectionContext>,
    topic: &str,
    state: &ConsumerState,
    max_lag: u64,
) -> bool {
    let snapshot = state.snapshot();
    let positions: BTreeMap<i32, i64> = consumer
        .position()
        .map(|tpl| {
            tpl.elements_for_topic(topic)
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut remaining: u64 = 0;
    for (p, progress) in &snapshot.partitions {
        if progress.at_end {
            continue;
        }
        let Some(end) = progress.end else {
            return false;
        };
        let next = (progress.checkpoint + 1).max(positions.get(p).copied().unwrap_or(0));
        remaining += u64::try_from(end - next).unwrap_or(0);
    }
    remaining <= max_lag
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
    Event(StoredRecord, Box<StreamEvent>),
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
pub(crate) struct Processor {
    pub(crate) projector: Projector,
    pub(crate) handle: Handle,
    pub(crate) state: Arc<ConsumerState>,
    pub(crate) metrics: Metrics,
    pub(crate) dead_letters: Arc<dyn DeadLetterSink>,
    pub(crate) alerts_closed: Arc<Notify>,
    pub(crate) stop: Arc<AtomicBool>,
}

impl Processor {
    pub(crate) fn process(&mut self, records: Vec<StoredRecord>) -> Result<(), ConsumerError> {
        if records.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let count = records.len();
        let mut redelivered = 0u64;
        let mut items = Vec::with_capacity(count);
        for record in records {
            // at or below the checkpoint: applied (or dead-lettered) before
            let checkpoint = self.state.checkpoint(record.position.partition);
            if checkpoint.is_some_and(|c| record.position.offset <= c) {
                redelivered += 1;
                continue;
            }
            // either stream of the topic: customers' and the organisation's (teams)
            match record.decode_stream() {
                Ok(event) => items.push(Item::Event(record, Box::new(event))),
                Err(e) => {
                    let reason = format!("undecodable event: {e}");
                    self.dead_letter(&record, &reason, "decode")?;
                    items.push(Item::Poison(record.position));
                }
            }
        }
        let events: Vec<(Position, StreamEvent)> = items
            .iter()
            .filter_map(|item| match item {
                Item::Event(record, event) => Some((record.position.clone(), (**event).clone())),
                Item::Poison(_) => None,
            })
            .collect();
        let skipped: Vec<Position> = items
            .iter()
            .filter_map(|item| match item {
                Item::Poison(pos) => Some(pos.clone()),
                Item::Event(..) => None,
            })
            .collect();
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
                self.one_at_a_time(items, redelivered)?;
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
    fn one_at_a_time(&mut self, items: Vec<Item>, redelivered: u64) -> Result<(), ConsumerError> {
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
                Item::Event(record, event) => {
                    let pos = record.position.clone();
                    let metadata = event.metadata().clone();
                    match self.apply(&[(pos.clone(), *event)], &[])? {
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
