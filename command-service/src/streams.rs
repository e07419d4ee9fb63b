//! The customer streams this instance writes: for every partition it owns, the current state of
//! each of its customers, and the one writer that appends to it.
//!
//! A command is decided against the customer's state and appended in one Kafka transaction;
//! only when the transaction has committed does the state move on. Everything for one
//! partition happens under that partition's lock, so the decision and the append can never
//! interleave with another command for the same customer.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::envelope::envelope_time;
use domain::{
    apply_recorded, decide, Command, CustomerId, CustomerState, DomainError, EventMetadata,
    KafkaRecord, RecordedEvent,
};
use infra::kafka::{partition_for, LogError, RecordAppender};
use infra::Position;
use serde::Serialize;
use tokio::sync::{Mutex, RwLock};
use uuid::Uuid;

use crate::metrics::Metrics;
use infra::log::CustomerLog;

/// A command with everything the envelope needs.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    pub customer_id: CustomerId,
    pub command: Command,
    /// `If-Match`: the sequence the client believes is the customer's last.
    pub expected_sequence: Option<u64>,
    /// `Idempotency-Key`: a retry with the same key gets the first answer.
    pub command_id: Option<String>,
    pub actor: String,
    /// Business time; now when absent.
    pub occurred_at: Option<DateTime<Utc>>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
}

/// One appended event, as answered to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppendedEvent {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub sequence: u64,
    pub position: Position,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub customer_id: CustomerId,
    /// Events appended; empty when the command asked for what was already so.
    pub events: Vec<AppendedEvent>,
    /// The customer's last sequence after the command.
    pub sequence: u64,
    /// True when this answers a retry of a command already appended.
    pub replayed: bool,
}

impl Outcome {
    /// The position a read-your-writes query waits for.
    pub fn position(&self) -> Option<&Position> {
        self.events.last().map(|e| &e.position)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Refused(#[from] DomainError),
    #[error("expected sequence {expected}, but the customer is at {actual}")]
    SequenceMismatch { expected: u64, actual: u64 },
    #[error("partition {partition} of this customer is not owned by this instance")]
    NotOwner { partition: i32 },
    #[error("the customer's stream is unreadable: {0}")]
    BrokenStream(String),
    /// The append failed and nothing of it is visible; the client may retry.
    #[error("the log could not append: {0}")]
    Unavailable(String),
    #[error("envelope: {0}")]
    Envelope(String),
}

/// A customer's state plus the answers to the commands that carried an id.
#[derive(Debug, Clone)]
struct CustomerEntry {
    state: CustomerState,
    answered: HashMap<String, Vec<AppendedEvent>>,
    /// Set when the stored stream broke the sequence rule: refuse commands, do not guess.
    broken: Option<String>,
}

impl CustomerEntry {
    fn new(customer_id: CustomerId) -> Self {
        CustomerEntry {
            state: CustomerState::new(customer_id),
            answered: HashMap::new(),
            broken: None,
        }
    }
}

struct OwnedPartition {
    writer: Arc<dyn RecordAppender>,
    customers: Mutex<HashMap<CustomerId, CustomerEntry>>,
}

pub struct CustomerStreams {
    log: Arc<dyn CustomerLog>,
    topic: String,
    source: String,
    owned: RwLock<HashMap<i32, Arc<OwnedPartition>>>,
    metrics: Metrics,
}

impl CustomerStreams {
    pub fn new(log: Arc<dyn CustomerLog>, topic: String, source: String, metrics: Metrics) -> Self {
        CustomerStreams {
            log,
            topic,
            source,
            owned: RwLock::new(HashMap::new()),
            metrics,
        }
    }

    pub fn partition_of(&self, customer_id: &CustomerId) -> i32 {
        partition_for(customer_id.to_string().as_bytes(), self.log.partitions())
    }

    pub async fn owned_partitions(&self) -> Vec<i32> {
        let mut p: Vec<i32> = self.owned.read().await.keys().copied().collect();
        p.sort_unstable();
        p
    }

    /// Takes partitions over: opens their writers (fencing the previous owner), then reads
    /// their history to rebuild every customer's state and the answers to identified commands.
    pub async fn assign(&self, partitions: &[i32]) -> Result<(), LogError> {
        for &partition in partitions {
            let writer = self.log.open_writer(partition).await?;
            let history = self.log.history(partition).await?;
            let mut customers: HashMap<CustomerId, CustomerEntry> = HashMap::new();
            let mut skipped = 0usize;
            for record in &history {
                let recorded = match record.decode() {
                    Ok(r) => r,
                    Err(e) => {
                        skipped += 1;
                        tracing::warn!(partition, offset = record.position.offset, error = %e, "undecodable record in the customer stream, skipped");
                        continue;
                    }
                };
                let m = &recorded.metadata;
                let entry = customers
                    .entry(m.customer_id)
                    .or_insert_with(|| CustomerEntry::new(m.customer_id));
                if entry.broken.is_some() {
                    continue;
                }
                match apply_recorded(entry.state.clone(), m.sequence, &recorded.event) {
                    Ok(next) => entry.state = next,
                    Err(e) => {
                        tracing::error!(partition, customer = %m.customer_id, error = %e, "customer stream breaks the sequence rule");
                        entry.broken = Some(e.to_string());
                        continue;
                    }
                }
                if let Some(key) = &m.command_id {
                    entry
                        .answered
                        .entry(key.clone())
                        .or_default()
                        .push(AppendedEvent {
                            id: m.id,
                            event_type: recorded.event.event_type().to_owned(),
                            sequence: m.sequence,
                            position: record.position.clone(),
                        });
                }
            }
            tracing::info!(
                partition,
                records = history.len(),
                customers = customers.len(),
                skipped,
                "partition taken over"
            );
            self.owned.write().await.insert(
                partition,
                Arc::new(OwnedPartition {
                    writer,
                    customers: Mutex::new(customers),
                }),
            );
        }
        self.metrics
            .owned_partitions
            .set(self.owned.read().await.len() as i64);
        Ok(())
    }

    /// Gives partitions up: their customers are decided elsewhere from now on.
    pub async fn revoke(&self, partitions: &[i32]) {
        let mut owned = self.owned.write().await;
        for p in partitions {
            owned.remove(p);
        }
        self.metrics.owned_partitions.set(owned.len() as i64);
    }

    /// Decides and appends one command.
    pub async fn execute(&self, request: CommandRequest) -> Result<Outcome, CommandError> {
        self.execute_batch(vec![request])
            .await
            .pop()
            .unwrap_or(Err(CommandError::Envelope("no outcome".into())))
    }

    /// Decides and appends many commands: those of one partition in one transaction. Each
    /// command gets its own outcome; a refused command does not hold back the others. The
    /// outcomes are in the order of the requests.
    pub async fn execute_batch(
        &self,
        requests: Vec<CommandRequest>,
    ) -> Vec<Result<Outcome, CommandError>> {
        let mut by_partition: HashMap<i32, Vec<(usize, CommandRequest)>> = HashMap::new();
        let count = requests.len();
        for (i, r) in requests.into_iter().enumerate() {
            by_partition
                .entry(self.partition_of(&r.customer_id))
                .or_default()
                .push((i, r));
        }
        let mut outcomes: Vec<Option<Result<Outcome, CommandError>>> =
            (0..count).map(|_| None).collect();
        let owned = self.owned.read().await.clone();
        let mut work = Vec::new();
        for (partition, requests) in by_partition {
            match owned.get(&partition) {
                Some(p) => work.push(self.execute_in_partition(partition, p.clone(), requests)),
                None => {
                    for (i, _) in requests {
                        outcomes[i] = Some(Err(CommandError::NotOwner { partition }));
                    }
                }
            }
        }
        for results in futures::future::join_all(work).await {
            for (i, r) in results {
                outcomes[i] = Some(r);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Err(CommandError::Envelope("no outcome".into()))))
            .collect()
    }

    async fn execute_in_partition(
        &self,
        partition: i32,
        owned: Arc<OwnedPartition>,
        requests: Vec<(usize, CommandRequest)>,
    ) -> Vec<(usize, Result<Outcome, CommandError>)> {
        let mut customers = owned.customers.lock().await;
        // Decide every command against a working copy; only a committed append makes it real.
        let mut working: HashMap<CustomerId, CustomerEntry> = HashMap::new();
        let mut results: Vec<(usize, Result<Outcome, CommandError>)> = Vec::new();
        let mut pending: Vec<(usize, CustomerId, Option<String>, Vec<RecordedEvent>)> = Vec::new();
        let mut records: Vec<KafkaRecord> = Vec::new();
        let now = envelope_time(Utc::now());

        for (i, request) in requests {
            let entry = working.entry(request.customer_id).or_insert_with(|| {
                customers
                    .get(&request.customer_id)
                    .cloned()
                    .unwrap_or_else(|| CustomerEntry::new(request.customer_id))
            });
            if let Some(reason) = &entry.broken {
                results.push((i, Err(CommandError::BrokenStream(reason.clone()))));
                continue;
            }
            if let Some(answer) = request
                .command_id
                .as_ref()
                .and_then(|k| entry.answered.get(k))
            {
                results.push((
                    i,
                    Ok(Outcome {
                        customer_id: request.customer_id,
                        events: answer.clone(),
                        sequence: entry.state.version,
                        replayed: true,
                    }),
                ));
                continue;
            }
            if let Some(expected) = request.expected_sequence {
                if expected != entry.state.version {
                    results.push((
                        i,
                        Err(CommandError::SequenceMismatch {
                            expected,
                            actual: entry.state.version,
                        }),
                    ));
                    continue;
                }
            }
            let events = match decide(&entry.state, &request.command) {
                Ok(events) => events,
                Err(e) => {
                    results.push((i, Err(e.into())));
                    continue;
                }
            };
            let correlation_id = request.correlation_id.unwrap_or_else(Uuid::now_v7);
            let mut recorded = Vec::with_capacity(events.len());
            let mut encoded = Vec::with_capacity(events.len());
            let mut state = entry.state.clone();
            let mut failure = None;
            for event in events {
                let metadata = EventMetadata {
                    id: Uuid::now_v7(),
                    source: self.source.clone(),
                    customer_id: request.customer_id,
                    sequence: state.next_sequence(),
                    actor: request.actor.clone(),
                    command: Some(request.command.name().to_owned()),
                    command_id: request.command_id.clone(),
                    correlation_id,
                    causation_id: request.causation_id,
                    occurred_at: request.occurred_at.map(envelope_time).unwrap_or(now),
                    recorded_at: now,
                };
                let r = RecordedEvent { metadata, event };
                match r.to_kafka() {
                    Ok(k) => encoded.push(k),
                    Err(e) => {
                        failure = Some(CommandError::Envelope(e.to_string()));
                        break;
                    }
                }
                state = domain::evolve(state, &r.event);
                recorded.push(r);
            }
            if let Some(f) = failure {
                results.push((i, Err(f)));
                continue;
            }
            entry.state = state;
            records.extend(encoded);
            pending.push((i, request.customer_id, request.command_id, recorded));
        }

        if !records.is_empty() {
            self.metrics.append_batch_size.observe(records.len() as f64);
            match owned.writer.append(&records).await {
                Ok(positions) => {
                    let mut positions = positions.into_iter();
                    for (i, customer_id, command_id, recorded) in pending {
                        let events: Vec<AppendedEvent> = recorded
                            .iter()
                            .map(|r| AppendedEvent {
                                id: r.metadata.id,
                                event_type: r.event.event_type().to_owned(),
                                sequence: r.metadata.sequence,
                                position: positions.next().unwrap_or_else(|| Position {
                                    topic: self.topic.clone(),
                                    partition,
                                    offset: -1,
                                }),
                            })
                            .collect();
                        let entry = working
                            .entry(customer_id)
                            .or_insert_with(|| CustomerEntry::new(customer_id));
                        if let Some(key) = command_id {
                            entry.answered.insert(key, events.clone());
                        }
                        let sequence = events
                            .last()
                            .map(|e| e.sequence)
                            .unwrap_or(entry.state.version);
                        results.push((
                            i,
                            Ok(Outcome {
                                customer_id,
                                events,
                                sequence,
                                replayed: false,
                            }),
                        ));
                    }
                    for (id, entry) in working {
                        customers.insert(id, entry);
                    }
                }
                Err(e) => {
                    let fenced = matches!(e, LogError::Fenced { .. } | LogError::Fatal { .. });
                    let reason = e.to_string();
                    for (i, ..) in pending {
                        results.push((
                            i,
                            Err(if fenced {
                                CommandError::NotOwner { partition }
                            } else {
                                CommandError::Unavailable(reason.clone())
                            }),
                        ));
                    }
                    drop(customers);
                    if fenced {
                        tracing::warn!(partition, error = %reason, "fenced: giving the partition up");
                        self.revoke(&[partition]).await;
                    }
                }
            }
        }
        results
    }

    /// The state of one customer, when this instance owns it (for tests and diagnostics).
    pub async fn customer_state(&self, customer_id: &CustomerId) -> Option<CustomerState> {
        let partition = self.partition_of(customer_id);
        let owned = self.owned.read().await.get(&partition).cloned()?;
        let customers = owned.customers.lock().await;
        customers.get(customer_id).map(|e| e.state.clone())
    }
}
