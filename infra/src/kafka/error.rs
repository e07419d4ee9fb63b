use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What can go wrong with the log. Never a panic.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A newer writer for the same partition called `init_transactions`: this one may never
    /// append again. Its open transaction, if any, was aborted; drop it.
    #[error("writer `{transactional_id}` was fenced by a newer writer of the same partition")]
    Fenced { transactional_id: String },
    /// The transaction was aborted: nothing of it is visible to read_committed readers. The
    /// writer is still usable; the caller may retry.
    #[error("transaction aborted, nothing appended: {0}")]
    Aborted(KafkaError),
    /// The writer hit a fatal error other than fencing and must be reopened. Whether its last
    /// transaction committed is unknown: re-read the partition.
    #[error("writer `{transactional_id}` failed fatally: {reason}")]
    Fatal {
        transactional_id: String,
        reason: String,
    },
    /// A record whose key belongs to another partition: appending it would split a customer's
    /// stream.
    #[error("record key `{key}` belongs to partition {expected}, not to partition {actual}")]
    WrongPartition {
        key: String,
        expected: i32,
        actual: i32,
    },
    #[error("topic `{topic}`: {reason}")]
    Provision { topic: String, reason: String },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("background task failed: {0}")]
    Task(String),
}

impl LogError {
    /// True when a retry of the same operation may succeed with the same client.
    pub fn is_retriable(&self) -> bool {
        matches!(self, LogError::Aborted(_) | LogError::Timeout(_))
    }
}

/// Error codes by which brokers and librdkafka say that a newer producer with the same
/// `transactional.id` took over.
pub(crate) fn is_fencing_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::TransactionCoordinatorFenced
    )
}

impl From<tokio::task::JoinError> for LogError {
    fn from(e: tokio::task::JoinError) -> Self {
        LogError::Task(e.to_string())
    }
}
