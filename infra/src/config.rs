//! Settings every service shares, as command-line flags with environment variables.

use crate::kafka::KafkaSettings;

/// Where the Kafka-compatible broker is and how the platform's topics are laid out.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers of the Kafka-compatible broker, comma separated.
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// Prefix of every topic name.
    #[arg(long, env = "CRM_TOPIC_PREFIX", default_value = "crm.")]
    pub topic_prefix: String,
    /// Partitions of each topic when it is created.
    #[arg(long, env = "CRM_PARTITIONS", default_value_t = 12)]
    pub partitions: i32,
    /// Replication factor of each topic when it is created.
    #[arg(long, env = "CRM_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,
    /// Consumer-group session timeout; lower means faster rebalances.
    #[arg(long, env = "CRM_KAFKA_SESSION_TIMEOUT_MS", default_value_t = 6000)]
    pub session_timeout_ms: u32,
}

impl KafkaArgs {
    /// The client settings, when brokers are configured.
    pub fn settings(&self, client_id: &str) -> Option<KafkaSettings> {
        let brokers = self.brokers.as_ref()?;
        let mut s = KafkaSettings::new(brokers.clone(), self.topic_prefix.clone());
        s.partitions = self.partitions;
        s.replication_factor = self.replication_factor;
        s.session_timeout_ms = self.session_timeout_ms;
        s.client_id = client_id.to_owned();
        Some(s)
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Starts structured logging (`RUST_LOG` filters, default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
