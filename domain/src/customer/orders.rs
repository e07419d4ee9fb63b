//! Orders (订单), placed once under their number.

use super::{one, Decision};
use crate::command::PlaceOrder;
use crate::error::DomainError;
use crate::event::OrderPlaced;
use crate::rules::{exists, non_empty, validate_money};
use crate::state::CustomerState;
use crate::values::OrderLine;

/// An order under a number not used yet, whose total equals its lines (when it has any).
pub(super) fn place_order(state: &CustomerState, c: &PlaceOrder) -> Decision {
    non_empty(&c.order_number.0, "order_number")?;
    if state.orders.contains(&c.order_number) {
        return Err(exists("order", "order_number", &c.order_number));
    }
    validate_money(&c.total, "total")?;
    validate_order_lines(&c.lines, c.total.amount)?;
    one(OrderPlaced {
        customer_id: state.customer_id,
        order_number: c.order_number.clone(),
        lines: c.lines.clone(),
        total: c.total.clone(),
        delivery_address: c.delivery_address.clone(),
    })
}

fn validate_order_lines(lines: &[OrderLine], total: i64) -> Result<(), DomainError> {
    let mut sum: i64 = 0;
    for (i, line) in lines.iter().enumerate() {
        non_empty(&line.product, &format!("lines[{i}].product"))?;
        if line.quantity == 0 {
            return Err(DomainError::invalid(
                format!("lines[{i}].quantity"),
                "must be at least 1",
            ));
        }
        if line.unit_price < 0 {
            return Err(DomainError::invalid(
                format!("lines[{i}].unit_price"),
                "must not be negative",
            ));
        }
        let amount = line
            .unit_price
            .checked_mul(i64::from(line.quantity))
            .and_then(|a| sum.checked_add(a));
        sum = amount
            .ok_or_else(|| DomainError::invalid(format!("lines[{i}]"), "amount overflows"))?;
    }
    if !lines.is_empty() && sum != total {
        return Err(DomainError::invalid(
            "total.amount",
            format!("must equal the sum of the lines ({sum}), got {total}"),
        ));
    }
    Ok(())
}
