use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;

use super::{KafkaSettings, LogError};

/// A change of the partitions this instance owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnershipChange {
    /// These partitions are now ours: open their writers (fencing the previous owner) and
    /// rebuild their customers' state.
    Assigned(Vec<i32>),
    /// These partitions are no longer ours: stop deciding for their customers.
    Revoked(Vec<i32>),
}

struct OwnershipContext {
    topic: String,
    owned: Arc<Mutex<BTreeSet<i32>>>,
    changes: mpsc::UnboundedSender<OwnershipChange>,
}

impl OwnershipContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for OwnershipContext {}

impl ConsumerContext for OwnershipContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let revoked = self.partitions(tpl);
                if revoked.is_empty() {
                    return;
                }
                {
                    let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
                    for p in &revoked {
                        owned.remove(p);
                    }
                }
                tracing::info!(topic = %self.topic, partitions = ?revoked, "partitions revoked");
                // A closed receiver means nobody listens any more; nothing to do.
                let _ = self.changes.send(OwnershipChange::Revoked(revoked));
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "rebalance failed");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let assigned = self.partitions(tpl);
            if assigned.is_empty() {
                return;
            }
            // The group is only used to learn ownership: never fetch anything.
            if let Err(e) = consumer.pause(tpl) {
                tracing::warn!(error = %e, "could not pause assigned partitions");
            }
            self.owned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(assigned.iter().copied());
            tracing::info!(topic = %self.topic, partitions = ?assigned, "partitions assigned");
            let _ = self.changes.send(OwnershipChange::Assigned(assigned));
        }
    }
}

/// Membership of the command-service consumer group (`{prefix}command-service`), subscribed
/// to the customer-events topic only to learn which partitions this instance owns. It reads
/// no records. Changes arrive on the receiver returned by [`PartitionOwnership::start`].
///
/// Dropping it (or [`PartitionOwnership::shutdown`]) leaves the group: a final
/// [`OwnershipChange::Revoked`] is sent and the partitions move to the other members.
pub struct PartitionOwnership {
    owned: Arc<Mutex<BTreeSet<i32>>>,
    settle_time: Duration,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PartitionOwnership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionOwnership")
            .field("owned", &self.owned())
            .finish_non_exhaustive()
    }
}

impl PartitionOwnership {
    /// Joins the group and starts serving its rebalances on a dedicated thread.
    pub fn start(
        settings: &KafkaSettings,
    ) -> Result<(Self, mpsc::UnboundedReceiver<OwnershipChange>), LogError> {
        let topic = settings.topics().customer_events();
        let (tx, rx) = mpsc::unbounded_channel();
        let owned = Arc::new(Mutex::new(BTreeSet::new()));
        let context = OwnershipContext {
            topic: topic.clone(),
            owned: owned.clone(),
            changes: tx,
        };
        let mut config = settings.group_consumer_config(&settings.command_group_id());
        // Should a fetch slip in before the pause, start at the end: nothing to read.
        config.set("auto.offset.reset", "latest");
        let consumer: BaseConsumer<OwnershipContext> = config.create_with_context(context)?;
        consumer.subscribe(&[topic.as_str()])?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("partition-ownership".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                            tracing::warn!(error = %e, "ownership consumer");
                        }
                    }
                    // Dropping the consumer leaves the group; the revocation is reported.
                    drop(consumer);
                })
                .map_err(|e| LogError::Task(e.to_string()))?
        };
        Ok((
            PartitionOwnership {
                owned,
                settle_time: Duration::from_millis(2 * u64::from(settings.session_timeout_ms)),
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// The partitions owned now, in order.
    pub fn owned(&self) -> Vec<i32> {
        self.view().owned()
    }

    /// A handle that answers what the group assigns to this instance, for as long as the
    /// membership lasts.
    pub fn view(&self) -> OwnershipView {
        OwnershipView {
            owned: self.owned.clone(),
            settle_time: self.settle_time,
        }
    }

    /// Leaves the group and waits until it has: the partitions can move to other members
    /// right away instead of after the session timeout.
    pub async fn shutdown(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// What the group assigns to this instance now (see [`PartitionOwnership::view`]).
#[derive(Debug, Clone)]
pub struct OwnershipView {
    owned: Arc<Mutex<BTreeSet<i32>>>,
    settle_time: Duration,
}

impl OwnershipView {
    /// The partitions assigned now, in order.
    pub fn owned(&self) -> Vec<i32> {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// How long the group may take to tell this member that partitions moved away from it
    /// (after it was unreachable, say): two session timeouts.
    pub fn settle_time(&self) -> Duration {
        self.settle_time
    }

    /// True when the group assigns this partition to this instance now.
    pub fn assigns(&self, partition: i32) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&partition)
    }
}

impl Drop for PartitionOwnership {
    fn drop(&mut self) {
        // The thread leaves the group on its own; do not block the caller (maybe async).
        self.stop.store(true, Ordering::Release);
    }
}
