//! The payments service: takes the order's amount from the customer's balance once stock is
//! reserved, declines when the balance is short, and refunds when a later step fails.
//!
//! In a choreography, payments needs two facts from two services: the amount and customer (from
//! `OrderPlaced`, on the orders topic) and the go-ahead (`StockReserved`, on the inventory topic).
//! Kafka keeps order within a partition of one topic, never across topics, so either can arrive
//! first; the [`Payment`] record remembers whichever came first and charges when both are known.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Event, Kind, Reaction, Service, euros};

/// Who pays how much for an order (from `OrderPlaced`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Due {
    /// Whose balance is charged, and refunded if a later step fails.
    pub customer_id: String,
    /// Cents to charge.
    pub amount_cents: u64,
}

/// Where one order's payment stands; only `Pending` moves money.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentStatus {
    /// Waiting for the amount or for the stock.
    Pending,
    /// The amount was taken from the customer's balance.
    Authorized {
        /// Cents taken, which a refund gives back.
        amount_cents: u64,
    },
    /// The balance was short; nothing was taken.
    Declined {
        /// Why, with the amounts, in words for the customer.
        reason: String,
    },
    /// Compensation done: the amount went back to the customer.
    Refunded {
        /// Cents given back.
        amount_cents: u64,
        /// The failure that caused the refund.
        reason: String,
    },
    /// Called off before any money moved; a late authorisation is refused.
    Voided {
        /// Why it was called off.
        reason: String,
    },
}

impl PaymentStatus {
    /// The status without its data, lower case (`"authorized"`), as stored and logged.
    pub fn name(&self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Authorized { .. } => "authorized",
            PaymentStatus::Declined { .. } => "declined",
            PaymentStatus::Refunded { .. } => "refunded",
            PaymentStatus::Voided { .. } => "voided",
        }
    }
}

/// What payments knows about one order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Who owes how much, once `OrderPlaced` has been heard.
    pub due: Option<Due>,
    /// Whether `StockReserved` has been heard: no charge before it.
    pub stock_reserved: bool,
    /// Where the payment stands.
    pub status: PaymentStatus,
}

impl Payment {
    fn new() -> Self {
        Payment { due: None, stock_reserved: false, status: PaymentStatus::Pending }
    }
}

/// Balances per customer (what they may spend), and a payment record per order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Payments {
    /// Cents each customer may still spend, by customer id.
    pub balances: BTreeMap<String, u64>,
    /// One payment record per order, by order id.
    pub payments: BTreeMap<String, Payment>,
}

impl Payments {
    /// Takes `amount_cents` from the customer's balance, or declines. Only a
    /// pending payment moves money: a second request, or one after a refund or
    /// a void, emits nothing.
    pub fn authorize(
        &mut self,
        order_id: &str,
        customer_id: &str,
        amount_cents: u64,
    ) -> Vec<Event> {
        let payment =
            self.payments.entry(order_id.to_owned()).or_insert_with(Payment::new);
        if payment.status != PaymentStatus::Pending {
            return vec![];
        }
        // An orchestrator calls this directly: remember whom a refund would pay.
        payment.due.get_or_insert_with(|| Due {
            customer_id: customer_id.to_owned(),
            amount_cents,
        });
        let order_id = order_id.to_owned();
        let balance = self.balances.entry(customer_id.to_owned()).or_default();
        if *balance < amount_cents {
            let (want, have) = (euros(amount_cents), euros(*balance));
            let reason =
                format!("insufficient funds: {want} wanted, {have} available");
            payment.status = PaymentStatus::Declined { reason: reason.clone() };
            return vec![Event::PaymentDeclined { order_id, reason }];
        }
        *balance -= amount_cents;
        payment.status = PaymentStatus::Authorized { amount_cents };
        vec![Event::PaymentAuthorized { order_id, amount_cents }]
    }

    /// Compensation: gives an authorised amount back. Safe to repeat; before
    /// any charge it voids the payment, so that a late authorisation is refused.
    pub fn refund(&mut self, order_id: &str, reason: &str) -> Vec<Event> {
        let payment =
            self.payments.entry(order_id.to_owned()).or_insert_with(Payment::new);
        let reason = reason.to_owned();
        match payment.status {
            PaymentStatus::Authorized { amount_cents } => {
                if let Some(due) = &payment.due {
                    *self.balances.entry(due.customer_id.clone()).or_default() +=
                        amount_cents;
                }
                payment.status =
                    PaymentStatus::Refunded { amount_cents, reason: reason.clone() };
                let order_id = order_id.to_owned();
                vec![Event::PaymentRefunded { order_id, amount_cents, reason }]
            }
            PaymentStatus::Pending => {
                payment.status = PaymentStatus::Voided { reason };
                vec![]
            }
            _ => vec![],
        }
    }

    /// Closes a payment that is still pending (nothing was charged), so that a
    /// late authorisation is refused. Any other payment is left as it is.
    pub fn void(&mut self, order_id: &str, reason: &str) -> Vec<Event> {
        let payment =
            self.payments.entry(order_id.to_owned()).or_insert_with(Payment::new);
        if payment.status == PaymentStatus::Pending {
            payment.status = PaymentStatus::Voided { reason: reason.to_owned() };
        }
        vec![]
    }

    /// Charges when both facts are in: who owes how much, and that stock is reserved.
    fn charge_if_ready(&mut self, order_id: &str) -> Vec<Event> {
        let ready = self
            .payments
            .get(order_id)
            .and_then(|p| p.due.clone().filter(|_| p.stock_reserved));
        match ready {
            Some(due) => {
                self.authorize(order_id, &due.customer_id, due.amount_cents)
            }
            None => vec![],
        }
    }

    /// The customer whose balance a transaction must load (and lock) to apply `event`.
    pub fn customer_touched(&self, event: &Event) -> Option<String> {
        match event {
            Event::OrderPlaced(placed) => Some(placed.customer_id.clone()),
            _ => self
                .payments
                .get(event.order_id())
                .and_then(|p| p.due.as_ref())
                .map(|due| due.customer_id.clone()),
        }
    }
}

// ANCHOR: payments_react
impl Reaction for Payments {
    const SERVICE: Service = Service::Payments;

    fn listens_to(kind: Kind) -> bool {
        matches!(
            kind,
            Kind::OrderPlaced
                | Kind::StockReserved
                | Kind::ShipmentFailed
                | Kind::OrderCancelled
        )
    }

    fn react(mut self, event: &Event) -> (Self, Vec<Event>) {
        let id = event.order_id().to_owned();
        let emitted = match event {
            Event::OrderPlaced(placed) => {
                let payment =
                    self.payments.entry(id.clone()).or_insert_with(Payment::new);
                payment.due = Some(Due {
                    customer_id: placed.customer_id.clone(),
                    amount_cents: placed.total_cents,
                });
                self.charge_if_ready(&id)
            }
            Event::StockReserved { .. } => {
                let payment =
                    self.payments.entry(id.clone()).or_insert_with(Payment::new);
                payment.stock_reserved = true;
                self.charge_if_ready(&id)
            }
            Event::ShipmentFailed { .. } => self.refund(&id, "cannot ship"),
            // Nothing will come for a cancelled order: close a pending payment.
            // (An authorised one is refunded by the failure that cancelled it.)
            Event::OrderCancelled { reason, .. } => self.void(&id, reason),
            _ => vec![],
        };
        (self, emitted)
    }
}
// ANCHOR_END: payments_react

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Line, OrderPlaced};

    fn placed(total_cents: u64) -> Event {
        Event::OrderPlaced(OrderPlaced {
            order_id: "o-1".into(),
            customer_id: "c-42".into(),
            lines: vec![Line { sku: "kettle".into(), quantity: 1 }],
            total_cents,
            ship_to: "NL".into(),
        })
    }

    fn with_balance(cents: u64) -> Payments {
        let mut payments = Payments::default();
        payments.balances.insert("c-42".into(), cents);
        payments
    }

    fn reserved() -> Event {
        Event::StockReserved { order_id: "o-1".into() }
    }

    #[test]
    fn charges_once_both_facts_are_in_whichever_came_first() {
        for first_placed in [true, false] {
            let (a, b) = if first_placed {
                (placed(2899), reserved())
            } else {
                (reserved(), placed(2899))
            };
            let (payments, emitted) = with_balance(5000).react(&a);
            assert!(emitted.is_empty(), "one fact is not enough");
            let (payments, emitted) = payments.react(&b);
            let authorized = Event::PaymentAuthorized {
                order_id: "o-1".into(),
                amount_cents: 2899,
            };
            assert_eq!(emitted, [authorized]);
            let (payments, again) = payments.react(&b);
            assert!(again.is_empty());
            assert_eq!(payments.balances["c-42"], 5000 - 2899, "charged once");
        }
    }

    #[test]
    fn declines_a_short_balance_and_says_by_how_much() {
        let (payments, _) = with_balance(2000).react(&placed(2899));
        let (payments, emitted) = payments.react(&reserved());
        let reason = "insufficient funds: 28.99 wanted, 20.00 available".to_owned();
        assert_eq!(
            emitted,
            [Event::PaymentDeclined { order_id: "o-1".into(), reason }]
        );
        assert_eq!(payments.balances["c-42"], 2000);
    }

    #[test]
    fn refunds_once_and_a_refund_before_the_charge_voids_it() {
        let (payments, _) = with_balance(5000).react(&placed(2899));
        let (mut payments, _) = payments.react(&reserved());
        assert_eq!(payments.refund("o-1", "cannot ship").len(), 1);
        assert!(payments.refund("o-1", "cannot ship").is_empty());
        assert_eq!(payments.balances["c-42"], 5000, "refunded once");

        let mut early = with_balance(5000);
        assert!(early.refund("o-1", "timed out").is_empty());
        assert!(early.authorize("o-1", "c-42", 2899).is_empty());
        assert_eq!(
            early.balances["c-42"], 5000,
            "a voided payment is never charged"
        );
    }
}
