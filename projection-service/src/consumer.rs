//! The Kafka record source of the projection-service: a consumer of the customer-events topic,
//! on a thread of its own, that the batch loop ([`crate::batches`]) reads.
//!
//! - **Positions come from PostgreSQL, never from Kafka.** In a consumer group, the rebalance
//!   callback reads the version's checkpoints and assigns every partition at checkpoint + 1
//!   (the beginning when there is none). The replay assigns every partition by hand the same
//!   way. Nothing is ever committed to Kafka (`enable.auto.commit=false`).
//! - **The end of the log** comes from the client's statistics (the ends of the partitions)
//!   and `enable.partition.eof`; a replay is caught up when at most its lag is left.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use infra::kafka::{DeadLetterProducer, KafkaSettings, StoredRecord};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, Statistics, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::batches::{
    load_checkpoints, record_topic, BatchLoop, BatchOptions, ConsumerError, ConsumerHandle,
    ConsumerState, DeadLetterSink, Processor, RecordSource,
};
use crate::metrics::Metrics;
use crate::Projector;

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
    Ok(ConsumerHandle::new(stop, state, thread))
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

    let processor = Processor {
        projector: config.projector,
        handle,
        state: state.clone(),
        metrics: config.metrics.clone(),
        dead_letters,
        alerts_closed: config.alerts_closed,
        stop: stop.clone(),
    };
    let mut source = KafkaRecords {
        consumer,
        topic: topic.clone(),
        state,
        last_check: Instant::now(),
    };
    let result = BatchLoop {
        topic,
        processor,
        batch: config.batch,
        catch_up: config.catch_up,
    }
    .run(&mut source);
    // dropping the consumer leaves the group (a final revocation is served here)
    drop(source);
    result
}

/// The consumer as the batch loop's record source.
struct KafkaRecords {
    consumer: BaseConsumer<ProjectionContext>,
    topic: String,
    state: Arc<ConsumerState>,
    /// When the replay's stop condition was last checked.
    last_check: Instant,
}

impl KafkaRecords {
    /// Handles one poll's outcome; a record, if it was one.
    fn take(
        &self,
        polled: Option<Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>>,
    ) -> Option<StoredRecord> {
        match polled {
            Some(Ok(message)) => {
                let record = StoredRecord::from_message(&message);
                self.state.set_at_end(record.position.partition, false);
                self.state
                    .set_read(record.position.partition, record.position.offset);
                Some(record)
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                self.state.set_at_end(partition, true);
                None
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer");
                self.consumer
                    .context()
                    .metrics
                    .errors
                    .with_label_values(&["consume"])
                    .inc();
                None
            }
            None => None,
        }
    }
}

impl RecordSource for KafkaRecords {
    fn read(&mut self, room: usize, wait: Duration) -> Result<Vec<StoredRecord>, ConsumerError> {
        let mut records = Vec::new();
        // the first poll waits; the rest take what the client has fetched already
        let mut wait = wait;
        while records.len() < room {
            let polled = self.consumer.poll(wait);
            let more = polled.is_some();
            if let Some(record) = self.take(polled) {
                records.push(record);
            }
            if !more {
                break;
            }
            wait = Duration::ZERO;
        }
        Ok(records)
    }

    fn take_changed(&mut self) -> BTreeSet<i32> {
        self.consumer.context().take_changed()
    }

    fn caught_up(&mut self, max_lag: u64) -> bool {
        if self.last_check.elapsed() < Duration::from_millis(200) {
            return false;
        }
        self.last_check = Instant::now();
        catch_up(&self.consumer, &self.topic, &self.state, max_lag)
    }
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
