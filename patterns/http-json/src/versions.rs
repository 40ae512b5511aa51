//! The wire representations of an order, one module per API version.
//!
//! v1 shipped money as integer cents with no currency. v2 fixes that with a money object and renames
//! `lines` to `items`: a breaking change, so it gets a new path prefix and v1 keeps being served, from
//! the same stored orders, for the clients that have not moved. Both versions accept the same request
//! body ([`crate::orders::NewOrder`]); only what they answer differs.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::orders::Order;

/// The currency of every price in the shop. v1 left it implicit; v2 says it.
pub const CURRENCY: &str = "EUR";

pub mod v1 {
    use super::*;
    use crate::orders::{OrderLine, OrderStatus};

    // ANCHOR: v1
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct OrderV1 {
        pub id: Uuid,
        pub customer_id: String,
        pub lines: Vec<OrderLine>,
        pub total_cents: u64,
        pub status: OrderStatus,
    }
    // ANCHOR_END: v1

    impl From<&Order> for OrderV1 {
        fn from(o: &Order) -> Self {
            OrderV1 {
                id: o.id,
                customer_id: o.customer_id.clone(),
                lines: o.lines.clone(),
                total_cents: o.total_cents,
                status: o.status,
            }
        }
    }
}

pub mod v2 {
    use super::*;
    use crate::orders::OrderStatus;

    // ANCHOR: v2
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct OrderV2 {
        pub id: Uuid,
        pub customer: Customer,
        pub items: Vec<Item>,
        pub total: Money,
        pub status: OrderStatus,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Customer {
        pub id: String,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Item {
        pub sku: String,
        pub quantity: u32,
        pub unit_price: Money,
    }

    /// A decimal string and an ISO 4217 code: exact, and clear about the currency.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Money {
        pub amount: String,
        pub currency: String,
    }
    // ANCHOR_END: v2

    impl Money {
        pub fn from_cents(cents: u64) -> Self {
            Money {
                amount: format!("{}.{:02}", cents / 100, cents % 100),
                currency: CURRENCY.to_owned(),
            }
        }
    }

    impl From<&Order> for OrderV2 {
        fn from(o: &Order) -> Self {
            OrderV2 {
                id: o.id,
                customer: Customer { id: o.customer_id.clone() },
                items: o
                    .lines
                    .iter()
                    .map(|l| Item {
                        sku: l.sku.clone(),
                        quantity: l.quantity,
                        unit_price: Money::from_cents(l.unit_price_cents),
                    })
                    .collect(),
                total: Money::from_cents(o.total_cents),
                status: o.status,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn money_keeps_every_cent() {
            assert_eq!(Money::from_cents(2548).amount, "25.48");
            assert_eq!(Money::from_cents(5).amount, "0.05");
            assert_eq!(Money::from_cents(100).amount, "1.00");
        }
    }
}
