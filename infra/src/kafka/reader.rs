use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::envelope::EnvelopeError;
use domain::{RecordedEvent, StreamEvent};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaSettings, LogError};
use crate::Position;

/// A record as read from the log, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub position: Position,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub value: Option<Vec<u8>>,
    /// The record's Kafka timestamp (create or log-append time), when it has one.
    pub timestamp: Option<DateTime<Utc>>,
}

impl StoredRecord {
    /// Copies any rdkafka message (borrowed or owned).
    pub fn from_message<M: Message>(message: &M) -> Self {
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        StoredRecord {
            position: Position {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
            },
            key: message.key().map(<[u8]>::to_vec),
            headers,
            value: message.payload().map(<[u8]>::to_vec),
            timestamp: message
                .timestamp()
                .to_millis()
                .and_then(DateTime::from_timestamp_millis),
        }
    }

    /// The last value of header `name` (as Kafka clients resolve duplicates).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The event in the CloudEvents envelope. Never panics.
    pub fn decode(&self) -> Result<RecordedEvent, EnvelopeError> {
        RecordedEvent::from_kafka(
            self.key.as_deref(),
            self.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
            self.value.as_deref(),
        )
    }

    /// The event in the CloudEvents envelope, of either stream of the customer-events topic:
    /// a customer's, or the organisation stream's (key = the nil UUID). Never panics.
    pub fn decode_stream(&self) -> Result<StreamEvent, EnvelopeError> {
        StreamEvent::from_kafka(
            self.key.as_deref(),
            self.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
            self.value.as_deref(),
        )
    }
}

/// The committed records of one partition from `from_offset` up to its end as of the call
/// (read_committed: records of open or aborted transactions are not returned). Used to
/// rebuild customers' state when a command-service instance takes a partition over.
pub async fn read_partition(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from_offset: i64,
) -> Result<Vec<StoredRecord>, LogError> {
    let settings = settings.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut records = Vec::new();
        scan_partition(&settings, &topic, partition, from_offset, |r| {
            records.push(r);
            Ok(())
        })?;
        Ok(records)
    })
    .await?
}

/// Blocking: calls `f` with each committed record of one partition from `from_offset` up to
/// the partition's end as of the call, in offset order, without holding them all in memory.
/// Returns the offset it read up to (exclusive): the next record to expect is at or after it.
/// Fails with [`LogError::Timeout`] when no progress is made for the operation timeout.
pub fn scan_partition(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from_offset: i64,
    mut f: impl FnMut(StoredRecord) -> Result<(), LogError>,
) -> Result<i64, LogError> {
    let timeout = settings.operation_timeout();
    let consumer: BaseConsumer = settings.reader_config().create()?;
    // With isolation.level=read_committed the high watermark queried is the last stable
    // offset: nothing beyond it is readable yet.
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    let start = from_offset.max(low);
    if start >= high {
        return Ok(high);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&assignment)?;
    let mut idle_deadline = Instant::now() + timeout;
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                if Instant::now() >= idle_deadline {
                    return Err(LogError::Timeout(format!(
                        "reading {topic}/{partition} from {start} to {high}"
                    )));
                }
            }
            Some(Ok(message)) => {
                idle_deadline = Instant::now() + timeout;
                let offset = message.offset();
                if offset >= high {
                    break;
                }
                f(StoredRecord::from_message(&message))?;
                if offset + 1 >= high {
                    break;
                }
            }
            // The end of what is readable; transaction markers and aborted records may sit
            // between the last record and `high`.
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(e.into()),
        }
    }
    Ok(high)
}
