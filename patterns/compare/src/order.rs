//! The one operation both protocols perform: place an order. Both services call
//! [`OrderDesk::place`] with the same generated message type, so the work behind the
//! wire is identical and only the encoding and the transport differ.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::{OrderLine, PlaceOrderRequest, PlacedOrder};

/// Why an order was refused. Both services map it to their protocol's "invalid
/// argument" answer: `422 Unprocessable Content` over HTTP, `INVALID_ARGUMENT` over
/// gRPC.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    /// Without a customer, nobody can be billed.
    #[error("customer_id is required")]
    NoCustomer,
    /// Prices are in the order's currency, so it must be a real one.
    #[error("currency must be a three-letter ISO 4217 code, got {0:?}")]
    Currency(String),
    /// An empty order is a mistake, not an order for nothing.
    #[error("an order needs at least one line")]
    NoLines,
    /// One line is wrong: which one (from 1), and why.
    #[error("line {line}: {reason}")]
    Line {
        /// The line's position, counted from 1 as a person would.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Refused rather than wrapped around: a total must be exact.
    #[error("the order's total does not fit in 64 bits of cents")]
    TotalTooLarge,
}

/// Places orders: validates them, totals them and numbers them.
#[derive(Debug, Default)]
pub struct OrderDesk {
    next_id: AtomicU64,
}

impl OrderDesk {
    // ANCHOR: place
    /// Validates the order, totals it and returns it with an id, its lines moved
    /// (not copied) into the answer.
    pub fn place(&self, order: PlaceOrderRequest) -> Result<PlacedOrder, Invalid> {
        if order.customer_id.is_empty() {
            return Err(Invalid::NoCustomer);
        }
        let currency_ok = order.currency.len() == 3
            && order.currency.bytes().all(|b| b.is_ascii_uppercase());
        if !currency_ok {
            return Err(Invalid::Currency(order.currency));
        }
        if order.lines.is_empty() {
            return Err(Invalid::NoLines);
        }
        let mut total: u64 = 0;
        for (line, item) in order.lines.iter().enumerate() {
            let refuse = |reason| Invalid::Line { line, reason };
            if item.sku.is_empty() {
                return Err(refuse("sku is required"));
            }
            if item.quantity == 0 {
                return Err(refuse("quantity must be at least 1"));
            }
            total = u64::from(item.quantity)
                .checked_mul(item.unit_price_cents)
                .and_then(|amount| total.checked_add(amount))
                .ok_or(Invalid::TotalTooLarge)?;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(PlacedOrder {
            order_id: format!("ord-{id:010}"),
            customer_id: order.customer_id,
            currency: order.currency,
            lines: order.lines,
            total_cents: total,
            status: "placed".to_owned(),
        })
    }
    // ANCHOR_END: place
}

/// What the shop sells: products, each in colours and sizes, so that an order of
/// hundreds of lines repeats words the way real ones do (the redundancy gzip feeds
/// on) without repeating whole lines.
const PRODUCTS: [(&str, &str, u64); 8] = [
    ("MUG", "Enamel mug", 1250),
    ("CUP", "Porcelain cup and saucer", 1690),
    ("POT", "Cast iron teapot", 4900),
    ("JAR", "Glass storage jar", 790),
    ("TRAY", "Oak serving tray", 3450),
    ("TOWEL", "Linen tea towel", 990),
    ("TIN", "Tea caddy", 1190),
    ("BOWL", "Stoneware bowl", 1390),
];
const COLOURS: [&str; 6] = ["white", "slate", "sage", "ochre", "navy", "rust"];
const SIZES: [(&str, u64); 4] = [("S", 0), ("M", 250), ("L", 600), ("XL", 1100)];

/// A realistic order of `lines` lines (a shop's basket for one line, a wholesale
/// order for hundreds); the same `lines` always gives the same order, byte for byte.
pub fn sample_order(lines: usize) -> PlaceOrderRequest {
    // A fixed-seed generator (xorshift): varied lines, identical on every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    PlaceOrderRequest {
        customer_id: "c-42".to_owned(),
        currency: "EUR".to_owned(),
        lines: (0..lines)
            .map(|i| {
                let (code, product, price) = PRODUCTS[next(PRODUCTS.len())];
                let colour = COLOURS[next(COLOURS.len())];
                let (size, surcharge) = SIZES[next(SIZES.len())];
                OrderLine {
                    sku: format!("{code}-{}-{size}-{:04}", &colour[..3], 1000 + i),
                    name: format!("{product}, {colour}, size {size}"),
                    quantity: next(12) as u32 + 1,
                    unit_price_cents: price + surcharge + next(100) as u64,
                }
            })
            .collect(),
    }
}

/// The total an order should be placed with: what a check of an answer compares
/// against.
pub fn expected_total(order: &PlaceOrderRequest) -> u64 {
    order.lines.iter().map(|l| u64::from(l.quantity) * l.unit_price_cents).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_a_valid_order_with_its_total_and_a_fresh_id() {
        let desk = OrderDesk::default();
        let order = sample_order(10);
        let total = expected_total(&order);
        let first = desk.place(order.clone()).unwrap();
        let second = desk.place(order.clone()).unwrap();
        assert_eq!(first.total_cents, total);
        assert_eq!(first.lines, order.lines);
        assert_eq!(first.status, "placed");
        assert_ne!(first.order_id, second.order_id);
    }

    #[test]
    fn refuses_what_cannot_be_placed() {
        let desk = OrderDesk::default();
        let with = |change: fn(&mut PlaceOrderRequest)| {
            let mut order = sample_order(2);
            change(&mut order);
            desk.place(order).unwrap_err()
        };
        assert_eq!(with(|o| o.customer_id.clear()), Invalid::NoCustomer);
        assert_eq!(
            with(|o| o.currency = "euro".into()),
            Invalid::Currency("euro".into())
        );
        assert_eq!(with(|o| o.lines.clear()), Invalid::NoLines);
        assert!(matches!(
            with(|o| o.lines[1].quantity = 0),
            Invalid::Line { line: 1, .. }
        ));
        assert_eq!(
            with(|o| o.lines[0].unit_price_cents = u64::MAX),
            Invalid::TotalTooLarge
        );
    }
}
