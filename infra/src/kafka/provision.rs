use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use super::{KafkaSettings, LogError};

/// Creates every topic of [`crate::Topics::all`] that does not exist yet, with
/// `settings.partitions` partitions and infinite retention. Idempotent: existing topics are
/// left as they are. Returns the names of the topics it created.
///
/// Then checks that the customer-events topic has `settings.partitions` partitions: writers
/// place customers by [`super::partition_for`] with that count, so any other count is an error.
pub async fn provision_topics(settings: &KafkaSettings) -> Result<Vec<String>, LogError> {
    let admin: AdminClient<DefaultClientContext> = settings.admin_config().create()?;
    let names = settings.topics().all();
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
            .set("retention.ms", "-1")
            .set("retention.bytes", "-1")
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(settings.operation_timeout()));
    let mut created = Vec::new();
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, partitions = settings.partitions, "created topic");
                created.push(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(LogError::Provision {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    let topic = settings.topics().customer_events();
    let timeout = settings.operation_timeout();
    tokio::task::spawn_blocking(move || check_partitions(&admin, &topic, timeout))
        .await?
        .and_then(|count| {
            if count == settings.partitions {
                Ok(created)
            } else {
                Err(LogError::Provision {
                    topic: settings.topics().customer_events(),
                    reason: format!(
                        "has {count} partitions but the settings say {}; customers would be \
                         placed on the wrong partitions",
                        settings.partitions
                    ),
                })
            }
        })
}

/// The partition count of `topic`, waiting for the metadata to show it after creation.
fn check_partitions(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, LogError> {
    let deadline = Instant::now() + timeout;
    loop {
        let metadata = admin.inner().fetch_metadata(Some(topic), timeout)?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if count > 0 {
            return i32::try_from(count).map_err(|e| LogError::Provision {
                topic: topic.to_owned(),
                reason: e.to_string(),
            });
        }
        if Instant::now() >= deadline {
            return Err(LogError::Timeout(format!("metadata of topic `{topic}`")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
