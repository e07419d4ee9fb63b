//! Following the organisation stream. Every instance needs the teams to check what a sales
//! director may see, but only the owner of the organisation stream's partition writes it (and
//! knows it first-hand). The others read that partition from the start and keep reading it,
//! folding in the organisation's records (key [`domain::ORGANISATION_STREAM_ID`]) and
//! skipping the customers' ones. A change of teams reaches them as soon as they read it
//! (normally well under a second): a director added to a team may, for that long, still be
//! refused the team's customers on another instance.

use std::sync::Arc;
use std::time::Duration;

use domain::envelope::is_organisation_key;
use domain::RecordedOrganisationEvent;
use infra::kafka::{KafkaSettings, LogError, StoredRecord};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::streams::CustomerStreams;

/// Reads the organisation stream's partition for as long as the process runs.
pub async fn follow_organisation(streams: Arc<CustomerStreams>, settings: KafkaSettings) {
    let mut from = Offset::Beginning;
    loop {
        match follow(&streams, &settings, &mut from).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "following the organisation stream failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn follow(
    streams: &CustomerStreams,
    settings: &KafkaSettings,
    from: &mut Offset,
) -> Result<(), LogError> {
    let topic = settings.topics().customer_events();
    let partition = streams.organisation_partition();
    let mut config = settings.reader_config();
    config.set("enable.partition.eof", "false");
    let consumer: StreamConsumer = config.create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, *from)?;
    consumer.assign(&tpl)?;
    tracing::info!(partition, "following the organisation stream");
    loop {
        let message = match consumer.recv().await {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let record = StoredRecord::from_message(&message);
        *from = Offset::Offset(record.position.offset + 1);
        if !is_organisation_key(record.key.as_deref()) {
            continue;
        }
        match RecordedOrganisationEvent::from_kafka(
            record.key.as_deref(),
            record
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref())),
            record.value.as_deref(),
        ) {
            Ok(r) => streams.apply_organisation(&r, &record.position),
            Err(e) => {
                tracing::warn!(offset = record.position.offset, error = %e, "undecodable organisation record, skipped")
            }
        }
    }
}
