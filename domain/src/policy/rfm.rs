//! RFM: recency (最近一次消费), frequency (消费频率) and monetary value (消费金额), defined once.
//!
//! Over the customers with at least one order in the window (default 365 days up to the as-of
//! time): R = whole days since the last order, F = number of orders, M = sum of order amounts.
//! For F and M, score = 1 + floor(5 × (customers with a strictly smaller value) / n), capped at
//! 5; for R the same with the order reversed (customers with strictly more days). Equal values
//! get equal scores. The segment follows from (R, F).

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};

use crate::ids::CustomerId;

/// The window of orders that count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RfmWindow {
    pub days: u32,
}

impl Default for RfmWindow {
    fn default() -> Self {
        RfmWindow { days: 365 }
    }
}

impl RfmWindow {
    /// Whether an order at `at` counts for an evaluation at `as_of`: within the last `days`
    /// days, and not after `as_of`.
    pub fn contains(&self, at: DateTime<Utc>, as_of: DateTime<Utc>) -> bool {
        at <= as_of && as_of - at < TimeDelta::days(i64::from(self.days))
    }
}

/// One customer's raw values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RfmInput {
    pub customer_id: CustomerId,
    /// Whole days since the last order in the window.
    pub recency_days: i64,
    /// Orders in the window.
    pub frequency: i64,
    /// Sum of order amounts in the window, minor units of the reporting currency.
    pub monetary: i64,
}

/// One customer's scores and segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RfmScore {
    pub input: RfmInput,
    pub r: u8,
    pub f: u8,
    pub m: u8,
    pub segment: Segment,
}

/// The segments of the (R, F) grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    Champions,
    Loyal,
    PotentialLoyalists,
    New,
    Promising,
    NeedAttention,
    AboutToSleep,
    AtRisk,
    CantLoseThem,
    Hibernating,
    /// No order in the window: no scores.
    NoPurchases,
}

impl Segment {
    pub const ALL: [Segment; 11] = [
        Segment::Champions,
        Segment::Loyal,
        Segment::PotentialLoyalists,
        Segment::New,
        Segment::Promising,
        Segment::NeedAttention,
        Segment::AboutToSleep,
        Segment::AtRisk,
        Segment::CantLoseThem,
        Segment::Hibernating,
        Segment::NoPurchases,
    ];

    /// The segment from recency and frequency scores (each 1–5).
    pub fn from_scores(r: u8, f: u8) -> Segment {
        match (r, f) {
            (5, 4..=5) => Segment::Champions,
            (3..=4, 4..=5) => Segment::Loyal,
            (4..=5, 2..=3) => Segment::PotentialLoyalists,
            (5, 1) => Segment::New,
            (4, 1) => Segment::Promising,
            (3, 3) => Segment::NeedAttention,
            (3, 1..=2) => Segment::AboutToSleep,
            (1..=2, 3..=4) => Segment::AtRisk,
            (1..=2, 5) => Segment::CantLoseThem,
            _ => Segment::Hibernating,
        }
    }

    /// The segment's name in read models and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Segment::Champions => "champions",
            Segment::Loyal => "loyal",
            Segment::PotentialLoyalists => "potential_loyalists",
            Segment::New => "new",
            Segment::Promising => "promising",
            Segment::NeedAttention => "need_attention",
            Segment::AboutToSleep => "about_to_sleep",
            Segment::AtRisk => "at_risk",
            Segment::CantLoseThem => "cant_lose_them",
            Segment::Hibernating => "hibernating",
            Segment::NoPurchases => "no_purchases",
        }
    }

    pub fn parse(name: &str) -> Option<Segment> {
        Segment::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Builds the inputs from orders `(customer, business time, amount)`: only orders inside the
/// window count; customers without one are left out (their segment is `NoPurchases`).
pub fn rfm_inputs(
    orders: impl IntoIterator<Item = (CustomerId, DateTime<Utc>, i64)>,
    as_of: DateTime<Utc>,
    window: RfmWindow,
) -> Vec<RfmInput> {
    let mut per_customer: HashMap<CustomerId, (DateTime<Utc>, i64, i64)> = HashMap::new();
    for (customer_id, at, amount) in orders {
        if !window.contains(at, as_of) {
            continue;
        }
        let entry = per_customer.entry(customer_id).or_insert((at, 0, 0));
        entry.0 = entry.0.max(at);
        entry.1 += 1;
        entry.2 += amount;
    }
    let mut inputs: Vec<RfmInput> = per_customer
        .into_iter()
        .map(|(customer_id, (last, frequency, monetary))| RfmInput {
            customer_id,
            recency_days: (as_of - last).num_days(),
            frequency,
            monetary,
        })
        .collect();
    inputs.sort_by_key(|i| i.customer_id);
    inputs
}

/// Scores every customer against the others. O(n log n).
pub fn score_rfm(inputs: &[RfmInput]) -> Vec<RfmScore> {
    let n = inputs.len();
    let sorted = |f: fn(&RfmInput) -> i64| {
        let mut v: Vec<i64> = inputs.iter().map(f).collect();
        v.sort_unstable();
        v
    };
    let recency = sorted(|i| i.recency_days);
    let frequency = sorted(|i| i.frequency);
    let monetary = sorted(|i| i.monetary);

    inputs
        .iter()
        .map(|input| {
            let more_days = n - recency.partition_point(|&d| d <= input.recency_days);
            let r = score(more_days, n);
            let f = score(frequency.partition_point(|&v| v < input.frequency), n);
            let m = score(monetary.partition_point(|&v| v < input.monetary), n);
            RfmScore {
                input: input.clone(),
                r,
                f,
                m,
                segment: Segment::from_scores(r, f),
            }
        })
        .collect()
}

/// 1 + floor(5 × below / n), capped at 5.
fn score(below: usize, n: usize) -> u8 {
    if n == 0 {
        return 1;
    }
    let s = 1 + (5 * below) / n;
    s.min(5) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn input(n: u128, r: i64, f: i64, m: i64) -> RfmInput {
        RfmInput {
            customer_id: CustomerId(Uuid::from_u128(n)),
            recency_days: r,
            frequency: f,
            monetary: m,
        }
    }

    #[test]
    fn scores_follow_the_definition() {
        // five customers, distinct values: scores 1..5 in order
        let inputs: Vec<_> = (0..5)
            .map(|i| input(i, 50 - 10 * i as i64, 1 + i as i64, 100 * (1 + i as i64)))
            .collect();
        let scores = score_rfm(&inputs);
        assert_eq!(
            scores.iter().map(|s| s.r).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(
            scores.iter().map(|s| s.f).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(
            scores.iter().map(|s| s.m).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(scores[4].segment, Segment::Champions);
        assert_eq!(scores[0].segment, Segment::Hibernating);
    }

    #[test]
    fn equal_values_get_equal_scores() {
        let inputs = vec![
            input(1, 10, 2, 500),
            input(2, 10, 2, 500),
            input(3, 400, 1, 10),
        ];
        let scores = score_rfm(&inputs);
        assert_eq!(
            (scores[0].r, scores[0].f, scores[0].m),
            (scores[1].r, scores[1].f, scores[1].m)
        );
        // two of three have fewer days than 400 ... customer 3 has none with more days
        assert_eq!(scores[2].r, 1);
        // customers 1, 2: one customer (3) has strictly more days: 1 + floor(5/3) = 2
        assert_eq!(scores[0].r, 2);
        assert_eq!(scores[0].f, 2);
        assert_eq!(scores[2].f, 1);
    }

    #[test]
    fn a_single_customer_scores_one() {
        let s = score_rfm(&[input(1, 3, 4, 5)]);
        assert_eq!((s[0].r, s[0].f, s[0].m), (1, 1, 1));
    }

    #[test]
    fn segments_cover_the_grid_as_specified() {
        use Segment::*;
        let expected = [
            // f = 1..5 for r = 1
            [Hibernating, Hibernating, AtRisk, AtRisk, CantLoseThem],
            [Hibernating, Hibernating, AtRisk, AtRisk, CantLoseThem],
            [AboutToSleep, AboutToSleep, NeedAttention, Loyal, Loyal],
            [
                Promising,
                PotentialLoyalists,
                PotentialLoyalists,
                Loyal,
                Loyal,
            ],
            [
                New,
                PotentialLoyalists,
                PotentialLoyalists,
                Champions,
                Champions,
            ],
        ];
        for r in 1..=5u8 {
            for f in 1..=5u8 {
                assert_eq!(
                    Segment::from_scores(r, f),
                    expected[r as usize - 1][f as usize - 1],
                    "r{r} f{f}"
                );
            }
        }
    }

    #[test]
    fn segment_names_round_trip() {
        for s in Segment::ALL {
            assert_eq!(Segment::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn inputs_count_only_orders_inside_the_window() {
        let as_of = DateTime::parse_from_rfc3339("2026-06-30T12:00:00Z")
            .map(|d| d.to_utc())
            .unwrap_or_default();
        let c = CustomerId(Uuid::from_u128(7));
        let d = CustomerId(Uuid::from_u128(8));
        let orders = vec![
            (c, as_of - TimeDelta::days(3) - TimeDelta::hours(5), 1000),
            (c, as_of - TimeDelta::days(100), 500),
            (c, as_of - TimeDelta::days(365), 999_999), // just outside
            (c, as_of + TimeDelta::days(1), 777),       // after as-of
            (d, as_of - TimeDelta::days(400), 50),      // only outside: no scores
        ];
        let inputs = rfm_inputs(orders, as_of, RfmWindow::default());
        assert_eq!(
            inputs,
            vec![RfmInput {
                customer_id: c,
                recency_days: 3,
                frequency: 2,
                monetary: 1500
            }]
        );
    }
}
