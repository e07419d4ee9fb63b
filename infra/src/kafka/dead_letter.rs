use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{KafkaSettings, LogError, StoredRecord};
use crate::Position;

/// Header names added to a dead letter. The original key, headers and body are kept as they
/// were, so that a fixed consumer can replay the record.
pub const DLQ_REASON: &str = "dlq_reason";
pub const DLQ_SOURCE_TOPIC: &str = "dlq_source_topic";
pub const DLQ_SOURCE_PARTITION: &str = "dlq_source_partition";
pub const DLQ_SOURCE_OFFSET: &str = "dlq_source_offset";

/// A record that could not be accepted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub value: Option<Vec<u8>>,
    pub reason: String,
    /// Where the record was read from, when it came from Kafka.
    pub source: Option<Position>,
}

impl DeadLetter {
    pub fn from_stored(record: &StoredRecord, reason: impl Into<String>) -> Self {
        DeadLetter {
            key: record.key.clone(),
            headers: record.headers.clone(),
            value: record.value.clone(),
            reason: reason.into(),
            source: Some(record.position.clone()),
        }
    }

    /// The original headers (without earlier `dlq_*` headers, and without value-less ones)
    /// followed by the `dlq_*` headers, for logs other than Kafka.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq_"))
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        out.push((DLQ_REASON.to_owned(), self.reason.clone().into_bytes()));
        if let Some(source) = &self.source {
            out.push((
                DLQ_SOURCE_TOPIC.to_owned(),
                source.topic.clone().into_bytes(),
            ));
            out.push((
                DLQ_SOURCE_PARTITION.to_owned(),
                source.partition.to_string().into_bytes(),
            ));
            out.push((
                DLQ_SOURCE_OFFSET.to_owned(),
                source.offset.to_string().into_bytes(),
            ));
        }
        out
    }

    /// The original headers (without earlier `dlq_*` headers) and the `dlq_*` headers.
    pub(crate) fn kafka_headers(&self) -> OwnedHeaders {
        let mut extra: Vec<(&str, Vec<u8>)> = vec![(DLQ_REASON, self.reason.clone().into_bytes())];
        if let Some(source) = &self.source {
            extra.push((DLQ_SOURCE_TOPIC, source.topic.clone().into_bytes()));
            extra.push((
                DLQ_SOURCE_PARTITION,
                source.partition.to_string().into_bytes(),
            ));
            extra.push((DLQ_SOURCE_OFFSET, source.offset.to_string().into_bytes()));
        }
        let original = self
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq_"))
            .map(|(k, v)| (k.as_str(), v.as_deref()));
        owned_headers(original.chain(extra.iter().map(|(k, v)| (*k, Some(v.as_slice())))))
    }

    pub(crate) fn record<'a>(&'a self, topic: &'a str) -> FutureRecord<'a, [u8], [u8]> {
        let mut record = FutureRecord::to(topic).headers(self.kafka_headers());
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &self.value {
            record = record.payload(value.as_slice());
        }
        record
    }
}

pub(crate) fn owned_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> OwnedHeaders {
    let headers = headers.into_iter();
    // room for all of them at once (a record of the customer-events topic has 12 to 16)
    let room = headers.size_hint().0.max(4);
    headers.fold(
        OwnedHeaders::new_with_capacity(room),
        |acc, (key, value)| acc.insert(Header { key, value }),
    )
}

/// An idempotent, non-transactional producer to the dead-letter topic, for components that
/// have no transactional writer (projection-service). Inside a command-service transaction,
/// use [`super::PartitionWriter::append_with_dead_letters`] instead.
#[derive(Clone)]
pub struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl DeadLetterProducer {
    pub fn new(settings: &KafkaSettings) -> Result<Self, LogError> {
        Ok(DeadLetterProducer {
            producer: settings.producer_config().create()?,
            topic: settings.topics().dead_letter(),
            timeout: settings.operation_timeout(),
        })
    }

    /// Writes the dead letter and waits for the broker's acknowledgement.
    pub async fn send(&self, letter: &DeadLetter) -> Result<Position, LogError> {
        match self
            .producer
            .send(letter.record(&self.topic), self.timeout)
            .await
        {
            Ok(delivery) => Ok(Position {
                topic: self.topic.clone(),
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((e, _)) => Err(e.into()),
        }
    }
}
