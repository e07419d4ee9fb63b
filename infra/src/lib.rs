//! Adapters for the event log and the read-model store. The services use these; the domain
//! knows nothing of them.
//!
//! The event log (`kafka`, `log`, `embedded` and `config::KafkaArgs`) comes with the `kafka`
//! feature, on by default; without it infra is the HTTP side only (auth, problems, headers,
//! config, the shutdown signal), which is all query-service needs.

pub mod auth;
pub mod config;
#[cfg(feature = "kafka")]
pub mod embedded;
pub mod headers;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kafka")]
pub mod log;
pub mod problem;
pub mod shutdown;

use serde::{Deserialize, Serialize};

/// The allocator of every binary and test of the platform (they all link infra): mimalloc.
/// glibc's malloc, its arena locks and `malloc_consolidate` were a quarter of command-service's
/// CPU on the ingest path (`docs/benchmarks.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where a record lives in the log: what queries wait for and projections checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The platform's topic names, all under one configurable prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub prefix: String,
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Self {
        Topics {
            prefix: prefix.into(),
        }
    }
    /// Every customer's stream, keyed by customer id.
    pub fn customer_events(&self) -> String {
        format!("{}customer-events", self.prefix)
    }
    /// CloudEvents published by channel adapters, validated by command-service.
    pub fn inbound(&self) -> String {
        format!("{}inbound-touchpoints", self.prefix)
    }
    /// Records that could not be accepted, with the reason in a header.
    pub fn dead_letter(&self) -> String {
        format!("{}dead-letter", self.prefix)
    }
    /// Stage-duration alerts opened and closed, for notifiers.
    pub fn alerts(&self) -> String {
        format!("{}alerts", self.prefix)
    }
    pub fn all(&self) -> Vec<String> {
        vec![
            self.customer_events(),
            self.inbound(),
            self.dead_letter(),
            self.alerts(),
        ]
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics::new("crm.")
    }
}
