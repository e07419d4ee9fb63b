//! The read models, one unit each. A unit owns its tables (in every projection version's
//! schema) and writes a whole batch of events into them, inside the batch's transaction; the
//! [`Projector`](crate::Projector) decodes a batch once, keeps the events new to the version,
//! and hands them to every unit of [`REGISTRY`] in turn, then moves the checkpoints in the
//! same transaction.
//!
//! A unit writes with a few statements per batch where it can: rows that only accumulate
//! (the audit trail, the timeline) go in with one binary `COPY` ([`copy_rows`]); counters and "latest" columns are folded per customer in memory first and written with one
//! statement. Units whose rows depend on the order of events inside a batch (a stage entered
//! then left) still write event by event; each such unit says so.
//!
//! Each read model has a checkpoint of its own per (topic, partition), moved in the batch's
//! transaction: a read model added to a running deployment starts from offset zero while the
//! others skip what they have, and one read model can be rebuilt alone ([`crate::rebuild`]).
//!
//! A unit says which events it reads ([`ReadModel::consumes`]): it is handed only those, and
//! not called for a batch without any.
//!
//! Adding a read model: write its unit in a file of its own here (its tables in a migration
//! of `read-store/migrations/read_model`), list it in [`REGISTRY`], and serve it from query-service.

mod audit_trail;
mod churn;
mod complaints;
mod contacts;
mod copy_rows;
mod customers;
mod orders;
mod pipeline;
mod rfm;
mod service_requests;
mod stage_alerts;
mod teams;
mod timeline;
mod touchpoint_stats;

use async_trait::async_trait;
use domain::{RecordedEvent, RecordedOrganisationEvent};
use infra::Position;
use sqlx::PgConnection;

use crate::alerts::Alert;
use crate::error::{ProjectionError, Result};
pub(crate) use crate::projector::EventRef;

/// One event of a batch that is new to the projection version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewEvent<'a> {
    pub position: &'a Position,
    pub event: EventRef<'a>,
}

/// The events of a batch that are new to the version, in the order of their partitions.
#[derive(Debug, Default)]
pub(crate) struct Batch<'a> {
    pub events: Vec<NewEvent<'a>>,
}

impl<'a> Batch<'a> {
    /// The customers' events, with their positions.
    pub fn customer_events(&self) -> impl Iterator<Item = (&'a Position, &'a RecordedEvent)> + '_ {
        self.events.iter().filter_map(|e| match e.event {
            EventRef::Customer(c) => Some((e.position, c)),
            EventRef::Organisation(_) => None,
        })
    }

    /// The organisation stream's events, with their positions.
    pub fn organisation_events(
        &self,
    ) -> impl Iterator<Item = (&'a Position, &'a RecordedOrganisationEvent)> + '_ {
        self.events.iter().filter_map(|e| match e.event {
            EventRef::Organisation(o) => Some((e.position, o)),
            EventRef::Customer(_) => None,
        })
    }
}

/// What a batch did besides its rows.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Orders were placed: RFM must be recomputed.
    pub orders_changed: bool,
    /// Alerts closed by stage changes, wins and losses (also in the outbox).
    pub alerts_closed: Vec<Alert>,
}

/// A read model: its tables, and how a batch of new events changes them.
#[async_trait]
pub(crate) trait ReadModel: Send + Sync {
    /// Its name, in the CRM's words.
    fn name(&self) -> &'static str;

    /// The tables it owns in a version's schema whose rows a rebuild from offset zero
    /// reproduces exactly (what rebuild-equality tests compare).
    fn tables(&self) -> &'static [&'static str];

    /// Tables it also owns whose rows are not reproduced row for row: reference data its
    /// migration seeds, and bookkeeping that depends on how the log was cut into batches.
    fn other_tables(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether it reads events of this type: it is handed only those (and not called for a
    /// batch without any).
    fn consumes(&self, event: EventRef<'_>) -> bool;

    /// Whether it can be rebuilt on its own from the log (`crm replay --read-model`), and if
    /// not, why: its rows must come from the events alone, not from other read models.
    fn rebuild_alone(&self) -> std::result::Result<(), &'static str> {
        Ok(())
    }

    /// Writes the batch into its tables, on the batch's transaction (whose `search_path` is
    /// the version's schema). On error the whole batch is rolled back.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        effects: &mut Effects,
    ) -> Result<()>;
}

/// Every read model, in the order a batch is applied to them (the customer row first: the
/// others may read it).
pub(crate) static REGISTRY: &[&dyn ReadModel] = &[
    &customers::Customers,
    &contacts::Contacts,
    &touchpoint_stats::TouchpointStats,
    &timeline::Timeline,
    &audit_trail::AuditTrail,
    &pipeline::Pipeline,
    &stage_alerts::StageAlerts,
    &orders::Orders,
    &rfm::Rfm,
    &complaints::Complaints,
    &service_requests::ServiceRequests,
    &churn::Churn,
    &teams::Teams,
];

/// The read model of this name.
pub(crate) fn find(name: &str) -> Option<&'static dyn ReadModel> {
    REGISTRY.iter().copied().find(|m| m.name() == name)
}

/// The tables of the read model of this name that a rebuild reproduces (none if unknown).
pub fn tables_of(name: &str) -> &'static [&'static str] {
    find(name).map(|m| m.tables()).unwrap_or(&[])
}

/// The names of every read model, in registry order.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|m| m.name()).collect()
}

/// The tables of every read model that a rebuild reproduces exactly, in registry order.
pub fn tables() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .flat_map(|m| m.tables().iter().copied())
        .collect()
}

/// Every table of every read model (those a rebuild reproduces and the others), in registry
/// order.
pub fn all_tables() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .flat_map(|m| m.tables().iter().chain(m.other_tables()).copied())
        .collect()
}

/// A sequence number as PostgreSQL stores it.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| ProjectionError::OutOfRange(format!("{what} {v}")))
}

#[cfg(test)]
mod tests {
    use super::all_tables;

    /// Every table the read-model migrations create belongs to exactly one unit, and every
    /// table a unit claims exists.
    #[test]
    fn every_read_model_table_has_one_owner() {
        // every read-model migration, as the migrator embeds them
        let sql = crate::version::READ_MODEL_MIGRATOR
            .iter()
            .map(|m| m.sql.as_ref())
            .collect::<Vec<&str>>()
            .join("\n");
        let mut created: Vec<&str> = sql
            .lines()
            .filter_map(|l| l.trim().strip_prefix("CREATE TABLE "))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        // less those a later migration drops
        let dropped: Vec<&str> = sql
            .lines()
            .filter_map(|l| l.trim().strip_prefix("DROP TABLE "))
            .filter_map(|rest| rest.split(|c: char| c == ';' || c.is_whitespace()).next())
            .collect();
        created.retain(|t| !dropped.contains(t));
        created.sort_unstable();
        let mut owned = all_tables();
        owned.sort_unstable();
        assert_eq!(owned, created);
    }
}
