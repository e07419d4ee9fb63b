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

#[cfg(test)]
mod tests {
    use crate::customer::fixtures::*;
    use crate::scenario::Scenario;
    use crate::*;

    fn order(number: &str, lines: Vec<OrderLine>, total: i64) -> Command {
        Command::PlaceOrder(PlaceOrder {
            order_number: OrderNumber(number.into()),
            lines,
            total: cny(total),
            delivery_address: None,
        })
    }

    fn line(quantity: u32, unit_price: i64) -> OrderLine {
        OrderLine {
            product: "打印机".into(),
            quantity,
            unit_price,
        }
    }

    #[test]
    fn an_order_total_equals_its_lines() {
        let mut s = Scenario::registered();
        s.accept(order(
            "SO-1",
            vec![line(2, 150_000), line(1, 20_000)],
            320_000,
        ));
        let e = s.refuse(order("SO-2", vec![line(2, 150_000)], 1));
        assert_eq!(invalid_field(&e), "total.amount");
        s.accept(order("SO-3", vec![], 5_000)); // a total without lines, as some ERPs send
    }

    #[test]
    fn order_lines_are_validated() {
        let mut s = Scenario::registered();
        assert_eq!(
            invalid_field(&s.refuse(order("SO-1", vec![line(0, 1)], 0))),
            "lines[0].quantity"
        );
        assert_eq!(
            invalid_field(&s.refuse(order("SO-1", vec![line(1, 1), line(1, -1)], 0))),
            "lines[1].unit_price"
        );
        assert_eq!(
            invalid_field(&s.refuse(order("SO-1", vec![], -1))),
            "total.amount"
        );
        // past the largest amount
        assert_eq!(
            invalid_field(&s.refuse(order("SO-1", vec![line(u32::MAX, i64::MAX)], 0))),
            "lines[0].unit_price"
        );
        // each within it, their product overflows
        assert_eq!(
            invalid_field(&s.refuse(order(
                "SO-1",
                vec![line(u32::MAX, crate::limits::MAX_AMOUNT)],
                0
            ))),
            "lines[0]"
        );
    }

    #[test]
    fn an_order_number_is_placed_once() {
        let mut s = Scenario::registered();
        s.accept(order("SO-1", vec![], 100));
        let e = s.refuse(order("SO-1", vec![], 100));
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(e.field(), Some("order_number"));
    }
}
