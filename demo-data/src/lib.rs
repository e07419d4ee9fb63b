//! What `crm demo` (crm/src/demo.rs) and crm-bench's data set (bench/src/gen.rs) are made
//! of: a small deterministic random number generator, the tables the customers, contacts,
//! orders and opportunities are drawn from, and the touchpoint mix. The same seed gives the
//! same draws.

use serde_json::{json, Value};
use uuid::Uuid;

/// SplitMix64: small, fast, deterministic.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items`; `None` when there are none (one draw either way).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        let n = items.len() as u64;
        items.get(self.below(n) as usize).copied()
    }

    /// A UUID made of two draws (v4-shaped, deterministic).
    pub fn uuid(&mut self) -> Uuid {
        let bytes = ((self.next_u64() as u128) << 64 | self.next_u64() as u128).to_be_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// Cities and their sales regions.
pub const CITIES: &[(&str, &str)] = &[
    ("上海", "华东"),
    ("杭州", "华东"),
    ("南京", "华东"),
    ("北京", "华北"),
    ("天津", "华北"),
    ("广州", "华南"),
    ("深圳", "华南"),
    ("成都", "西南"),
    ("武汉", "华中"),
    ("西安", "西北"),
];

/// Trades, as a company name says them, and the industry they are registered under.
pub const TRADES: &[(&str, &str)] = &[
    ("贸易", "wholesale"),
    ("科技", "software"),
    ("精密机械", "machinery"),
    ("食品", "food"),
    ("物流", "logistics"),
    ("医药", "pharma"),
    ("建材", "construction"),
];

/// Trade names: a company is `<city><name><trade>有限公司`.
pub const NAMES: &[&str] = &[
    "恒远", "明光", "远景", "华信", "新天", "金桥", "瑞丰", "东方", "长城", "嘉禾", "宏达", "博远",
];

/// Contacts' names.
pub const PEOPLE: &[&str] = &[
    "王芳", "李伟", "张敏", "刘洋", "陈静", "杨帆", "赵磊", "黄丽", "周强", "吴婷",
];

/// Contacts' positions.
pub const POSITIONS: &[&str] = &["采购经理", "总经理", "财务主管", "行政"];

/// The account managers who own the customers.
pub const OWNERS: &[&str] = &["am-li", "am-zhao", "am-chen", "am-wang", "am-liu"];

/// Customer levels, weighted: most customers are ordinary.
pub const LEVELS: &[&str] = &[
    "ordinary",
    "ordinary",
    "ordinary",
    "large",
    "key",
    "cooperation_partner",
    "strategic_partner",
];

/// Products and their unit prices in fen.
pub const PRODUCTS: &[(&str, i64)] = &[
    ("激光打印机", 320_000),
    ("复印机", 1_250_000),
    ("碎纸机", 85_000),
    ("投影仪", 460_000),
    ("硒鼓", 42_000),
];

/// Where opportunities come from.
pub const OPPORTUNITY_SOURCES: &[&str] = &["referral", "campaign", "inbound_call", "trade_show"];

/// Why opportunities are lost.
pub const LOST_REASONS: &[&str] = &["价格过高", "选择了竞争对手", "预算取消"];

/// The kinds of service requests.
pub const SERVICE_KINDS: &[&str] = &["consultation", "complaint", "suggestion"];

/// Complaint categories and sub-categories.
pub const COMPLAINT_CATEGORIES: &[(&str, &str)] = &[
    ("product", "quality"),
    ("product", "price"),
    ("staff", "attitude"),
    ("service", "fees"),
];

/// Why churned customers left.
pub const CHURN_REASONS: &[&str] = &["转向竞争对手", "公司倒闭", "需求消失"];

/// A touchpoint on a random channel (phone call, e-mail, visit in `city`, WeChat, web form or
/// fax), with `contact` when given: the `touchpoint` of a record-touchpoint command.
pub fn touchpoint(rng: &mut Rng, city: &str, contact: Option<Uuid>) -> Value {
    let dir = |rng: &mut Rng| rng.pick(&["inbound", "outbound"]).unwrap_or("inbound");
    let channel = match rng.below(6) {
        0 => {
            json!({"kind": "phone_call", "direction": dir(rng), "duration_seconds": 30 + rng.below(900),
                    "wait_seconds": rng.below(120),
                    "outcome": rng.pick(&["answered", "answered", "answered", "no_answer", "voicemail"]).unwrap_or("answered")})
        }
        1 => json!({"kind": "email", "direction": dir(rng),
                    "subject": rng.pick(&["报价", "合同", "发票", "售后"]).unwrap_or("报价")}),
        2 => json!({"kind": "visit", "place": format!("{city}客户办公室")}),
        3 => json!({"kind": "wechat", "direction": dir(rng)}),
        4 => json!({"kind": "web_form", "form": "contact-us"}),
        _ => json!({"kind": "fax_letter", "direction": "inbound"}),
    };
    let summary = rng
        .pick(&["询价", "跟进", "投诉回访", "产品咨询", "节日问候"])
        .unwrap_or("跟进");
    match contact {
        Some(c) => json!({"channel": channel, "summary": summary, "contact_id": c}),
        None => json!({"channel": channel, "summary": summary}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_draws() {
        let (mut a, mut b) = (Rng(42), Rng(42));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_eq!(a.uuid(), b.uuid());
        assert_eq!(
            touchpoint(&mut a, "上海", None),
            touchpoint(&mut b, "上海", None)
        );
    }

    #[test]
    fn picks_and_bounds() {
        let mut rng = Rng(7);
        assert_eq!(rng.pick::<u8>(&[]), None);
        assert_eq!(rng.below(0), 0);
        for _ in 0..1000 {
            assert!(rng.below(6) < 6);
            assert!(rng.pick(CITIES).is_some());
        }
        assert!(!rng.chance(0));
        assert!(rng.chance(100));
    }
}
