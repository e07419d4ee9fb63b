//! The churn rule (客户流失预警): a customer with no order for a while is about to be lost.

use chrono::{DateTime, TimeDelta, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChurnRule {
    /// Days without an order after which a warning is due; the classic rule is six months.
    pub inactivity_days: u32,
}

impl Default for ChurnRule {
    fn default() -> Self {
        ChurnRule {
            inactivity_days: 180,
        }
    }
}

impl ChurnRule {
    /// Whether a customer matches the rule at `now`. `last_order_at` is the business time of
    /// the last order; a customer that never ordered is measured from when it became a
    /// customer (`customer_since`).
    pub fn matches(
        &self,
        last_order_at: Option<DateTime<Utc>>,
        customer_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        let since = last_order_at.unwrap_or(customer_since);
        now - since > TimeDelta::days(i64::from(self.inactivity_days))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(n: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_default()
            + TimeDelta::days(n)
    }

    #[test]
    fn no_order_for_180_days_matches() {
        let rule = ChurnRule::default();
        assert!(!rule.matches(Some(day(0)), day(-400), day(180)));
        assert!(rule.matches(Some(day(0)), day(-400), day(181)));
    }

    #[test]
    fn a_customer_that_never_ordered_is_measured_from_registration() {
        let rule = ChurnRule::default();
        assert!(!rule.matches(None, day(0), day(100)));
        assert!(rule.matches(None, day(0), day(200)));
    }

    #[test]
    fn the_period_is_configurable() {
        let rule = ChurnRule {
            inactivity_days: 30,
        };
        assert!(rule.matches(Some(day(0)), day(0), day(31)));
    }
}
