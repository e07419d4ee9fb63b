use std::time::Duration;

use rdkafka::ClientConfig;

use crate::Topics;

/// Connection and topic settings shared by every Kafka client of the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// Prefix of every topic name (see [`Topics`]), and of group and transactional ids.
    pub topic_prefix: String,
    /// Partitions of the topics created by [`super::provision_topics`]; also the modulus of
    /// [`super::partition_for`], so it must equal the customer-events topic's partition count.
    pub partitions: i32,
    pub replication_factor: i32,
    /// `client.id`, shown in broker logs and metrics.
    pub client_id: String,
    /// Consumer-group session timeout. Lower means faster rebalances after a crash.
    pub session_timeout_ms: u32,
    /// Bound on blocking operations (admin requests, transaction commit, reading a partition).
    pub operation_timeout_ms: u64,
    /// Any further librdkafka properties, applied last to every client (overrides ours).
    pub extra: Vec<(String, String)>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "localhost:9092".to_owned(),
            topic_prefix: Topics::default().prefix,
            partitions: 12,
            replication_factor: 1,
            client_id: "crm".to_owned(),
            session_timeout_ms: 6000,
            operation_timeout_ms: 30_000,
            extra: Vec::new(),
        }
    }
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        KafkaSettings {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            ..KafkaSettings::default()
        }
    }

    pub fn topics(&self) -> Topics {
        Topics::new(self.topic_prefix.clone())
    }

    pub fn operation_timeout(&self) -> Duration {
        Duration::from_millis(self.operation_timeout_ms)
    }

    /// The transactional id of the writer of one customer-events partition.
    pub fn transactional_id(&self, partition: i32) -> String {
        format!("{}command-writer-{partition}", self.topic_prefix)
    }

    /// The consumer group whose assignment decides which command-service instance owns
    /// which partition.
    pub fn command_group_id(&self) -> String {
        format!("{}command-service", self.topic_prefix)
    }

    /// Settings every client shares: brokers and client id, then `extra`.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id);
        config
    }

    fn with_extra(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }

    /// An idempotent producer whose key partitioner agrees with Java clients
    /// (`murmur2_random`, see [`super::partition_for`]).
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", self.operation_timeout_ms.to_string());
        self.with_extra(config)
    }

    /// A transactional producer: idempotent, with the given `transactional.id`.
    pub fn transactional_producer_config(&self, transactional_id: &str) -> ClientConfig {
        let mut config = self.producer_config();
        config.set("transactional.id", transactional_id);
        // A transaction's records are all enqueued before it waits for them and commits:
        // lingering (librdkafka's default 5 ms) would only add to every command's latency.
        config.set("linger.ms", "0");
        // extra wins over everything, including what producer_config set.
        self.with_extra(config)
    }

    /// A consumer that is assigned partitions by hand and reads committed records only.
    /// It never joins its group nor commits; librdkafka wants a `group.id` for `assign`.
    pub fn reader_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", format!("{}partition-reader", self.topic_prefix))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        self.with_extra(config)
    }

    /// A consumer-group member reading committed records only, committing nothing by itself.
    pub fn group_consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group_id)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 3).max(1).to_string(),
            );
        self.with_extra(config)
    }

    /// A client for topic administration.
    pub fn admin_config(&self) -> ClientConfig {
        self.with_extra(self.client_config())
    }
}
