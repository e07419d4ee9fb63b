//! The customer streams this instance writes: for every partition it owns, the current state of
//! each of its customers, and the one writer that appends to it.
//!
//! A command is decided against the customer's state and appended in one Kafka transaction;
//! only when the transaction has committed does the state move on. Everything for one
//! partition happens under that partition's lock, so the decision and the append can never
//! interleave with another command for the same customer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError, RwLock as StdRwLock};

use chrono::{DateTime, Utc};
use domain::access::{
    authorize_command, authorize_ingest, authorize_organisation, Denial, Principal,
};
use domain::envelope::{envelope_time, is_organisation_key};
use domain::limits::BusinessTimeWindow;
use domain::{
    decide, decide_organisation, organisation_stream, Aggregate, Command, Customer, CustomerId,
    CustomerState, DomainError, EventMetadata, KafkaRecord, Organisation, OrganisationCommand,
    OrganisationEvent, OrganisationState, RecordedEvent, RecordedOrganisationEvent,
    ORGANISATION_STREAM_ID,
};
use infra::kafka::{partition_for, LogError, RecordAppender};
use infra::Position;
use serde::Serialize;
use tokio::sync::{Mutex, Notify, RwLock};
use uuid::Uuid;

use crate::metrics::Metrics;
use infra::log::CustomerLog;

pub use domain::access::Via;

/// The authenticated caller of a command and how it came in. The caller's subject becomes
/// the `actor` of every event the command causes.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub via: Via,
}

impl Caller {
    pub fn new(principal: Arc<Principal>, via: Via) -> Self {
        Caller { principal, via }
    }

    pub fn actor(&self) -> String {
        self.principal.subject.to_string()
    }
}

/// A command with everything the envelope needs.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    pub customer_id: CustomerId,
    pub command: Command,
    /// `If-Match`: the sequence the client believes is the customer's last.
    pub expected_sequence: Option<u64>,
    /// `Idempotency-Key`: a retry with the same key gets the first answer.
    pub command_id: Option<String>,
    /// A digest of the request the key came with ([`fingerprint`]): the same key with a
    /// different request is refused ([`CommandError::KeyReused`]).
    pub fingerprint: Option<String>,
    /// Who asks: checked against the permission table and the customer's owner, recorded as
    /// the events' actor.
    pub caller: Caller,
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

/// An organisation command with everything the envelope needs.
#[derive(Debug, Clone)]
pub struct OrganisationRequest {
    pub command: OrganisationCommand,
    /// `If-Match`: the organisation stream's sequence the client expects.
    pub expected_sequence: Option<u64>,
    pub command_id: Option<String>,
    pub fingerprint: Option<String>,
    pub principal: Arc<Principal>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Refused(#[from] DomainError),
    /// The caller's role may not do this (403). Records outside the caller's reach are
    /// answered as [`CommandError::Refused`] "not found" instead, so existence does not leak.
    #[error("{reason}")]
    Forbidden {
        field: Option<&'static str>,
        reason: String,
    },
    /// An idempotency key already used with a different request.
    #[error("the idempotency key `{key}` was used before with a different request")]
    KeyReused { key: String },
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

/// The answer to a command that carried an idempotency key, with the digest of its request
/// and when it was recorded (answers are kept for the idempotency window).
#[derive(Debug, Clone, Default)]
struct Answered {
    fingerprint: Option<String>,
    events: Vec<AppendedEvent>,
    recorded_at: DateTime<Utc>,
}

impl Answered {
    /// The first answer, for a retry of the same request; refused for another request under
    /// the same key. Answers recorded before fingerprints existed match any request.
    fn replay(
        &self,
        key: &str,
        fingerprint: Option<&String>,
    ) -> Result<Vec<AppendedEvent>, CommandError> {
        match (&self.fingerprint, fingerprint) {
            (Some(first), Some(this)) if first != this => Err(CommandError::KeyReused {
                key: key.to_owned(),
            }),
            _ => Ok(self.events.clone()),
        }
    }

    fn push(
        &mut self,
        fingerprint: &Option<String>,
        recorded_at: DateTime<Utc>,
        event: AppendedEvent,
    ) {
        if self.fingerprint.is_none() {
            self.fingerprint = fingerprint.clone();
        }
        self.recorded_at = self.recorded_at.max(recorded_at);
        self.events.push(event);
    }
}

/// A digest of a request: the command's name, the path's ids and the body as the client sent
/// it (keys sorted, so that their order does not matter), hex SHA-256.
pub fn fingerprint(command: &str, path: &[(&str, &str)], body: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    fn canonical(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    if let Some(item) = m.get(k) {
                        canonical(item, out);
                    }
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut path: Vec<(&str, &str)> = path.to_vec();
    path.sort();
    let mut text = String::from(command);
    for (k, v) in path {
        text.push_str(&format!("\n{k}={v}"));
    }
    text.push('\n');
    canonical(body, &mut text);
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A customer's state plus the answers to the commands that carried an id.
#[derive(Debug, Clone)]
struct CustomerEntry {
    state: CustomerState,
    answered: HashMap<String, Answered>,
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
    /// When answers past the idempotency window are next looked for.
    next_forget: StdMutex<std::time::Instant>,
}

/// The organisation stream as this instance knows it: complete when it owns the stream's
/// partition, else as far as it has followed it (see [`CustomerStreams::follow_organisation`]).
#[derive(Debug, Default)]
struct OrganisationView {
    state: OrganisationState,
    answered: HashMap<String, Answered>,
    broken: Option<String>,
}

pub struct CustomerStreams {
    log: Arc<dyn CustomerLog>,
    topic: String,
    source: String,
    owned: RwLock<HashMap<i32, Arc<OwnedPartition>>>,
    organisation: StdRwLock<OrganisationView>,
    metrics: Metrics,
    /// Where business time (`occurred_at`) may fall.
    business_time: BusinessTimeWindow,
    /// Partitions whose writer died, given up until the owner of the group view decides
    /// whether to take them back ([`CustomerStreams::lost_writers`]).
    lost: StdMutex<BTreeMap<i32, WriterLoss>>,
    lost_changed: Notify,
    /// How long the answer to an identified command is kept, in seconds
    /// ([`CustomerStreams::set_idempotency_window`]).
    idempotency_window_secs: AtomicU64,
}

/// How long answers to identified commands are kept unless configured otherwise: a day.
pub const DEFAULT_IDEMPOTENCY_WINDOW: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

/// Why a partition's writer can append no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterLoss {
    /// Another writer of the same partition opened after it: someone else believes they own
    /// the partition.
    Fenced,
    /// It failed for another reason (a broker restart, a transaction that could not be
    /// aborted): nobody else took the partition; it must be reopened.
    Failed,
}

impl WriterLoss {
    fn of(e: &LogError) -> Option<WriterLoss> {
        match e {
            LogError::Fenced { .. } => Some(WriterLoss::Fenced),
            LogError::Fatal { .. } => Some(WriterLoss::Failed),
            _ => None,
        }
    }
}

/// Maps a refusal of the access rules to the command's answer.
fn denied(denial: Denial, hidden: DomainError) -> CommandError {
    match denial {
        Denial::Forbidden { field, reason, .. } => CommandError::Forbidden { field, reason },
        Denial::Hidden => CommandError::Refused(hidden),
    }
}

impl CustomerStreams {
    pub fn new(
        log: Arc<dyn CustomerLog>,
        topic: String,
        source: String,
        metrics: Metrics,
        business_time: BusinessTimeWindow,
    ) -> Self {
        CustomerStreams {
            log,
            topic,
            source,
            owned: RwLock::new(HashMap::new()),
            organisation: StdRwLock::new(OrganisationView::default()),
            metrics,
            business_time,
            lost: StdMutex::new(BTreeMap::new()),
            lost_changed: Notify::new(),
            idempotency_window_secs: AtomicU64::new(DEFAULT_IDEMPOTENCY_WINDOW.as_secs()),
        }
    }

    /// The partition of the organisation stream.
    pub fn organisation_partition(&self) -> i32 {
        self.partition_of(&organisation_stream())
    }

    /// The organisation (teams, directors, members) as this instance knows it.
    pub fn organisation(&self) -> OrganisationState {
        self.organisation
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .state
            .clone()
    }

    /// Folds one recorded organisation event in, if it is the next one; events already
    /// applied are skipped (the owner's own appends and its history may be seen again).
    pub fn apply_organisation(
        &self,
        recorded: &RecordedOrganisationEvent,
        position: Option<Position>,
    ) {
        let mut view = self
            .organisation
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let m = &recorded.metadata;
        if m.sequence <= view.state.version || view.broken.is_some() {
            return;
        }
        match Organisation::apply_recorded(view.state.clone(), m.sequence, &recorded.event) {
            Ok(next) => view.state = next,
            Err(e) => {
                tracing::error!(error = %e, "the organisation stream breaks the sequence rule");
                view.broken = Some(e.to_string());
                return;
            }
        }
        if let (Some(key), Some(position)) = (&m.command_id, position) {
            view.answered.entry(key.clone()).or_default().push(
                &m.command_fingerprint,
                m.recorded_at,
                AppendedEvent {
                    id: m.id,
                    event_type: recorded.event.event_type().to_owned(),
                    sequence: m.sequence,
                    position,
                },
            );
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
            let keep_since = Utc::now() - self.idempotency_window();
            let mut customers: HashMap<CustomerId, CustomerEntry> = HashMap::new();
            let mut skipped = 0usize;
            for record in &history {
                if is_organisation_key(record.key.as_deref()) {
                    match domain::RecordedOrganisationEvent::from_kafka(
                        record.key.as_deref(),
                        record
                            .headers
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_deref())),
                        record.value.as_deref(),
                    ) {
                        Ok(r) => self.apply_organisation(&r, Some(record.position.clone())),
                        Err(e) => {
                            skipped += 1;
                            tracing::warn!(partition, offset = record.position.offset, error = %e, "undecodable record in the organisation stream, skipped");
                        }
                    }
                    continue;
                }
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
                match Customer::apply_recorded(entry.state.clone(), m.sequence, &recorded.event) {
                    Ok(next) => entry.state = next,
                    Err(e) => {
                        tracing::error!(partition, customer = %m.customer_id, error = %e, "customer stream breaks the sequence rule");
                        entry.broken = Some(e.to_string());
                        continue;
                    }
                }
                // answers older than the idempotency window are not kept
                if let Some(key) = m
                    .command_id
                    .as_ref()
                    .filter(|_| m.recorded_at >= keep_since)
                {
                    entry.answered.entry(key.clone()).or_default().push(
                        &m.command_fingerprint,
                        m.recorded_at,
                        AppendedEvent {
                            id: m.id,
                            event_type: recorded.event.event_type().to_owned(),
                            sequence: m.sequence,
                            position: record.position.clone(),
                        },
                    );
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
                    next_forget: StdMutex::new(std::time::Instant::now()),
                }),
            );
        }
        self.metrics
            .owned_partitions
            .set(self.owned.read().await.len() as i64);
        Ok(())
    }

    /// Gives a partition up because its writer died, unless it was taken over again meanwhile
    /// (`owned` is the partition as the failed append found it), and reports the loss to
    /// [`CustomerStreams::lost_writers`].
    async fn writer_lost(&self, partition: i32, owned: &Arc<OwnedPartition>, loss: WriterLoss) {
        {
            let mut partitions = self.owned.write().await;
            if !partitions
                .get(&partition)
                .is_some_and(|current| Arc::ptr_eq(current, owned))
            {
                return;
            }
            partitions.remove(&partition);
            self.metrics.owned_partitions.set(partitions.len() as i64);
        }
        tracing::warn!(
            partition,
            ?loss,
            "the partition's writer died: partition given up"
        );
        self.lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(partition, loss);
        self.lost_changed.notify_one();
    }

    /// Waits until a partition's writer dies, then returns every partition given up that way
    /// since the last call. Whoever knows the group's assignment decides whether to take them
    /// back ([`crate::follow_ownership`]).
    pub async fn lost_writers(&self) -> Vec<(i32, WriterLoss)> {
        loop {
            let lost =
                std::mem::take(&mut *self.lost.lock().unwrap_or_else(PoisonError::into_inner));
            if !lost.is_empty() {
                return lost.into_iter().collect();
            }
            self.lost_changed.notified().await;
        }
    }

    /// How long the answer to a command with an `Idempotency-Key` is kept: a retry within it
    /// gets the first answer; after it the key is forgotten (memory stays bounded by the
    /// identified commands of one window). Set before partitions are taken over.
    pub fn set_idempotency_window(&self, window: std::time::Duration) {
        self.idempotency_window_secs
            .store(window.as_secs().max(1), Ordering::Relaxed);
    }

    fn idempotency_window(&self) -> chrono::TimeDelta {
        let secs = self.idempotency_window_secs.load(Ordering::Relaxed);
        chrono::TimeDelta::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
    }

    /// Drops the answers of a partition older than the idempotency window, at most every
    /// tenth of the window (and at least every minute): under the partition's lock, which the
    /// caller holds.
    fn forget_expired_answers(
        &self,
        owned: &OwnedPartition,
        customers: &mut HashMap<CustomerId, CustomerEntry>,
    ) {
        let now = std::time::Instant::now();
        {
            let mut next = owned
                .next_forget
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if now < *next {
                return;
            }
            let window = self.idempotency_window_secs.load(Ordering::Relaxed);
            *next = now + std::time::Duration::from_secs((window / 10).clamp(1, 60));
        }
        let keep_since = Utc::now() - self.idempotency_window();
        let mut forgotten = 0usize;
        for entry in customers.values_mut() {
            let before = entry.answered.len();
            entry.answered.retain(|_, a| a.recorded_at >= keep_since);
            forgotten += before - entry.answered.len();
        }
        if forgotten > 0 {
            tracing::debug!(forgotten, "idempotency keys past the window forgotten");
        }
    }

    /// True when this instance decides the partition's customers now.
    pub async fn owns(&self, partition: i32) -> bool {
        self.owned.read().await.contains_key(&partition)
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
        let mut outcomes: Vec<Option<Result<Outcome, CommandError>>> =
            (0..count).map(|_| None).collect();
        for (i, r) in requests.into_iter().enumerate() {
            if r.customer_id.as_uuid() == ORGANISATION_STREAM_ID {
                // The organisation stream's key: never a customer.
                outcomes[i] = Some(Err(CommandError::Refused(
                    DomainError::CustomerNotRegistered,
                )));
                continue;
            }
            by_partition
                .entry(self.partition_of(&r.customer_id))
                .or_default()
                .push((i, r));
        }
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
        #[allow(clippy::type_complexity)]
        let mut pending: Vec<(
            usize,
            CustomerId,
            Option<String>,
            Vec<RecordedEvent>,
            Option<String>,
        )> = Vec::new();
        // A command id seen twice in one batch (a client's retry racing its first try): the
        // second gets the first one's answer, as if it came after the append.
        let mut pending_keys: HashMap<(CustomerId, String), usize> = HashMap::new();
        let mut duplicates: Vec<(usize, usize)> = Vec::new();
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
            // Who may do this to this customer: before anything else, so that a customer
            // outside the caller's reach looks exactly like one that does not exist.
            let authorized = {
                let organisation = self
                    .organisation
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                let principal = &request.caller.principal;
                let owner = entry.state.owner.as_ref();
                match request.caller.via {
                    Via::Command => {
                        authorize_command(principal, &organisation.state, owner, &request.command)
                    }
                    Via::Ingest => authorize_ingest(principal, &organisation.state, owner),
                }
            };
            if let Err(d) = authorized {
                results.push((i, Err(denied(d, DomainError::CustomerNotRegistered))));
                continue;
            }
            if let Some((key, answer)) = request
                .command_id
                .as_ref()
                .and_then(|k| entry.answered.get(k).map(|a| (k, a)))
            {
                let result = answer
                    .replay(key, request.fingerprint.as_ref())
                    .map(|events| Outcome {
                        customer_id: request.customer_id,
                        events,
                        sequence: entry.state.version,
                        replayed: true,
                    });
                results.push((i, result));
                continue;
            }
            if let Some((key, &first)) = request.command_id.as_ref().and_then(|k| {
                pending_keys
                    .get(&(request.customer_id, k.clone()))
                    .map(|f| (k, f))
            }) {
                let first_fingerprint = pending.get(first).and_then(|p| p.4.as_ref());
                match (first_fingerprint, request.fingerprint.as_ref()) {
                    (Some(a), Some(b)) if a != b => {
                        results.push((i, Err(CommandError::KeyReused { key: key.clone() })))
                    }
                    _ => duplicates.push((i, first)),
                }
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
            if let Some(at) = request.occurred_at {
                if let Err(e) = self.business_time.check(at, now, "occurred_at") {
                    results.push((i, Err(e.into())));
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
                    actor: request.caller.actor(),
                    command: Some(request.command.name().to_owned()),
                    command_id: request.command_id.clone(),
                    command_fingerprint: request
                        .command_id
                        .as_ref()
                        .and(request.fingerprint.clone()),
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
            if let Some(k) = &request.command_id {
                pending_keys.insert((request.customer_id, k.clone()), pending.len());
            }
            pending.push((
                i,
                request.customer_id,
                request.command_id,
                recorded,
                request.fingerprint,
            ));
        }

        if !records.is_empty() {
            self.metrics.append_batch_size.observe(records.len() as f64);
            match owned.writer.append(&records).await {
                Ok(positions) => {
                    let mut positions = positions.into_iter();
                    let mut answers: Vec<Outcome> = Vec::with_capacity(pending.len());
                    for (i, customer_id, command_id, recorded, fingerprint) in pending {
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
                            entry.answered.insert(
                                key,
                                Answered {
                                    fingerprint,
                                    events: events.clone(),
                                    recorded_at: now,
                                },
                            );
                        }
                        let sequence = events
                            .last()
                            .map(|e| e.sequence)
                            .unwrap_or(entry.state.version);
                        answers.push(Outcome {
                            customer_id,
                            events,
                            sequence,
                            replayed: false,
                        });
                        results.push((i, Ok(answers[answers.len() - 1].clone())));
                    }
                    for (i, first) in duplicates {
                        if let Some(answer) = answers.get(first) {
                            results.push((
                                i,
                                Ok(Outcome {
                                    replayed: true,
                                    ..answer.clone()
                                }),
                            ));
                        }
                    }
                    for (id, entry) in working {
                        customers.insert(id, entry);
                    }
                    self.forget_expired_answers(&owned, &mut customers);
                }
                Err(e) => {
                    let loss = WriterLoss::of(&e);
                    let fenced = loss.is_some();
                    let reason = e.to_string();
                    let failed = pending.iter().map(|(i, ..)| *i);
                    for i in failed
                        .chain(duplicates.iter().map(|(i, _)| *i))
                        .collect::<Vec<_>>()
                    {
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
                    if let Some(loss) = loss {
                        tracing::warn!(partition, error = %reason, "append failed: the writer is dead");
                        self.writer_lost(partition, &owned, loss).await;
                    }
                }
            }
        } else {
            // Only commands that asked for what is already so: nothing to append, each is
            // answered with the customer's current sequence.
            let answered = pending.iter().map(|(i, c, ..)| (*i, *c));
            let repeated = duplicates
                .iter()
                .filter_map(|(i, first)| pending.get(*first).map(|(_, c, ..)| (*i, *c)));
            for (i, customer_id) in answered.chain(repeated).collect::<Vec<_>>() {
                let sequence = working
                    .get(&customer_id)
                    .map(|e| e.state.version)
                    .unwrap_or(0);
                results.push((
                    i,
                    Ok(Outcome {
                        customer_id,
                        events: vec![],
                        sequence,
                        replayed: false,
                    }),
                ));
            }
        }
        results
    }

    /// Decides and appends one organisation command, in the organisation stream's partition
    /// (under that partition's lock, with its writer: the same single-writer rule as every
    /// customer).
    pub async fn execute_organisation(
        &self,
        request: OrganisationRequest,
    ) -> Result<Outcome, CommandError> {
        let partition = self.organisation_partition();
        let owned = self
            .owned
            .read()
            .await
            .get(&partition)
            .cloned()
            .ok_or(CommandError::NotOwner { partition })?;
        let customers = owned.customers.lock().await;
        let now = envelope_time(Utc::now());
        let stream = organisation_stream();
        let (recorded, records, version) = {
            let view = self
                .organisation
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(reason) = &view.broken {
                return Err(CommandError::BrokenStream(reason.clone()));
            }
            let team_id = request.command.team_id();
            authorize_organisation(&request.principal, &view.state, &request.command).map_err(
                |d| {
                    denied(
                        d,
                        DomainError::NotFound {
                            entity: "team",
                            field: "team_id",
                            id: team_id.to_string(),
                        },
                    )
                },
            )?;
            if let Some((key, answer)) = request
                .command_id
                .as_ref()
                .and_then(|k| view.answered.get(k).map(|a| (k, a)))
            {
                return Ok(Outcome {
                    customer_id: stream,
                    events: answer.replay(key, request.fingerprint.as_ref())?,
                    sequence: view.state.version,
                    replayed: true,
                });
            }
            if let Some(expected) = request.expected_sequence {
                if expected != view.state.version {
                    return Err(CommandError::SequenceMismatch {
                        expected,
                        actual: view.state.version,
                    });
                }
            }
            let events: Vec<OrganisationEvent> =
                decide_organisation(&view.state, &request.command)?;
            let correlation_id = request.correlation_id.unwrap_or_else(Uuid::now_v7);
            let mut recorded = Vec::with_capacity(events.len());
            let mut records = Vec::with_capacity(events.len());
            for (n, event) in events.into_iter().enumerate() {
                let r = RecordedOrganisationEvent {
                    metadata: EventMetadata {
                        id: Uuid::now_v7(),
                        source: self.source.clone(),
                        customer_id: stream,
                        sequence: view.state.version + 1 + n as u64,
                        actor: request.principal.subject.to_string(),
                        command: Some(request.command.name().to_owned()),
                        command_id: request.command_id.clone(),
                        command_fingerprint: request
                            .command_id
                            .as_ref()
                            .and(request.fingerprint.clone()),
                        correlation_id,
                        causation_id: request.causation_id,
                        occurred_at: now,
                        recorded_at: now,
                    },
                    event,
                };
                records.push(
                    r.to_kafka()
                        .map_err(|e| CommandError::Envelope(e.to_string()))?,
                );
                recorded.push(r);
            }
            (recorded, records, view.state.version)
        };
        if records.is_empty() {
            return Ok(Outcome {
                customer_id: stream,
                events: vec![],
                sequence: version,
                replayed: false,
            });
        }
        self.metrics.append_batch_size.observe(records.len() as f64);
        match owned.writer.append(&records).await {
            Ok(positions) => {
                let mut events = Vec::with_capacity(recorded.len());
                for (r, position) in recorded.iter().zip(positions) {
                    self.apply_organisation(r, Some(position.clone()));
                    events.push(AppendedEvent {
                        id: r.metadata.id,
                        event_type: r.event.event_type().to_owned(),
                        sequence: r.metadata.sequence,
                        position,
                    });
                }
                let sequence = events.last().map(|e| e.sequence).unwrap_or(version);
                Ok(Outcome {
                    customer_id: stream,
                    events,
                    sequence,
                    replayed: false,
                })
            }
            Err(e) => {
                drop(customers);
                if let Some(loss) = WriterLoss::of(&e) {
                    tracing::warn!(partition, error = %e, "append failed: the writer is dead");
                    self.writer_lost(partition, &owned, loss).await;
                    Err(CommandError::NotOwner { partition })
                } else {
                    Err(CommandError::Unavailable(e.to_string()))
                }
            }
        }
    }

    /// The state of one customer, when this instance owns it (for tests and diagnostics).
    pub async fn customer_state(&self, customer_id: &CustomerId) -> Option<CustomerState> {
        let partition = self.partition_of(customer_id);
        let owned = self.owned.read().await.get(&partition).cloned()?;
        let customers = owned.customers.lock().await;
        customers.get(customer_id).map(|e| e.state.clone())
    }
}
