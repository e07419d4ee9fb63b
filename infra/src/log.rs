//! The customer-event log as command-service sees it: the one writer of a partition, and the
//! partition's history to rebuild its customers' state. Kafka implements it
//! ([`KafkaCustomerLog`]); so does the embedded log of the single-process default
//! ([`crate::embedded::EmbeddedLog`]).

use std::sync::Arc;

use async_trait::async_trait;

use crate::kafka::{
    read_partition, KafkaSettings, LogError, PartitionWriter, RecordAppender, StoredRecord,
};

#[async_trait]
pub trait CustomerLog: Send + Sync + 'static {
    /// Partitions of the customer-events topic.
    fn partitions(&self) -> i32;
    /// The customer-events topic's name, as positions carry it.
    fn topic(&self) -> String;
    /// Opens the one writer of `partition`, fencing any older writer of it.
    async fn open_writer(&self, partition: i32) -> Result<Arc<dyn RecordAppender>, LogError>;
    /// Every committed record of `partition`, oldest first.
    async fn history(&self, partition: i32) -> Result<Vec<StoredRecord>, LogError>;
}

/// The customer-events topic on Kafka.
pub struct KafkaCustomerLog {
    pub settings: KafkaSettings,
}

#[async_trait]
impl CustomerLog for KafkaCustomerLog {
    fn partitions(&self) -> i32 {
        self.settings.partitions
    }

    fn topic(&self) -> String {
        self.settings.topics().customer_events()
    }

    async fn open_writer(&self, partition: i32) -> Result<Arc<dyn RecordAppender>, LogError> {
        let writer = PartitionWriter::open(&self.settings, partition).await?;
        Ok(Arc::new(writer))
    }

    async fn history(&self, partition: i32) -> Result<Vec<StoredRecord>, LogError> {
        read_partition(&self.settings, &self.topic(), partition, 0).await
    }
}
