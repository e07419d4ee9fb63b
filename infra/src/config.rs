//! Settings every service shares, as command-line flags with environment variables.

#[cfg(feature = "kafka")]
use crate::kafka::KafkaSettings;

/// Where the Kafka-compatible broker is and how the platform's topics are laid out.
#[cfg(feature = "kafka")]
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

#[cfg(feature = "kafka")]
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

/// Which projection: the one projection-service builds and query-service serves.
#[derive(Debug, Clone, clap::Args)]
pub struct ProjectionArgs {
    /// Name of the projection (its schemas are `<name>_v<version>`); the live version is
    /// followed and served.
    #[arg(long, env = "CRM_PROJECTION", default_value = "rm")]
    pub projection: String,
}

/// Where business time (a command's `occurred_at`) may fall: commands outside are refused
/// with a problem naming `occurred_at`.
#[derive(Debug, Clone, clap::Args)]
pub struct BusinessTimeArgs {
    /// Earliest business time accepted (RFC 3339).
    #[arg(
        long,
        env = "CRM_BUSINESS_TIME_EARLIEST",
        default_value = "1900-01-01T00:00:00Z"
    )]
    pub business_time_earliest: chrono::DateTime<chrono::Utc>,
    /// How far in the future business time may be, in hours (clocks differ; a channel may
    /// record a planned visit's day).
    #[arg(long, env = "CRM_BUSINESS_TIME_MAX_FUTURE_HOURS", default_value_t = 24)]
    pub business_time_max_future_hours: u32,
}

impl BusinessTimeArgs {
    pub fn window(&self) -> domain::limits::BusinessTimeWindow {
        domain::limits::BusinessTimeWindow {
            earliest: self.business_time_earliest,
            max_future: chrono::Duration::hours(i64::from(self.business_time_max_future_hours)),
        }
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `2d`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 30s, 5m, 1h"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => return Err(format!("unknown unit `{other}` in `{text}`")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

/// How long command-service keeps the answer to a command sent with an `Idempotency-Key`.
#[derive(Debug, Clone, clap::Args)]
pub struct IdempotencyArgs {
    /// A retry with the same key within this window gets the first answer and appends
    /// nothing; after it the key is forgotten. Memory grows with the identified commands of
    /// one window (about 450 bytes each), so a busy deployment sizes it.
    #[arg(long, env = "CRM_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_window: std::time::Duration,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The log format, declared once for every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format (`RUST_LOG` filters).
    #[arg(
        long,
        env = "CRM_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Starts structured logging in this format ([`init_tracing`]).
    pub fn init_tracing(&self) {
        init_tracing(self.log_format);
    }
}

/// Starts structured logging (`RUST_LOG` filters, default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // colours only on a terminal: a file or a log collector gets plain text
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
