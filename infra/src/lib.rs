//! Adapters for the event log and the read-model store.
