//! The event log on Kafka (rdkafka with its bundled librdkafka).
//!
//! - [`KafkaSettings`]: one place for every client's configuration.
//! - [`provision_topics`]: creates the platform's topics with infinite retention.
//! - [`partition_for`]: Kafka's default partitioner, so every client keyed by customer id agrees.
//! - [`PartitionWriter`]: the one transactional writer of one customer-events partition; a newer
//!   writer for the same partition fences it.
//! - [`read_partition`]: committed records of one partition up to the end, to rebuild state.
//! - [`PartitionOwnership`]: which partitions this command-service instance owns.
//! - [`DeadLetterProducer`] / [`DeadLetter`]: records that could not be accepted, with the reason.

mod dead_letter;
mod error;
mod ownership;
mod partitioner;
mod provision;
mod reader;
mod settings;
mod writer;

pub use dead_letter::{
    DeadLetter, DeadLetterProducer, DLQ_REASON, DLQ_SOURCE_OFFSET, DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
};
pub use error::LogError;
pub use ownership::{OwnershipChange, OwnershipView, PartitionOwnership};
pub use partitioner::{murmur2, partition_for};
pub use provision::provision_topics;
pub use reader::{read_partition, scan_partition, StoredRecord};
pub use settings::KafkaSettings;
pub use writer::{Appended, PartitionWriter, RecordAppender};
