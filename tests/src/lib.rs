//! Shared test bed: starts the broker, makes fresh databases.
