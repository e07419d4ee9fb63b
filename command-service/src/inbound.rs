//! The inbound topic: channel adapters publish touchpoints on it directly, as CloudEvents in
//! Kafka binary mode (`ce_type: crm.touchpoint.recorded.v1`, `ce_id` the adapter's own event
//! id, `ce_source` the adapter, `ce_time` when the contact happened, body the touchpoint).
//!
//! For every customer-events partition this instance owns, it reads the inbound partition of
//! the same number, validates each record exactly as an HTTP command is validated, appends the
//! valid ones and sends the invalid ones to the dead-letter topic with the reason; then it
//! commits the inbound offset. `ce_id` is the idempotency key, so a record read twice (after
//! a crash, or while a partition moves) appends once.
//!
//! Who published a record: its `ce_source`, mapped to a configured adapter identity
//! (`--channel-sources /channels/wechat=channel-wechat,...`). The adapter is a principal with
//! the `channel_adapter` role, checked against the permission table (`ingest_touchpoints`) like
//! an HTTP caller, and its subject is the events' actor. A record from a source not configured
//! is dead-lettered. Anyone who may write to the inbound topic may claim any configured
//! source: the topic's ACLs are the gate (grant write on it to the adapters only).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::DateTime;
use domain::envelope::{header, Headers, SPEC_VERSION};
use domain::{Command, CustomerEvent, RecordTouchpoint};
use infra::kafka::{DeadLetter, DeadLetterProducer, KafkaSettings, LogError, StoredRecord};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::http::command_problem;
use crate::streams::{
    fingerprint, fingerprint_of_json, Caller, CommandError, CommandRequest, Numbers, Via,
};
use crate::App;
use infra::auth::Authenticator;

/// The event type channel adapters publish.
pub const INBOUND_TYPE: &str = "crm.touchpoint.recorded.v1";
const BATCH: usize = 500;

/// Turns one inbound record into the command it asks for, or says why it cannot.
pub fn inbound_request(
    record: &StoredRecord,
    auth: &Authenticator,
) -> Result<CommandRequest, String> {
    let h = Headers::collect(
        record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref())),
    );
    let text = |name: &'static str| h.text(name).map_err(|e| e.to_string());
    let spec = text(header::SPEC_VERSION)?;
    if spec != SPEC_VERSION {
        return Err(format!("unsupported CloudEvents specversion `{spec}`"));
    }
    let id = text(header::ID)?;
    let source = text(header::SOURCE)?;
    if id.trim().is_empty() || source.trim().is_empty() {
        return Err("ce_id and ce_source must not be empty".into());
    }
    let Some(adapter) = auth.channel(source) else {
        return Err(format!(
            "ce_source `{source}` is not a configured channel adapter (--channel-sources)"
        ));
    };
    let event_type = text(header::TYPE)?;
    let body = record.value.as_deref().ok_or("record has no body")?;
    let event = domain::upcast::decode::<domain::CustomerEvent>(event_type, body)
        .map_err(|e| e.to_string())?;
    let CustomerEvent::TouchpointRecorded(t) = event else {
        return Err(format!(
            "`{event_type}` cannot be published on the inbound topic; only `{INBOUND_TYPE}`"
        ));
    };
    let customer = t.customer_id.to_string();
    if let Some(subject) = h
        .optional_text(header::SUBJECT)
        .map_err(|e| e.to_string())?
    {
        if subject != customer {
            return Err(format!(
                "ce_subject `{subject}` is not the body's customer_id `{customer}`"
            ));
        }
    }
    if let Some(key) = &record.key {
        if key.as_slice() != customer.as_bytes() {
            return Err(format!(
                "the key `{}` is not the customer id `{customer}`",
                String::from_utf8_lossy(key)
            ));
        }
    }
    let occurred_at = match h.optional_text(header::TIME).map_err(|e| e.to_string())? {
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|e| format!("ce_time `{t}` is not an RFC 3339 time: {e}"))?
                .to_utc(),
        ),
        None => None,
    };
    let correlation_id = h
        .optional_text(header::CORRELATION_ID)
        .map_err(|e| e.to_string())?
        .and_then(|c| Uuid::parse_str(c).ok());
    Ok(CommandRequest {
        customer_id: t.customer_id,
        command: Command::RecordTouchpoint(RecordTouchpoint {
            touchpoint_id: t.touchpoint_id,
            touchpoint: t.touchpoint,
        }),
        expected_sequence: None,
        command_id: Some(format!("inbound:{source}:{id}")),
        // the record's body and type: the same ce_id with another touchpoint is refused
        fingerprint: Some(
            fingerprint_of_json(event_type, &[], body, Numbers::AsWritten)
                .unwrap_or_else(|_| fingerprint(event_type, &[], &serde_json::Value::Null)),
        ),
        caller: Caller::new(Arc::new(adapter), Via::Ingest),
        occurred_at,
        correlation_id,
        causation_id: Uuid::parse_str(id).ok(),
    })
}

/// One reader per owned partition; the readers share one producer for dead letters and one
/// for records handed to another partition (an idle rdkafka client costs a polling thread).
pub struct InboundReaders {
    app: Arc<App>,
    settings: KafkaSettings,
    dead_letters: DeadLetterProducer,
    forwarder: FutureProducer,
    running: Mutex<HashMap<i32, Arc<AtomicBool>>>,
}

impl InboundReaders {
    pub fn new(app: Arc<App>, settings: KafkaSettings) -> Result<Arc<Self>, LogError> {
        Ok(Arc::new(InboundReaders {
            dead_letters: DeadLetterProducer::new(&settings)?,
            forwarder: settings.producer_config().create()?,
            app,
            settings,
            running: Mutex::new(HashMap::new()),
        }))
    }

    /// Starts reading the inbound partitions of these numbers.
    pub fn start(self: &Arc<Self>, partitions: &[i32]) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        for &p in partitions {
            if running.contains_key(&p) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            running.insert(p, stop.clone());
            let me = self.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    match me.read(p, &stop).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(partition = p, error = %e, "inbound reader failed; restarting");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            });
        }
    }

    /// Stops reading these partitions.
    pub fn stop(&self, partitions: &[i32]) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        for p in partitions {
            if let Some(stop) = running.remove(p) {
                stop.store(true, Ordering::Release);
            }
        }
    }

    async fn read(&self, partition: i32, stop: &AtomicBool) -> Result<(), LogError> {
        let topic = self.settings.topics().inbound();
        let group = format!("{}command-inbound", self.settings.topic_prefix);
        let consumer: StreamConsumer = self.settings.group_consumer_config(&group).create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Stored)?;
        consumer.assign(&tpl)?;
        tracing::info!(partition, "reading the inbound partition");
        while !stop.load(Ordering::Acquire) {
            let mut batch: Vec<StoredRecord> = Vec::new();
            let mut wait = Duration::from_millis(200);
            while batch.len() < BATCH {
                match tokio::time::timeout(wait, consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(StoredRecord::from_message(&m)),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => break,
                }
                wait = Duration::from_millis(5);
            }
            let Some(last) = batch.last().map(|r| r.position.offset) else {
                continue;
            };
            match self.process(partition, batch).await? {
                Step::Commit => {
                    let mut commit = TopicPartitionList::new();
                    commit.add_partition_offset(&topic, partition, Offset::Offset(last + 1))?;
                    // not awaited: a commit lost in a crash only reads records again, and
                    // their appends are idempotent by `ce_id`
                    consumer.commit(&commit, CommitMode::Async)?;
                }
                Step::Retry => {
                    // nothing committed: read the batch again (appends are idempotent)
                    let mut seek = TopicPartitionList::new();
                    seek.add_partition_offset(&topic, partition, Offset::Stored)?;
                    consumer.assign(&seek)?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Step::Stop => return Ok(()),
            }
        }
        Ok(())
    }

    async fn process(&self, partition: i32, batch: Vec<StoredRecord>) -> Result<Step, LogError> {
        let metrics = &self.app.metrics.inbound;
        let mut requests = Vec::new();
        let mut sources = Vec::new();
        for record in &batch {
            match inbound_request(record, &self.app.auth) {
                Ok(r) => {
                    requests.push(r);
                    sources.push(record);
                }
                Err(reason) => {
                    self.dead_letters
                        .send(&DeadLetter::from_stored(record, reason))
                        .await?;
                    metrics.with_label_values(&["dead_lettered"]).inc();
                }
            }
        }
        let outcomes = self.app.streams.execute_batch(requests).await;
        for (record, outcome) in sources.into_iter().zip(outcomes) {
            match outcome {
                Ok(o) => metrics
                    .with_label_values(&[if o.replayed { "replayed" } else { "appended" }])
                    .inc(),
                Err(CommandError::NotOwner { partition: owner }) if owner != partition => {
                    // Published with another partitioner: hand it to the inbound partition of
                    // its customer, whose owner will take it.
                    let mut r: FutureRecord<'_, [u8], [u8]> =
                        FutureRecord::to(&record.position.topic).partition(owner);
                    if let Some(k) = &record.key {
                        r = r.key(k.as_slice());
                    }
                    if let Some(v) = &record.value {
                        r = r.payload(v.as_slice());
                    }
                    let headers = record.headers.iter().fold(
                        rdkafka::message::OwnedHeaders::new(),
                        |acc, (k, v)| {
                            acc.insert(rdkafka::message::Header {
                                key: k,
                                value: v.as_deref(),
                            })
                        },
                    );
                    self.forwarder
                        .send(r.headers(headers), Duration::from_secs(30))
                        .await
                        .map_err(|(e, _)| LogError::from(e))?;
                    metrics.with_label_values(&["forwarded"]).inc();
                }
                Err(CommandError::NotOwner { .. }) => return Ok(Step::Stop),
                Err(
                    e @ (CommandError::Refused(_)
                    | CommandError::Envelope(_)
                    | CommandError::KeyReused { .. }
                    | CommandError::Forbidden { .. }),
                ) => {
                    let problem = command_problem(&e);
                    let reason = serde_json::to_string(&problem).unwrap_or_else(|_| e.to_string());
                    self.dead_letters
                        .send(&DeadLetter::from_stored(record, reason))
                        .await?;
                    metrics.with_label_values(&["dead_lettered"]).inc();
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "inbound batch will be retried");
                    return Ok(Step::Retry);
                }
            }
        }
        Ok(Step::Commit)
    }
}

enum Step {
    Commit,
    Retry,
    Stop,
}
