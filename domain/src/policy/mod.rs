//! Policies: the business rules that are not about one command, as pure functions.

pub mod churn;
pub mod rfm;
pub mod stage;

pub use churn::ChurnRule;
pub use rfm::{score_rfm, RfmInput, RfmScore, Segment};
pub use stage::StageThresholds;

/// Service feedback from this satisfaction up lets a request be archived; below it the
/// request goes back to handling (seed 001).
pub const SATISFIED_FROM: u8 = 3;
