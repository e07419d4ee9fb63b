//! What command-service needs from the event log: the one writer of a partition, and the
//! partition's history to rebuild its customers' state. Kafka implements it here; the embedded
//! log of the single-process default implements it too.

use std::sync::Arc;

use async_trait::async_trait;
use infra::kafka::{
    read_partition, KafkaSettings, LogError, PartitionWriter, RecordAppender, StoredRecord,
};

#[async_trait]
pub trait CustomerLog: Send + Sync + 'static {
    /// Partitions of the customer-events topic.
    fn partitions(&self) -> i32;
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

    async fn open_writer(&self, partition: i32) -> Result<Arc<dyn RecordAppender>, LogError> {
        let writer = PartitionWriter::open(&self.settings, partition).await?;
        Ok(Arc::new(writer))
    }

    async fn history(&self, partition: i32) -> Result<Vec<StoredRecord>, LogError> {
        let topic = self.settings.topics().customer_events();
        read_partition(&self.settings, &topic, partition, 0).await
    }
}
