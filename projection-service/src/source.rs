//! Where a projection's records come from, and where its dead letters and alerts go.
//!
//! The batch logic (decode, dead-letter, [`Projector::apply_with_skips`], retry) does not
//! care where records come from: it is handed `StoredRecord`s in offset order per partition.
//! Two sources feed it:
//!
//! - **Kafka** ([`EventSource::Kafka`]): the consumer of [`crate::consumer`], in a consumer
//!   group or with every partition assigned by hand (a replay); dead letters and alerts go to
//!   the Kafka topics through a producer.
//! - **The embedded log** ([`EventSource::Embedded`]): the file-backed log of the
//!   single-process default (`crm up` without Kafka). This process owns every partition, so
//!   it tails all of them from the PostgreSQL checkpoints, woken by every append; dead
//!   letters and alerts go to embedded logs of their own (`dead-letter`, `alerts`).
//!
//! Either way positions come from PostgreSQL and are checkpointed in the same transaction as
//! the read-model writes, so the effect is exactly once on both.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use infra::embedded::{EmbeddedLog, OwnedRecord};
use infra::kafka::{DeadLetter, DeadLetterProducer, KafkaSettings, LogError, StoredRecord};
use infra::log::CustomerLog;
use infra::Position;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::batches::{
    load_checkpoints, record_topic, BatchLoop, BatchOptions, ConsumerError, ConsumerHandle,
    ConsumerState, DeadLetterSink, Processor, RecordSource,
};
use crate::consumer::{self, group_id, Assignment, ConsumerConfig};
use crate::metrics::Metrics;
use crate::Projector;

/// Where records are read from (and dead letters and alerts written to).
#[derive(Clone)]
pub enum EventSource {
    /// The customer-events topic on Kafka.
    Kafka(KafkaSettings),
    /// The embedded log of one data directory.
    Embedded(EmbeddedTopics),
}

impl std::fmt::Debug for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventSource::Kafka(s) => f
                .debug_tuple("Kafka")
                .field(&s.topics().customer_events())
                .finish(),
            EventSource::Embedded(t) => f
                .debug_tuple("Embedded")
                .field(&t.customer_events.topic_name())
                .finish(),
        }
    }
}

impl EventSource {
    /// The customer-events topic's name, as checkpoints and positions carry it.
    pub fn topic(&self) -> String {
        match self {
            EventSource::Kafka(s) => s.topics().customer_events(),
            EventSource::Embedded(t) => t.customer_events.topic_name().to_owned(),
        }
    }

    /// The sink of dead letters.
    pub fn dead_letters(&self) -> Result<Arc<dyn DeadLetterSink>, LogError> {
        Ok(match self {
            EventSource::Kafka(s) => Arc::new(DeadLetterProducer::new(s)?),
            EventSource::Embedded(t) => t.dead_letters.clone(),
        })
    }

    /// The sink of published alert changes.
    pub fn alerts(&self) -> Result<Arc<dyn AlertSink>, LogError> {
        Ok(match self {
            EventSource::Kafka(s) => Arc::new(KafkaAlertSink::new(s)?),
            EventSource::Embedded(t) => t.alerts.clone(),
        })
    }
}

/// The embedded logs of one data directory: customer events, dead letters, alerts. Each
/// topic is its own [`EmbeddedLog`], with as many partitions as the customer events, keyed
/// the same way.
#[derive(Clone)]
pub struct EmbeddedTopics {
    pub customer_events: Arc<EmbeddedLog>,
    pub dead_letters: Arc<EmbeddedLog>,
    pub alerts: Arc<EmbeddedLog>,
}

impl EmbeddedTopics {
    pub const CUSTOMER_EVENTS: &'static str = "customer-events";
    pub const DEAD_LETTER: &'static str = "dead-letter";
    pub const ALERTS: &'static str = "alerts";

    /// Opens (or creates) the three logs in `dir`.
    pub fn open(dir: &Path, partitions: i32) -> Result<Self, LogError> {
        let open = |topic: &str| EmbeddedLog::open(dir, topic.to_owned(), partitions).map(Arc::new);
        Ok(EmbeddedTopics {
            customer_events: open(Self::CUSTOMER_EVENTS)?,
            dead_letters: open(Self::DEAD_LETTER)?,
            alerts: open(Self::ALERTS)?,
        })
    }
}

// ------------------------------------------------------------------ sinks

#[async_trait]
impl DeadLetterSink for DeadLetterProducer {
    async fn send(&self, letter: &DeadLetter) -> Result<Position, LogError> {
        DeadLetterProducer::send(self, letter).await
    }
}

#[async_trait]
impl DeadLetterSink for EmbeddedLog {
    async fn send(&self, letter: &DeadLetter) -> Result<Position, LogError> {
        self.publish(OwnedRecord {
            key: letter.key.clone().unwrap_or_default(),
            headers: letter.headers(),
            value: letter.value.clone().unwrap_or_default(),
        })
        .await
    }
}

/// Where published alert changes go.
#[async_trait]
pub trait AlertSink: Send + Sync {
    /// The topic's name, for logs.
    fn topic(&self) -> String;
    /// Writes the records, in order per key, and returns once all are durable.
    async fn send_all(&self, records: Vec<OwnedRecord>) -> Result<(), LogError>;
}

#[async_trait]
impl AlertSink for EmbeddedLog {
    fn topic(&self) -> String {
        self.topic_name().to_owned()
    }

    async fn send_all(&self, records: Vec<OwnedRecord>) -> Result<(), LogError> {
        for record in records {
            self.publish(record).await?;
        }
        Ok(())
    }
}

/// The alerts topic on Kafka: an idempotent producer (order per key is kept).
pub struct KafkaAlertSink {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl KafkaAlertSink {
    pub fn new(settings: &KafkaSettings) -> Result<Self, LogError> {
        Ok(KafkaAlertSink {
            producer: settings.producer_config().create()?,
            topic: settings.topics().alerts(),
            timeout: settings.operation_timeout(),
        })
    }
}

#[async_trait]
impl AlertSink for KafkaAlertSink {
    fn topic(&self) -> String {
        self.topic.clone()
    }

    async fn send_all(&self, records: Vec<OwnedRecord>) -> Result<(), LogError> {
        let mut deliveries = Vec::with_capacity(records.len());
        // enqueue all, then wait: the idempotent producer keeps their order per key
        for r in &records {
            let headers = r
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: Some(value.as_slice()),
                    })
                });
            let record = FutureRecord::to(&self.topic)
                .key(r.key.as_slice())
                .payload(r.value.as_slice())
                .headers(headers);
            let delivery = self.producer.send_result(record).map_err(|(e, _)| e)?;
            deliveries.push(delivery);
        }
        for delivery in deliveries {
            match tokio::time::timeout(self.timeout, delivery).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err((e, _)))) => return Err(e.into()),
                Ok(Err(_)) => return Err(LogError::Task("delivery canceled".into())),
                Err(_) => return Err(LogError::Timeout("alert delivery".into())),
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ consumers

/// What a consumer of either source needs.
pub struct ConsumeOptions {
    pub projector: Projector,
    pub batch: BatchOptions,
    pub metrics: Metrics,
    /// Woken when a batch closed alerts (the publisher then publishes them).
    pub alerts_closed: Arc<Notify>,
    /// A replay: every partition by hand, and stop once caught up (see
    /// [`ConsumerConfig::catch_up`]). `None`: the live consumer (on Kafka, in the version's
    /// consumer group).
    pub catch_up: Option<u64>,
}

/// Starts consuming `source` on a thread of its own. Must be called inside a tokio runtime.
pub fn start(
    source: &EventSource,
    mut options: ConsumeOptions,
) -> Result<ConsumerHandle, ConsumerError> {
    options.projector = options.projector.with_lanes(options.batch.lanes);
    match source {
        EventSource::Kafka(settings) => {
            let assignment = match options.catch_up {
                Some(_) => Assignment::Manual,
                None => Assignment::Group(group_id(settings, &options.projector)),
            };
            consumer::start(ConsumerConfig {
                settings: settings.clone(),
                projector: options.projector,
                assignment,
                batch: options.batch,
                metrics: options.metrics,
                alerts_closed: options.alerts_closed,
                catch_up: options.catch_up,
            })
        }
        EventSource::Embedded(topics) => start_embedded(topics, options),
    }
}

fn start_embedded(
    topics: &EmbeddedTopics,
    options: ConsumeOptions,
) -> Result<ConsumerHandle, ConsumerError> {
    let handle = Handle::current();
    let stop = Arc::new(AtomicBool::new(false));
    let state = Arc::new(ConsumerState::default());
    let dead_letters: Arc<dyn DeadLetterSink> = topics.dead_letters.clone();
    let log = topics.customer_events.clone();
    let thread = {
        let stop = stop.clone();
        let state = state.clone();
        std::thread::Builder::new()
            .name(format!(
                "projection-{}",
                options.projector.version().schema()
            ))
            .spawn(move || tail_embedded(log, options, handle, stop, state, dead_letters))
            .map_err(|e| ConsumerError::Thread(e.to_string()))?
    };
    Ok(ConsumerHandle::new(stop, state, thread))
}

/// Tails every partition of the embedded log from the version's checkpoints, in batches
/// bounded by size and time, until stopped (or, for a replay, until caught up).
fn tail_embedded(
    log: Arc<EmbeddedLog>,
    options: ConsumeOptions,
    handle: Handle,
    stop: Arc<AtomicBool>,
    state: Arc<ConsumerState>,
    dead_letters: Arc<dyn DeadLetterSink>,
) -> Result<(), ConsumerError> {
    let topic = log.topic_name().to_owned();
    let partitions: Vec<i32> = (0..log.partitions()).collect();
    // subscribed before the first read: no append between reading and waiting is missed
    let appended = log.subscribe();
    let checkpoints = load_checkpoints(
        &handle,
        &options.projector,
        &topic,
        &stop,
        &options.metrics,
        &state,
    )
    .ok_or(ConsumerError::Stopped)?;
    record_topic(&handle, &options.projector, &topic, partitions.len());
    let known: BTreeMap<i32, i64> = partitions
        .iter()
        .map(|p| (*p, checkpoints.get(p).copied().unwrap_or(-1)))
        .collect();
    state.assign(&known, false);
    tracing::info!(%topic, partitions = ?known, "tailing the embedded log from the checkpoints");
    let mut source = EmbeddedRecords {
        next: known.iter().map(|(p, c)| (*p, c + 1)).collect(),
        log,
        partitions,
        appended,
        handle: handle.clone(),
        state: state.clone(),
        first: 0,
        replay: options.catch_up.is_some(),
    };
    BatchLoop {
        topic,
        processor: Processor {
            projector: options.projector,
            handle,
            state,
            metrics: options.metrics,
            dead_letters,
            alerts_closed: options.alerts_closed,
            stop,
        },
        batch: options.batch,
        catch_up: options.catch_up,
    }
    .run(&mut source)
}

/// The embedded log as the batch loop's record source: every partition, from the
/// checkpoints, woken by every append.
struct EmbeddedRecords {
    log: Arc<EmbeddedLog>,
    partitions: Vec<i32>,
    /// The next offset to read of each partition.
    next: BTreeMap<i32, i64>,
    appended: tokio::sync::watch::Receiver<u64>,
    handle: Handle,
    state: Arc<ConsumerState>,
    /// The partition a round starts at (a different one each round: fairness).
    first: usize,
    /// A replay: at the end of every partition it is caught up, and does not wait.
    replay: bool,
}

impl RecordSource for EmbeddedRecords {
    fn read(&mut self, room: usize, wait: Duration) -> Result<Vec<StoredRecord>, ConsumerError> {
        let mut records: Vec<StoredRecord> = Vec::new();
        loop {
            self.appended.borrow_and_update();
            let mut all_at_end = true;
            for i in 0..self.partitions.len() {
                let p = self.partitions[(self.first + i) % self.partitions.len()];
                let end = self.log.end_offset(p)?;
                self.state.set_end(p, end);
                let from = self.next.get(&p).copied().unwrap_or(0);
                let left = room.saturating_sub(records.len());
                if left > 0 && from < end {
                    let read = self.log.read_at_most(p, from, left)?;
                    if let Some(last) = read.last() {
                        self.next.insert(p, last.position.offset + 1);
                        self.state.set_read(p, last.position.offset);
                    }
                    records.extend(read);
                }
                let at_end = self.next.get(&p).copied().unwrap_or(0) >= end;
                self.state.set_at_end(p, at_end);
                all_at_end &= at_end;
            }
            self.first = self.first.wrapping_add(1);
            if !records.is_empty() || !all_at_end || wait.is_zero() || self.replay {
                return Ok(records);
            }
            // at the end of every partition: wait for an append, at most `wait`
            let appended = &mut self.appended;
            let woken = self.handle.block_on(async {
                match tokio::time::timeout(wait, appended.changed()).await {
                    Ok(Ok(())) => true,
                    // the log is gone (shutting down): do not spin
                    Ok(Err(_)) => {
                        tokio::time::sleep(wait).await;
                        false
                    }
                    Err(_) => false,
                }
            });
            if !woken {
                return Ok(records);
            }
        }
    }

    fn caught_up(&mut self, _max_lag: u64) -> bool {
        // this process owns the log: nothing arrives that it has not read when every
        // partition is at its end
        self.state.all_at_end()
    }
}
