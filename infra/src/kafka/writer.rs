use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::KafkaRecord;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::dead_letter::owned_headers;
use super::error::is_fencing_code;
use super::{partition_for, DeadLetter, KafkaSettings, LogError};
use crate::Position;

/// Appends records to one partition of a customer stream log. [`PartitionWriter`] is the
/// Kafka implementation; tests of the services may use a fake.
#[async_trait]
pub trait RecordAppender: Send + Sync {
    /// Appends all records atomically, in order; returns their positions.
    async fn append(&self, records: &[KafkaRecord]) -> Result<Vec<Position>, LogError>;
}

/// Positions of what one transaction appended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    /// Of the records, in their order, on the customer-events topic.
    pub positions: Vec<Position>,
    /// Of the dead letters, in their order, on the dead-letter topic.
    pub dead_letters: Vec<Position>,
}

/// The one writer of one partition of the customer-events topic: a transactional, idempotent
/// producer whose `transactional.id` is bound to the partition. Opening a writer for a
/// partition fences every older writer of it, in this process or another: from then on the
/// older one's appends fail with [`LogError::Fenced`] and none of its uncommitted records
/// become visible to read_committed readers.
///
/// Appends are serialised (one transaction at a time); share it behind an `Arc`.
pub struct PartitionWriter {
    producer: FutureProducer,
    topic: String,
    dead_letter_topic: String,
    partition: i32,
    partitions: i32,
    transactional_id: String,
    timeout: Duration,
    lock: tokio::sync::Mutex<()>,
    /// Set once the writer can no longer be used (fenced, or failed fatally).
    fenced: AtomicBool,
    /// Set when an abort failed: the producer's state is unknown.
    failed: AtomicBool,
}

impl std::fmt::Debug for PartitionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionWriter")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("transactional_id", &self.transactional_id)
            .field("fenced", &self.is_fenced())
            .finish_non_exhaustive()
    }
}

/// What to do after a failed transactional call.
enum Failure {
    /// The producer can no longer be used.
    Dead(LogError),
    /// Abort the transaction; the producer stays usable.
    Abort(KafkaError),
    /// Try the same call again.
    Retry(KafkaError),
}

impl PartitionWriter {
    /// Creates the producer and calls `init_transactions`, which waits for (or aborts) any
    /// open transaction of an older writer of this partition and fences it.
    pub async fn open(settings: &KafkaSettings, partition: i32) -> Result<Self, LogError> {
        if !(0..settings.partitions).contains(&partition) {
            return Err(LogError::Provision {
                topic: settings.topics().customer_events(),
                reason: format!(
                    "partition {partition} is outside 0..{}",
                    settings.partitions
                ),
            });
        }
        let transactional_id = settings.transactional_id(partition);
        let producer: FutureProducer = settings
            .transactional_producer_config(&transactional_id)
            .create()?;
        let writer = PartitionWriter {
            producer,
            topic: settings.topics().customer_events(),
            dead_letter_topic: settings.topics().dead_letter(),
            partition,
            partitions: settings.partitions,
            transactional_id,
            timeout: settings.operation_timeout(),
            lock: tokio::sync::Mutex::new(()),
            fenced: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        };
        let producer = writer.producer.clone();
        let timeout = writer.timeout;
        let result =
            tokio::task::spawn_blocking(move || producer.init_transactions(timeout)).await?;
        match result {
            Ok(()) => {
                tracing::info!(transactional_id = %writer.transactional_id, "partition writer opened");
                Ok(writer)
            }
            Err(e) => Err(match writer.failure(e) {
                Failure::Dead(e) => e,
                Failure::Abort(e) | Failure::Retry(e) => LogError::Kafka(e),
            }),
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// True once a newer writer fenced this one (or it failed fatally): drop it.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Appends the records to this writer's partition in one transaction and commits.
    /// Every record's key must belong to this partition ([`partition_for`]).
    pub async fn append(&self, records: &[KafkaRecord]) -> Result<Vec<Position>, LogError> {
        self.append_with_dead_letters(records, &[])
            .await
            .map(|a| a.positions)
    }

    /// Appends the records to this writer's partition and the dead letters to the
    /// dead-letter topic, all in one transaction: either all become visible or none does.
    pub async fn append_with_dead_letters(
        &self,
        records: &[KafkaRecord],
        dead_letters: &[DeadLetter],
    ) -> Result<Appended, LogError> {
        self.check_usable()?;
        for record in records {
            let expected = partition_for(&record.key, self.partitions);
            if expected != self.partition {
                return Err(LogError::WrongPartition {
                    key: String::from_utf8_lossy(&record.key).into_owned(),
                    expected,
                    actual: self.partition,
                });
            }
        }
        if records.is_empty() && dead_letters.is_empty() {
            return Ok(Appended::default());
        }
        let _one_transaction_at_a_time = self.lock.lock().await;
        self.check_usable()?;

        if let Err(e) = self.producer.begin_transaction() {
            return Err(match self.failure(e) {
                Failure::Dead(e) => e,
                Failure::Abort(e) | Failure::Retry(e) => LogError::Kafka(e),
            });
        }

        let mut deliveries = Vec::with_capacity(records.len());
        let mut letters = Vec::with_capacity(dead_letters.len());
        let mut enqueue_error = None;
        for record in records {
            let headers =
                owned_headers(record.headers.iter().map(|(k, v)| (*k, Some(v.as_slice()))));
            let future_record = FutureRecord::to(&self.topic)
                .partition(self.partition)
                .key(record.key.as_slice())
                .payload(record.value.as_slice())
                .headers(headers);
            match self.enqueue(future_record).await {
                Ok(d) => deliveries.push(d),
                Err(e) => {
                    enqueue_error = Some(e);
                    break;
                }
            }
        }
        if enqueue_error.is_none() {
            for letter in dead_letters {
                match self.enqueue(letter.record(&self.dead_letter_topic)).await {
                    Ok(d) => letters.push(d),
                    Err(e) => {
                        enqueue_error = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some(e) = enqueue_error {
            return Err(self.abort(e).await);
        }

        // Every record acknowledged before the commit: rdkafka's commit_transaction flushes
        // first, and a flush that finds records in flight polls in steps of 100 ms
        // (`BaseProducer::flush` → `poll(100 ms)`, which always waits its timeout out), so
        // committing right after enqueueing cost at least 100 ms per transaction.
        let mut appended = Appended {
            positions: Vec::with_capacity(deliveries.len()),
            dead_letters: Vec::with_capacity(letters.len()),
        };
        for delivery in deliveries {
            match delivered(&self.topic, delivery).await {
                Ok(p) => appended.positions.push(p),
                Err(e) => return Err(self.abort(undelivered(e)).await),
            }
        }
        for delivery in letters {
            match delivered(&self.dead_letter_topic, delivery).await {
                Ok(p) => appended.dead_letters.push(p),
                Err(e) => return Err(self.abort(undelivered(e)).await),
            }
        }
        self.commit().await?;
        Ok(appended)
    }

    fn check_usable(&self) -> Result<(), LogError> {
        if self.is_fenced() {
            return Err(self.dead_error());
        }
        Ok(())
    }

    /// The error of a writer that can no longer be used.
    fn dead_error(&self) -> LogError {
        let transactional_id = self.transactional_id.clone();
        match self.producer.client().fatal_error() {
            Some((code, _)) if is_fencing_code(code) => LogError::Fenced { transactional_id },
            Some((_, reason)) => LogError::Fatal {
                transactional_id,
                reason,
            },
            None if self.failed.load(Ordering::Acquire) => LogError::Fatal {
                transactional_id,
                reason: "a transaction could not be aborted".to_owned(),
            },
            None => LogError::Fenced { transactional_id },
        }
    }

    fn mark_dead(&self) -> LogError {
        self.fenced.store(true, Ordering::Release);
        let e = self.dead_error();
        tracing::warn!(transactional_id = %self.transactional_id, error = %e, "partition writer is dead");
        e
    }

    fn failure(&self, e: KafkaError) -> Failure {
        let fatal = self.producer.client().fatal_error().is_some();
        match &e {
            _ if fatal => Failure::Dead(self.mark_dead()),
            KafkaError::Transaction(rde) if rde.is_fatal() || is_fencing_code(rde.code()) => {
                Failure::Dead(self.mark_dead())
            }
            KafkaError::Transaction(rde) if rde.txn_requires_abort() => Failure::Abort(e),
            KafkaError::Transaction(rde) if rde.is_retriable() => Failure::Retry(e),
            other => match other.rdkafka_error_code() {
                Some(code) if is_fencing_code(code) => Failure::Dead(self.mark_dead()),
                _ => Failure::Abort(e),
            },
        }
    }

    async fn enqueue<'a>(
        &self,
        mut record: FutureRecord<'a, [u8], [u8]>,
    ) -> Result<DeliveryFuture, KafkaError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if Instant::now() < deadline =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Commits, retrying retriable failures; aborts when the transaction cannot commit.
    async fn commit(&self) -> Result<(), LogError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let producer = self.producer.clone();
            let timeout = self.timeout;
            let result = tokio::task::spawn_blocking(move || {
                settle_delivery_reports(&producer);
                producer.commit_transaction(timeout)
            })
            .await?;
            match result {
                Ok(()) => return Ok(()),
                Err(e) => match self.failure(e) {
                    Failure::Dead(e) => return Err(e),
                    Failure::Retry(e) if Instant::now() < deadline => {
                        tracing::debug!(error = %e, "retrying commit");
                    }
                    Failure::Retry(e) | Failure::Abort(e) => return Err(self.abort(e).await),
                },
            }
        }
    }

    /// Aborts the open transaction after `cause`; returns the error to report.
    async fn abort(&self, cause: KafkaError) -> LogError {
        if let Failure::Dead(e) = self.failure(cause.clone()) {
            return e;
        }
        let producer = self.producer.clone();
        let timeout = self.timeout;
        match tokio::task::spawn_blocking(move || producer.abort_transaction(timeout)).await {
            Ok(Ok(())) => LogError::Aborted(cause),
            Ok(Err(e)) => match self.failure(e) {
                Failure::Dead(e) => e,
                // Could not abort: the producer is in an unknown state. Treat it as dead so
                // that the owner reopens it (init_transactions aborts what is left open).
                Failure::Abort(e) | Failure::Retry(e) => {
                    self.failed.store(true, Ordering::Release);
                    self.fenced.store(true, Ordering::Release);
                    LogError::Fatal {
                        transactional_id: self.transactional_id.clone(),
                        reason: format!("abort failed ({e}) after: {cause}"),
                    }
                }
            },
            Err(join) => LogError::from(join),
        }
    }
}

/// Waits until the polling thread has disposed of the delivery reports of records already
/// delivered: they count as in flight until then, and `commit_transaction`'s flush, finding one,
/// polls in steps of 100 ms (`BaseProducer::flush` → `poll(100 ms)`, which waits its timeout out).
/// Disposal follows the last delivery within microseconds, so this first yields the thread for
/// a few microseconds, then sleeps in steps of 50 µs on this blocking thread (tokio's timer
/// would cost a whole millisecond of every transaction); it gives up after 100 ms and lets the
/// flush wait.
fn settle_delivery_reports(producer: &FutureProducer) {
    let started = Instant::now();
    while producer.in_flight_count() > 0 {
        let waited = started.elapsed();
        if waited >= Duration::from_millis(100) {
            break;
        }
        if waited < Duration::from_micros(20) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// The Kafka error of a record that was not delivered (to abort its transaction with).
fn undelivered(e: LogError) -> KafkaError {
    match e {
        LogError::Kafka(k) => k,
        _ => KafkaError::Canceled,
    }
}

async fn delivered(topic: &str, delivery: DeliveryFuture) -> Result<Position, LogError> {
    match delivery.await {
        Ok(Ok(d)) => Ok(Position {
            topic: topic.to_owned(),
            partition: d.partition,
            offset: d.offset,
        }),
        Ok(Err((e, _))) => Err(LogError::Kafka(e)),
        Err(_) => Err(LogError::Task("delivery report lost".to_owned())),
    }
}

#[async_trait]
impl RecordAppender for PartitionWriter {
    async fn append(&self, records: &[KafkaRecord]) -> Result<Vec<Position>, LogError> {
        PartitionWriter::append(self, records).await
    }
}
