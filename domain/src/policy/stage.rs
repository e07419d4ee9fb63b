//! How long an opportunity may stay in a stage before it counts as stuck (阶段滞留时间过长的报警).

use chrono::{DateTime, TimeDelta, Utc};

use crate::values::Stage;

/// Per-stage limits, in whole days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageThresholds {
    pub qualification_days: u32,
    pub proposal_days: u32,
    pub evaluation_days: u32,
    pub negotiation_days: u32,
}

impl Default for StageThresholds {
    fn default() -> Self {
        StageThresholds {
            qualification_days: 14,
            proposal_days: 21,
            evaluation_days: 21,
            negotiation_days: 30,
        }
    }
}

impl StageThresholds {
    pub fn days(&self, stage: Stage) -> u32 {
        match stage {
            Stage::Qualification => self.qualification_days,
            Stage::Proposal => self.proposal_days,
            Stage::Evaluation => self.evaluation_days,
            Stage::Negotiation => self.negotiation_days,
        }
    }

    pub fn threshold(&self, stage: Stage) -> TimeDelta {
        TimeDelta::days(i64::from(self.days(stage)))
    }

    /// When an opportunity that entered `stage` at `since` becomes stuck.
    pub fn due_at(&self, stage: Stage, since: DateTime<Utc>) -> DateTime<Utc> {
        since + self.threshold(stage)
    }

    /// Stuck: in the stage for longer than its threshold.
    pub fn is_stuck(&self, stage: Stage, since: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now > self.due_at(stage, since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, day, 0, 0, 0)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn defaults_are_the_issue_s() {
        let t = StageThresholds::default();
        assert_eq!(Stage::ALL.map(|s| t.days(s)), [14, 21, 21, 30]);
    }

    #[test]
    fn stuck_only_after_the_threshold_has_passed() {
        let t = StageThresholds::default();
        assert!(!t.is_stuck(Stage::Qualification, at(1), at(15)));
        assert!(t.is_stuck(Stage::Qualification, at(1), at(15) + TimeDelta::seconds(1)));
        assert!(!t.is_stuck(Stage::Negotiation, at(1), at(30)));
    }

    #[test]
    fn thresholds_are_configurable() {
        let t = StageThresholds {
            proposal_days: 2,
            ..StageThresholds::default()
        };
        assert!(t.is_stuck(Stage::Proposal, at(1), at(4)));
        assert!(!t.is_stuck(Stage::Evaluation, at(1), at(4)));
    }
}
