//! The command pipeline, written once for every [`Aggregate`]: the commands of one partition
//! are taken one by one through access, idempotency, `If-Match`, business time and `decide`
//! against working copies of their streams, then appended in one transaction; only a
//! committed append makes the working copies real. Each step is one method of [`Batch`].

use std::collections::HashMap;
use std::sync::PoisonError;

use chrono::{DateTime, Utc};
use domain::access::Denial;
use domain::{Aggregate, CustomerId, EventMetadata, KafkaRecord, Recorded};
use infra::Position;
use uuid::Uuid;

use super::{
    Answered, AppendedEvent, CommandError, CustomerStreams, OwnedPartition, Request, WriterLoss,
};
use crate::streams::Outcome;

/// One stream's state plus the answers to the commands that carried an id.
pub(crate) struct Entry<A: Aggregate> {
    pub(super) state: A::State,
    pub(super) answered: HashMap<String, Answered>,
    /// Set when the stored stream broke the sequence rule: refuse commands, do not guess.
    pub(super) broken: Option<String>,
}

impl<A: Aggregate> Clone for Entry<A> {
    fn clone(&self) -> Self {
        Entry {
            state: self.state.clone(),
            answered: self.answered.clone(),
            broken: self.broken.clone(),
        }
    }
}

impl<A: Aggregate> Entry<A> {
    pub(super) fn new(stream: CustomerId) -> Self {
        Entry {
            state: A::initial(stream),
            answered: HashMap::new(),
            broken: None,
        }
    }

    pub(super) fn version(&self) -> u64 {
        A::version(&self.state)
    }

    /// Folds in one event read back from the log (or just appended): the next in the stream,
    /// else the stream is marked broken. Its answer is remembered when the command that
    /// caused it had an id and it was recorded since `keep_since`.
    pub(super) fn fold(
        &mut self,
        recorded: &Recorded<A::Event>,
        position: &Position,
        keep_since: DateTime<Utc>,
    ) {
        if self.broken.is_some() {
            return;
        }
        let m = &recorded.metadata;
        // the state is moved through `evolve`, not copied; a stream that breaks the rule keeps
        // no state worth having
        let state = std::mem::replace(&mut self.state, A::initial(m.customer_id));
        match A::apply_recorded(state, m.sequence, &recorded.event) {
            Ok(next) => self.state = next,
            Err(e) => {
                tracing::error!(stream = %m.customer_id, aggregate = A::NAME, error = %e, "a stream breaks the sequence rule");
                self.broken = Some(e.to_string());
                return;
            }
        }
        if let Some(key) = m
            .command_id
            .as_ref()
            .filter(|_| m.recorded_at >= keep_since)
        {
            self.answered.entry(key.clone()).or_default().push(
                &m.command_fingerprint,
                m.recorded_at,
                appended(recorded, position.clone()),
            );
        }
    }
}

/// How the client is told about one appended event.
fn appended<E: domain::Events>(recorded: &Recorded<E>, position: Position) -> AppendedEvent {
    AppendedEvent {
        id: recorded.metadata.id,
        event_type: recorded.event.event_type().to_owned(),
        sequence: recorded.metadata.sequence,
        position,
    }
}

/// A command that was decided and waits for the append.
struct Decided<A: Aggregate> {
    index: usize,
    stream: CustomerId,
    command_id: Option<String>,
    fingerprint: Option<String>,
    recorded: Vec<Recorded<A::Event>>,
}

/// What a committed batch changed: the new states of the streams it changed more than once,
/// the events of those it changed once (folded into their committed states here, so that no
/// state was copied for them) and the answers to its identified commands.
pub(super) struct Changes<A: Aggregate> {
    states: HashMap<CustomerId, A::State>,
    events: Vec<(CustomerId, A::Event)>,
    answers: Vec<(CustomerId, String, Answered)>,
}

impl<A: Aggregate> Changes<A> {
    /// Makes the changes real in the streams.
    pub(super) fn apply(self, streams: &mut HashMap<CustomerId, Entry<A>>) {
        let Changes {
            states,
            events,
            answers,
        } = self;
        for (stream, state) in states {
            streams
                .entry(stream)
                .or_insert_with(|| Entry::new(stream))
                .state = state;
        }
        for (stream, event) in events {
            let entry = streams.entry(stream).or_insert_with(|| Entry::new(stream));
            let state = std::mem::replace(&mut entry.state, A::initial(stream));
            entry.state = A::evolve(state, &event);
        }
        for (stream, key, answer) in answers {
            streams
                .entry(stream)
                .or_insert_with(|| Entry::new(stream))
                .answered
                .insert(key, answer);
        }
    }
}

/// What an append did to the streams.
pub(super) enum Appended<A: Aggregate> {
    /// Committed: these changes are now the streams'.
    Committed(Changes<A>),
    /// Nothing to append.
    Nothing,
    /// Nothing of it is visible; with a loss, the partition's writer is dead.
    Failed(Option<WriterLoss>),
}

/// The answers of a batch, by the index of each request.
pub(super) type Answers = Vec<(usize, Result<Outcome, CommandError>)>;

/// The commands of one partition on their way to one append.
pub(super) struct Batch<'a, A: Aggregate> {
    streams: &'a CustomerStreams,
    /// The streams as committed: read, never written here.
    committed: &'a HashMap<CustomerId, Entry<A>>,
    /// Streams one command of the batch changed so far, by that command's index in `decided`:
    /// they are decided against their committed state, which is not copied.
    changed_once: HashMap<CustomerId, usize>,
    /// Working copies of the streams a second command of the batch is about: made then, from
    /// the committed state and the first command's events.
    working: HashMap<CustomerId, A::State>,
    /// The answers to the batch's identified commands, remembered when it commits.
    new_answers: Vec<(CustomerId, String, Answered)>,
    answers: Answers,
    decided: Vec<Decided<A>>,
    /// A command id seen twice in one batch (a client's retry racing its first try): the
    /// second gets the first one's answer, as if it came after the append.
    pending_keys: HashMap<(CustomerId, String), usize>,
    /// (request index, index in `decided` of the first of the same id)
    duplicates: Vec<(usize, usize)>,
    records: Vec<KafkaRecord>,
    now: DateTime<Utc>,
}

impl<'a, A: Aggregate> Batch<'a, A> {
    pub(super) fn new(
        streams: &'a CustomerStreams,
        committed: &'a HashMap<CustomerId, Entry<A>>,
    ) -> Self {
        Batch {
            streams,
            committed,
            changed_once: HashMap::new(),
            working: HashMap::new(),
            new_answers: Vec::new(),
            answers: Vec::new(),
            decided: Vec::new(),
            pending_keys: HashMap::new(),
            duplicates: Vec::new(),
            records: Vec::new(),
            now: domain::envelope::envelope_time(Utc::now()),
        }
    }

    /// Takes one command through every check and `decide`; it is answered now when refused
    /// or already answered, else when the batch is appended.
    pub(super) fn take(&mut self, index: usize, request: Request<A>) {
        match self.decide(index, request) {
            Ok(()) => {}
            Err(answer) => self.answers.push((index, answer)),
        }
    }

    /// Runs the steps against the stream as the batch has it so far: its committed state
    /// until a command changes it; from the second command on a changed stream, a working
    /// copy (made once, then changed in place), so that most streams are never copied.
    fn decide(
        &mut self,
        index: usize,
        request: Request<A>,
    ) -> Result<(), Result<Outcome, CommandError>> {
        let stream = request.customer_id;
        let committed = self.committed.get(&stream);
        if let Some(reason) = committed.and_then(|e| e.broken.as_ref()) {
            return Err(Err(CommandError::BrokenStream(reason.clone())));
        }
        if let Some(first) = self.changed_once.remove(&stream) {
            let mut state = committed.map_or_else(|| A::initial(stream), |e| e.state.clone());
            for r in self.decided.get(first).map_or(&[][..], |d| &d.recorded[..]) {
                state = A::evolve(state, &r.event);
            }
            self.working.insert(stream, state);
        }
        let mut working = self.working.remove(&stream);
        let initial;
        let state = match (&working, committed) {
            (Some(state), _) => state,
            (None, Some(entry)) => &entry.state,
            (None, None) => {
                initial = A::initial(stream);
                &initial
            }
        };
        let result = self.steps(index, committed, state, request);
        let changed = result.as_ref().ok().copied().flatten();
        if let Some(decided) = changed.and_then(|d| self.decided.get(d)) {
            match working.as_mut() {
                Some(state) => {
                    let mut next = std::mem::replace(state, A::initial(stream));
                    for r in &decided.recorded {
                        next = A::evolve(next, &r.event);
                    }
                    *state = next;
                }
                None => {
                    if let Some(d) = changed {
                        self.changed_once.insert(stream, d);
                    }
                }
            }
        }
        if let Some(state) = working {
            self.working.insert(stream, state);
        }
        result.map(|_| ())
    }

    /// The stream's version as the batch leaves it.
    fn version_after(&self, stream: &CustomerId) -> u64 {
        if let Some(state) = self.working.get(stream) {
            return A::version(state);
        }
        let committed = self
            .committed
            .get(stream)
            .map_or(0, |e| A::version(&e.state));
        let once = self
            .changed_once
            .get(stream)
            .and_then(|d| self.decided.get(*d))
            .map_or(0, |d| d.recorded.len() as u64);
        committed + once
    }

    /// The steps, in order; an `Err` is the command's answer (which may be a success: the
    /// answer to a retry). `Ok` names the decided command when it has events to append.
    fn steps(
        &mut self,
        index: usize,
        committed: Option<&Entry<A>>,
        state: &A::State,
        request: Request<A>,
    ) -> Result<Option<usize>, Result<Outcome, CommandError>> {
        // before anything else, so that a stream outside the caller's reach looks exactly
        // like one that does not exist
        self.check_access(state, &request).map_err(Err)?;
        if let Some(answer) = committed.and_then(|e| replay_answer(e, state, &request)) {
            return Err(answer);
        }
        if self.pending_duplicate(index, &request)? {
            return Ok(None);
        }
        check_expected_sequence::<A>(state, &request).map_err(Err)?;
        if let Some(at) = request.occurred_at {
            self.streams
                .business_time
                .check(at, self.now, "occurred_at")
                .map_err(|e| Err(e.into()))?;
        }
        let recorded = self.record(state, &request).map_err(Err)?;
        if let Some(key) = &request.command_id {
            self.pending_keys
                .insert((request.customer_id, key.clone()), self.decided.len());
        }
        let changes = !recorded.is_empty();
        self.decided.push(Decided {
            index,
            stream: request.customer_id,
            command_id: request.command_id,
            fingerprint: request.fingerprint,
            recorded,
        });
        Ok(changes.then(|| self.decided.len() - 1))
    }

    /// The permission table and the caller's reach, against the stream as it is.
    fn check_access(&self, state: &A::State, request: &Request<A>) -> Result<(), CommandError> {
        let organisation = self
            .streams
            .organisation
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        A::authorize(
            &request.caller.principal,
            request.caller.via,
            &organisation.state,
            state,
            &request.command,
        )
        .map_err(|denial| match denial {
            Denial::Forbidden { field, reason, .. } => CommandError::Forbidden { field, reason },
            Denial::Hidden => CommandError::Refused(A::hidden(&request.command)),
        })
    }

    /// True when a command with the same id is already in this batch: it will get that
    /// one's answer (or is refused when the id came with another request).
    fn pending_duplicate(
        &mut self,
        index: usize,
        request: &Request<A>,
    ) -> Result<bool, Result<Outcome, CommandError>> {
        let Some(key) = &request.command_id else {
            return Ok(false);
        };
        let Some(&first) = self.pending_keys.get(&(request.customer_id, key.clone())) else {
            return Ok(false);
        };
        let first_fingerprint = self.decided.get(first).and_then(|d| d.fingerprint.as_ref());
        match (first_fingerprint, request.fingerprint.as_ref()) {
            (Some(a), Some(b)) if a != b => Err(Err(CommandError::KeyReused { key: key.clone() })),
            _ => {
                self.duplicates.push((index, first));
                Ok(true)
            }
        }
    }

    /// `decide`, then each event in its envelope and encoded; only when every one is, their
    /// records join the batch's (the caller folds them into the batch's view of the stream).
    fn record(
        &mut self,
        state: &A::State,
        request: &Request<A>,
    ) -> Result<Vec<Recorded<A::Event>>, CommandError> {
        let events = A::decide(state, &request.command)?;
        let correlation_id = request.correlation_id.unwrap_or_else(Uuid::now_v7);
        let first = A::version(state) + 1;
        let mut recorded = Vec::with_capacity(events.len());
        let mut records = Vec::with_capacity(events.len());
        for (sequence, event) in (first..).zip(events) {
            let r = Recorded {
                metadata: self.metadata(request, sequence, correlation_id),
                event,
            };
            records.push(
                r.to_kafka()
                    .map_err(|e| CommandError::Envelope(e.to_string()))?,
            );
            recorded.push(r);
        }
        self.records.extend(records);
        Ok(recorded)
    }

    /// The envelope of one event a request causes.
    fn metadata(&self, request: &Request<A>, sequence: u64, correlation_id: Uuid) -> EventMetadata {
        EventMetadata {
            id: Uuid::now_v7(),
            source: self.streams.source.clone(),
            customer_id: request.customer_id,
            sequence,
            actor: request.caller.actor(),
            command: Some(domain::Commands::name(&request.command).to_owned()),
            command_id: request.command_id.clone(),
            command_fingerprint: request.command_id.as_ref().and(request.fingerprint.clone()),
            correlation_id,
            causation_id: request.causation_id,
            occurred_at: request
                .occurred_at
                .map(domain::envelope::envelope_time)
                .unwrap_or(self.now),
            recorded_at: self.now,
        }
    }

    /// Appends what the batch decided in one transaction, then answers every command.
    pub(super) async fn append(
        mut self,
        partition: i32,
        owned: &OwnedPartition,
    ) -> (Answers, Appended<A>) {
        if self.records.is_empty() {
            self.answer_unchanged();
            return (self.answers, Appended::Nothing);
        }
        self.streams
            .metrics
            .append_batch_size
            .observe(self.records.len() as f64);
        match owned.writer.append(&self.records).await {
            Ok(positions) => {
                let events = self.answer_appended(partition, positions);
                let changes = Changes {
                    states: self.working,
                    events,
                    answers: self.new_answers,
                };
                (self.answers, Appended::Committed(changes))
            }
            Err(e) => {
                let loss = WriterLoss::of(&e);
                let reason = e.to_string();
                let failed = self.decided.iter().map(|d| d.index);
                let failed: Vec<usize> = failed
                    .chain(self.duplicates.iter().map(|(i, _)| *i))
                    .collect();
                for i in failed {
                    self.answers.push((
                        i,
                        Err(match loss {
                            Some(_) => CommandError::NotOwner { partition },
                            None => CommandError::Unavailable(reason.clone()),
                        }),
                    ));
                }
                if loss.is_some() {
                    tracing::warn!(partition, error = %reason, "append failed: the writer is dead");
                }
                (self.answers, Appended::Failed(loss))
            }
        }
    }

    /// Only commands that asked for what is already so: nothing to append, each is answered
    /// with its stream's current sequence.
    fn answer_unchanged(&mut self) {
        let decided = self.decided.iter().map(|d| (d.index, d.stream));
        let repeated = self
            .duplicates
            .iter()
            .filter_map(|(i, first)| self.decided.get(*first).map(|d| (*i, d.stream)));
        let unchanged: Vec<(usize, CustomerId)> = decided.chain(repeated).collect();
        for (i, stream) in unchanged {
            let sequence = self.version_after(&stream);
            self.answers.push((
                i,
                Ok(Outcome {
                    customer_id: stream,
                    events: vec![],
                    sequence,
                    replayed: false,
                }),
            ));
        }
    }

    /// Answers every decided command with its events' positions, and remembers the answers
    /// of identified ones. Returns the events of the streams the batch changed once, for
    /// their committed states.
    fn answer_appended(
        &mut self,
        partition: i32,
        positions: Vec<Position>,
    ) -> Vec<(CustomerId, A::Event)> {
        let mut positions = positions.into_iter();
        // the answers a repeated command in the batch gets again
        let mut repeated: HashMap<usize, Option<Outcome>> = self
            .duplicates
            .iter()
            .map(|(_, first)| (*first, None))
            .collect();
        // a command with no events is answered with its stream's sequence after the batch
        let unchanged_versions: HashMap<CustomerId, u64> = self
            .decided
            .iter()
            .filter(|d| d.recorded.is_empty())
            .map(|d| (d.stream, self.version_after(&d.stream)))
            .collect();
        let mut events_once = Vec::with_capacity(self.changed_once.len());
        for (k, d) in std::mem::take(&mut self.decided).into_iter().enumerate() {
            let events: Vec<AppendedEvent> = d
                .recorded
                .iter()
                .map(|r| {
                    let position = positions.next().unwrap_or_else(|| Position {
                        topic: self.streams.topic.clone(),
                        partition,
                        offset: -1,
                    });
                    appended(r, position)
                })
                .collect();
            if let Some(key) = d.command_id {
                self.new_answers.push((
                    d.stream,
                    key,
                    Answered {
                        fingerprint: d.fingerprint,
                        events: events.clone(),
                        recorded_at: self.now,
                    },
                ));
            }
            let sequence = events
                .last()
                .map(|e| e.sequence)
                .unwrap_or_else(|| unchanged_versions.get(&d.stream).copied().unwrap_or(0));
            // the one command that changed its stream in this batch
            if self.changed_once.get(&d.stream) == Some(&k) {
                events_once.extend(d.recorded.into_iter().map(|r| (d.stream, r.event)));
            }
            let outcome = Outcome {
                customer_id: d.stream,
                events,
                sequence,
                replayed: false,
            };
            if let Some(slot) = repeated.get_mut(&k) {
                *slot = Some(outcome.clone());
            }
            self.answers.push((d.index, Ok(outcome)));
        }
        for (i, first) in std::mem::take(&mut self.duplicates) {
            if let Some(Some(answer)) = repeated.get(&first) {
                self.answers.push((
                    i,
                    Ok(Outcome {
                        replayed: true,
                        ..answer.clone()
                    }),
                ));
            }
        }
        events_once
    }
}

/// The first answer to a command with the same id, when there was one (`state` is the
/// stream's working copy, whose sequence the answer gives).
fn replay_answer<A: Aggregate>(
    committed: &Entry<A>,
    state: &A::State,
    request: &Request<A>,
) -> Option<Result<Outcome, CommandError>> {
    let key = request.command_id.as_ref()?;
    let answer = committed.answered.get(key)?;
    Some(
        answer
            .replay(key, request.fingerprint.as_ref())
            .map(|events| Outcome {
                customer_id: request.customer_id,
                events,
                sequence: A::version(state),
                replayed: true,
            }),
    )
}

/// `If-Match`: the stream must be at the sequence the client expects.
fn check_expected_sequence<A: Aggregate>(
    state: &A::State,
    request: &Request<A>,
) -> Result<(), CommandError> {
    let actual = A::version(state);
    match request.expected_sequence {
        Some(expected) if expected != actual => {
            Err(CommandError::SequenceMismatch { expected, actual })
        }
        _ => Ok(()),
    }
}
