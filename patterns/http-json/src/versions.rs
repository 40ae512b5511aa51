//! The wire representations of an order, one module per API version.
//!
//! v1 shipped money as integer cents with no currency. v2 fixes that with a money object and renames
//! `lines` to `items`: a breaking change, so it gets a new path prefix and v1 keeps being served, from
//! the same stored orders, for the clients that have not moved. Both versions accept the same request
//! body ([`crate::orders::NewOrder`]); only what they answer differs.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::orders::Order;

/// The currency of every price in the shop. v1 left it implicit; v2 says it.
pub const CURRENCY: &str = "EUR";

/// Version 1, served under `/v1`: money as integer cents, currency implied.
pub mod v1 {
    use super::*;
    use crate::orders::{OrderLine, OrderStatus};

    // ANCHOR: v1
    /// An order as `/v1` answers it.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
    pub struct OrderV1 {
        /// The order's id.
        #[schema(value_type = String, format = "uuid")]
        pub id: Uuid,
        /// Who ordered.
        pub customer_id: String,
        /// What was ordered.
        pub lines: Vec<OrderLine>,
        /// In cents of the shop's one currency, which v1 never names.
        pub total_cents: u64,
        /// Where the order is in its life.
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

/// Version 2, served under `/v2`: money with its currency, `items`, a `customer`.
pub mod v2 {
    use super::*;
    use crate::orders::OrderStatus;

    // ANCHOR: v2
    /// An order as `/v2` answers it.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
    pub struct OrderV2 {
        /// The order's id, as in v1.
        #[schema(value_type = String, format = "uuid")]
        pub id: Uuid,
        /// An object, so customer details can grow without another version.
        pub customer: Customer,
        /// What was ordered (v1's `lines`).
        pub items: Vec<Item>,
        /// The order's total, with its currency.
        pub total: Money,
        /// Where the order is in its life.
        pub status: OrderStatus,
    }

    /// Who ordered.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
    pub struct Customer {
        /// The customer's id.
        pub id: String,
    }

    /// One line of the order.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
    pub struct Item {
        /// The product's stock-keeping unit.
        pub sku: String,
        /// How many.
        pub quantity: u32,
        /// The price of one, with its currency.
        pub unit_price: Money,
    }

    /// A decimal string and an ISO 4217 code: exact, and clear about the currency.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
    pub struct Money {
        /// Decimal, as a string: no float ever holds money (`"28.99"`).
        pub amount: String,
        /// ISO 4217 (`EUR`).
        pub currency: String,
    }
    // ANCHOR_END: v2

    impl Money {
        /// Renders integer cents as v2's money, in the shop's currency.
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
