//! The streams this instance writes: for every partition it owns, the current state of each of
//! its customers (and of the organisation, when its partition is one of them), and the one
//! writer that appends to it.
//!
//! A command is decided against its stream's state and appended in one Kafka transaction;
//! only when the transaction has committed does the state move on. Everything for one
//! partition happens under that partition's lock, so the decision and the append can never
//! interleave with another command for the same stream. The steps are written once for every
//! aggregate, in [`pipeline`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError, RwLock as StdRwLock};

use chrono::{DateTime, Utc};
use domain::access::Principal;
use domain::limits::BusinessTimeWindow;
use domain::{
    organisation_stream, Aggregate, Customer, CustomerId, CustomerState, DomainError, Organisation,
    OrganisationState, RecordedOrganisationEvent, StreamEvent, ORGANISATION_STREAM_ID,
};
use infra::kafka::{partition_for, LogError, RecordAppender};
use infra::log::CustomerLog;
use infra::Position;
use serde::Serialize;
use tokio::sync::{Mutex, Notify, RwLock};
use uuid::Uuid;

use crate::metrics::Metrics;
use pipeline::{Answers, Appended, Batch, Entry};

mod fingerprint;
mod pipeline;

pub use fingerprint::{fingerprint, fingerprint_of_json, Numbers};

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

/// A command for a stream of aggregate `A`, with everything the envelope needs.
#[derive(Debug)]
pub struct Request<A: Aggregate> {
    /// The stream: a customer's id, or the organisation's fixed one.
    pub customer_id: CustomerId,
    pub command: A::Command,
    /// `If-Match`: the sequence the client believes is the stream's last.
    pub expected_sequence: Option<u64>,
    /// `Idempotency-Key`: a retry with the same key gets the first answer.
    pub command_id: Option<String>,
    /// A digest of the request the key came with ([`fingerprint`]): the same key with a
    /// different request is refused ([`CommandError::KeyReused`]).
    pub fingerprint: Option<String>,
    /// Who asks: checked against the permission table and the stream (a customer's owner,
    /// a team's director), recorded as the events' actor.
    pub caller: Caller,
    /// Business time; now when absent.
    pub occurred_at: Option<DateTime<Utc>>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
}

/// A command on a customer's stream.
pub type CommandRequest = Request<Customer>;

/// A command on the organisation stream.
pub type OrganisationRequest = Request<Organisation>;

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
    #[error("expected sequence {expected}, but the stream is at {actual}")]
    SequenceMismatch { expected: u64, actual: u64 },
    #[error("partition {partition} of this stream is not owned by this instance")]
    NotOwner { partition: i32 },
    #[error("the stream is unreadable: {0}")]
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
pub(crate) struct Answered {
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

/// The streams of one partition, one map per aggregate with a stream per id. A new such
/// aggregate adds its map here and its [`Hosted`] impl below.
#[derive(Default)]
pub(crate) struct PartitionStreams {
    customers: HashMap<CustomerId, Entry<Customer>>,
}

impl PartitionStreams {
    /// Drops the answers recorded before `keep_since`; returns how many.
    fn forget_answers(&mut self, keep_since: DateTime<Utc>) -> usize {
        forget_answers(&mut self.customers, keep_since)
    }
}

fn forget_answers<A: Aggregate>(
    streams: &mut HashMap<CustomerId, Entry<A>>,
    keep_since: DateTime<Utc>,
) -> usize {
    let mut forgotten = 0;
    for entry in streams.values_mut() {
        let before = entry.answered.len();
        entry.answered.retain(|_, a| a.recorded_at >= keep_since);
        forgotten += before - entry.answered.len();
    }
    forgotten
}

/// An aggregate with one stream per id, its streams kept by the partition their id hashes to.
pub(crate) trait Hosted: Aggregate + Sized {
    /// This aggregate's streams in a partition.
    fn streams(partition: &mut PartitionStreams) -> &mut HashMap<CustomerId, Entry<Self>>;
    /// This aggregate's commands waiting for the partition's next append.
    fn waiting(queues: &PartitionQueues) -> &StdMutex<Vec<Waiting<Self>>>;
}

impl Hosted for Customer {
    fn streams(partition: &mut PartitionStreams) -> &mut HashMap<CustomerId, Entry<Self>> {
        &mut partition.customers
    }

    fn waiting(queues: &PartitionQueues) -> &StdMutex<Vec<Waiting<Self>>> {
        &queues.customers
    }
}

/// Folds an event read back from a partition's history into its stream.
fn fold_history<A: Hosted>(
    partition: &mut PartitionStreams,
    recorded: &domain::Recorded<A::Event>,
    position: &Position,
    keep_since: DateTime<Utc>,
) {
    let stream = recorded.metadata.customer_id;
    A::streams(partition)
        .entry(stream)
        .or_insert_with(|| Entry::new(stream))
        .fold(recorded, position, keep_since);
}

/// Commands of one caller waiting for their partition's next append, and where their answers
/// go.
pub(crate) struct Waiting<A: Aggregate> {
    requests: Vec<(usize, Request<A>)>,
    answers: tokio::sync::oneshot::Sender<Answers>,
}

/// The commands waiting for a partition's next append, by aggregate.
#[derive(Default)]
pub(crate) struct PartitionQueues {
    customers: StdMutex<Vec<Waiting<Customer>>>,
}

struct OwnedPartition {
    writer: Arc<dyn RecordAppender>,
    /// Every stream of the partition, by aggregate.
    streams: Mutex<PartitionStreams>,
    /// Commands that arrived while the partition was busy: the next holder of `streams`
    /// decides them all and appends them in one transaction (group commit).
    waiting: PartitionQueues,
    /// When answers past the idempotency window are next looked for.
    next_forget: StdMutex<std::time::Instant>,
}

pub struct CustomerStreams {
    log: Arc<dyn CustomerLog>,
    topic: String,
    source: String,
    owned: RwLock<HashMap<i32, Arc<OwnedPartition>>>,
    /// The organisation stream as this instance knows it: complete when it owns the stream's
    /// partition, else as far as it has followed it ([`crate::organisation`]).
    organisation: StdRwLock<Entry<Organisation>>,
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
            organisation: StdRwLock::new(Entry::new(organisation_stream())),
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
    pub fn apply_organisation(&self, recorded: &RecordedOrganisationEvent, position: &Position) {
        let keep_since = Utc::now() - self.idempotency_window();
        let mut view = self
            .organisation
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if recorded.metadata.sequence > view.version() {
            view.fold(recorded, position, keep_since);
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
            let mut streams = PartitionStreams::default();
            let mut skipped = 0usize;
            for record in &history {
                match record.decode_stream() {
                    Ok(StreamEvent::Organisation(r)) => {
                        self.apply_organisation(&r, &record.position)
                    }
                    // answers older than the idempotency window are not kept
                    Ok(StreamEvent::Customer(r)) => {
                        fold_history::<Customer>(&mut streams, &r, &record.position, keep_since)
                    }
                    Err(e) => {
                        skipped += 1;
                        tracing::warn!(partition, offset = record.position.offset, error = %e, "undecodable record, skipped");
                    }
                }
            }
            tracing::info!(
                partition,
                records = history.len(),
                customers = streams.customers.len(),
                skipped,
                "partition taken over"
            );
            self.owned.write().await.insert(
                partition,
                Arc::new(OwnedPartition {
                    writer,
                    streams: Mutex::new(streams),
                    waiting: PartitionQueues::default(),
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
    fn forget_expired_answers(&self, owned: &OwnedPartition, streams: &mut PartitionStreams) {
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
        let forgotten = streams.forget_answers(keep_since);
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

    /// Decides and appends one command on a customer's stream.
    pub async fn execute(
        self: &Arc<Self>,
        request: CommandRequest,
    ) -> Result<Outcome, CommandError> {
        self.execute_batch(vec![request])
            .await
            .pop()
            .unwrap_or(Err(CommandError::Envelope("no outcome".into())))
    }

    /// Decides and appends many commands: those of one partition in one transaction. Each
    /// command gets its own outcome; a refused command does not hold back the others. The
    /// outcomes are in the order of the requests.
    #[allow(private_bounds)]
    pub async fn execute_batch<A: Hosted>(
        self: &Arc<Self>,
        requests: Vec<Request<A>>,
    ) -> Vec<Result<Outcome, CommandError>> {
        let mut by_partition: HashMap<i32, Vec<(usize, Request<A>)>> = HashMap::new();
        let count = requests.len();
        let mut outcomes: Vec<Option<Result<Outcome, CommandError>>> =
            (0..count).map(|_| None).collect();
        for (i, r) in requests.into_iter().enumerate() {
            if r.customer_id.as_uuid() == ORGANISATION_STREAM_ID {
                // The organisation stream's key: never any other stream's.
                outcomes[i] = Some(Err(CommandError::Refused(A::hidden(&r.command))));
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

    /// The commands of one partition. They wait in the partition's queue; whoever holds the
    /// partition's lock next takes every command waiting then, decides them in order as one
    /// batch and appends them in one transaction (group commit: while one transaction is on
    /// its way, the commands that arrive meanwhile gather for the next), then answers each
    /// caller.
    ///
    /// The taking, deciding and appending run on a task of their own: a caller that goes away
    /// (a client that disconnects) must not cancel a transaction that carries other callers'
    /// commands, nor leave the streams behind a transaction that did commit.
    async fn execute_in_partition<A: Hosted>(
        self: &Arc<Self>,
        partition: i32,
        owned: Arc<OwnedPartition>,
        requests: Vec<(usize, Request<A>)>,
    ) -> Answers {
        let indexes: Vec<usize> = requests.iter().map(|(i, _)| *i).collect();
        let (answers, answered) = tokio::sync::oneshot::channel();
        A::waiting(&owned.waiting)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Waiting { requests, answers });
        let me = self.clone();
        tokio::spawn(async move { me.append_waiting::<A>(partition, owned).await });
        // taken and answered by this call's task or by an earlier one
        answered.await.unwrap_or_else(|_| {
            indexes
                .into_iter()
                .map(|i| {
                    let lost = "the append was interrupted; nothing of it is answered, retry";
                    (i, Err(CommandError::Unavailable(lost.into())))
                })
                .collect()
        })
    }

    /// Takes every command waiting in the partition's queue under its lock, decides them as
    /// one batch, appends it, and sends each caller its answers (by each caller's own request
    /// indexes). Nothing to do when an earlier task took them.
    async fn append_waiting<A: Hosted>(&self, partition: i32, owned: Arc<OwnedPartition>) {
        let mut streams = owned.streams.lock().await;
        let waiting = std::mem::take(
            &mut *A::waiting(&owned.waiting)
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if waiting.is_empty() {
            return;
        }
        let owned = &owned;
        let mut batch = Batch::new(self, A::streams(&mut streams));
        // each caller's requests get batch indexes of their own; `callers` maps them back
        let mut callers = Vec::with_capacity(waiting.len());
        let mut next = 0usize;
        for Waiting { requests, answers } in waiting {
            let mut indexes = Vec::with_capacity(requests.len());
            for (i, request) in requests {
                indexes.push(i);
                batch.take(next, request);
                next += 1;
            }
            callers.push((indexes, answers));
        }
        let (answers, appended) = batch.append(partition, owned).await;
        self.settle_append(partition, owned, streams, appended)
            .await;
        // the batch's answers in batch order: each caller's requests are a run of them
        let mut by_index: Vec<Option<Result<Outcome, CommandError>>> =
            (0..next).map(|_| None).collect();
        for (i, answer) in answers {
            if let Some(slot) = by_index.get_mut(i) {
                *slot = Some(answer);
            }
        }
        let mut by_index = by_index.into_iter();
        for (indexes, sender) in callers {
            let mine: Answers = indexes
                .into_iter()
                .map(|i| {
                    let answer = by_index.next().flatten();
                    (
                        i,
                        answer.unwrap_or(Err(CommandError::Envelope("no outcome".into()))),
                    )
                })
                .collect();
            // a caller that went away needs no answer
            let _ = sender.send(mine);
        }
    }

    /// Makes a batch's append real in the partition's streams, or gives the partition up
    /// when its writer died.
    async fn settle_append<A: Hosted>(
        &self,
        partition: i32,
        owned: &Arc<OwnedPartition>,
        mut streams: tokio::sync::MutexGuard<'_, PartitionStreams>,
        appended: Appended<A>,
    ) {
        match appended {
            Appended::Committed(changes) => {
                changes.apply(A::streams(&mut streams));
                self.forget_expired_answers(owned, &mut streams);
            }
            Appended::Failed(Some(loss)) => {
                drop(streams);
                self.writer_lost(partition, owned, loss).await;
            }
            Appended::Failed(None) | Appended::Nothing => {}
        }
    }

    /// Decides and appends one organisation command, in the organisation stream's partition
    /// (under that partition's lock, with its writer: the same single-writer rule as every
    /// customer). Like a customer's, the append runs on a task of its own, which a caller that
    /// goes away does not cancel.
    pub async fn execute_organisation(
        self: &Arc<Self>,
        request: OrganisationRequest,
    ) -> Result<Outcome, CommandError> {
        let me = self.clone();
        tokio::spawn(async move { me.append_organisation(request).await })
            .await
            .unwrap_or_else(|e| {
                Err(CommandError::Unavailable(format!(
                    "the append was interrupted ({e}); retry"
                )))
            })
    }

    async fn append_organisation(
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
        // the partition's lock: one writer, one command at a time
        let streams = owned.streams.lock().await;
        let stream = organisation_stream();
        let mut committed = HashMap::from([(
            stream,
            self.organisation
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )]);
        let mut batch = Batch::new(self, &committed);
        batch.take(0, request);
        let (mut answers, appended) = batch.append(partition, &owned).await;
        match appended {
            Appended::Committed(changes) => {
                changes.apply(&mut committed);
                let mut view = self
                    .organisation
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                // the follower may have read the same events meanwhile (and remembered their
                // answers as it folded them): only a newer stream replaces the view
                if let Some(entry) = committed.remove(&stream) {
                    if entry.version() > view.version() {
                        *view = entry;
                    }
                }
            }
            Appended::Failed(Some(loss)) => {
                drop(streams);
                self.writer_lost(partition, &owned, loss).await;
            }
            Appended::Failed(None) | Appended::Nothing => {}
        }
        answers
            .pop()
            .map(|(_, answer)| answer)
            .unwrap_or(Err(CommandError::Envelope("no outcome".into())))
    }

    /// The state of one customer, when this instance owns it (for tests and diagnostics).
    pub async fn customer_state(&self, customer_id: &CustomerId) -> Option<CustomerState> {
        let partition = self.partition_of(customer_id);
        let owned = self.owned.read().await.get(&partition).cloned()?;
        let streams = owned.streams.lock().await;
        streams.customers.get(customer_id).map(|e| e.state.clone())
    }
}
