//! projection-service
