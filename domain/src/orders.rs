//! The orders service: takes orders, and settles each one as confirmed or cancelled with a reason.
//!
//! It starts the checkout (a command from the customer, [`Orders::place`], not a reaction) and
//! ends it: confirmed when shipping scheduled the parcel, cancelled when any step failed. It does
//! not undo anything itself; each service that did something undoes its own part when it hears of
//! the failure. That is choreography: nobody holds the whole picture, so the order's status is
//! the one place where the outcome is written down.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Event, Kind, OrderPlaced, Reaction, Service};

/// Where an order stands. `Confirmed` and `Cancelled` are final: later events change nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Waiting to hear that shipping scheduled it, or that a step failed.
    Placed,
    /// Every step succeeded.
    Confirmed {
        /// The parcel's reference, from shipping.
        tracking: String,
    },
    /// Some step failed; the others undo their part on hearing of it.
    Cancelled {
        /// The first failure, in words for the customer.
        reason: String,
    },
}

impl OrderStatus {
    /// The status without its data, lower case (`"confirmed"`): the `status`
    /// column of the orders table and the word the logs print.
    pub fn name(&self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Confirmed { .. } => "confirmed",
            OrderStatus::Cancelled { .. } => "cancelled",
        }
    }

    /// Whether later events must be ignored: a settled order never changes again.
    pub fn is_final(&self) -> bool {
        !matches!(self, OrderStatus::Placed)
    }
}

/// One order as the orders service keeps it: what was placed and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order as placed, so that placing it again can be told from a conflict.
    pub placed: OrderPlaced,
    /// Where the order stands.
    pub status: OrderStatus,
}

/// Why an order cannot be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlaceError {
    /// An order with no lines, or a line of zero.
    Empty,
    /// The id is taken by a different order (the same order again is fine: idempotent).
    Conflict,
}

/// The orders the service knows (all of them, or the one a transaction loaded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Orders {
    /// Every order known, by order id.
    pub orders: BTreeMap<String, Order>,
}

impl Orders {
    /// Places an order. Placing the same order again emits nothing; reusing its
    /// id for a different order is refused.
    pub fn place(&mut self, order: OrderPlaced) -> Result<Vec<Event>, PlaceError> {
        if order.lines.is_empty() || order.lines.iter().any(|l| l.quantity == 0) {
            return Err(PlaceError::Empty);
        }
        match self.orders.get(&order.order_id) {
            Some(known) if known.placed == order => Ok(vec![]),
            Some(_) => Err(PlaceError::Conflict),
            None => {
                let event = Event::OrderPlaced(order.clone());
                let status = OrderStatus::Placed;
                self.orders
                    .insert(order.order_id.clone(), Order { placed: order, status });
                Ok(vec![event])
            }
        }
    }

    /// Confirms a placed order. A final order, or one this service never took, stays as it is.
    pub fn confirm(&mut self, order_id: &str, tracking: &str) -> Vec<Event> {
        self.settle(
            order_id,
            OrderStatus::Confirmed { tracking: tracking.to_owned() },
        )
    }

    /// Cancels a placed order with a reason a person can read.
    pub fn cancel(&mut self, order_id: &str, reason: String) -> Vec<Event> {
        self.settle(order_id, OrderStatus::Cancelled { reason })
    }

    fn settle(&mut self, order_id: &str, status: OrderStatus) -> Vec<Event> {
        let Some(order) = self.orders.get_mut(order_id) else { return vec![] };
        if order.status.is_final() {
            return vec![];
        }
        let order_id = order_id.to_owned();
        let event = match &status {
            OrderStatus::Confirmed { .. } => Event::OrderConfirmed { order_id },
            OrderStatus::Cancelled { reason } => {
                Event::OrderCancelled { order_id, reason: reason.clone() }
            }
            OrderStatus::Placed => return vec![],
        };
        order.status = status;
        vec![event]
    }
}

impl Reaction for Orders {
    const SERVICE: Service = Service::Orders;

    fn listens_to(kind: Kind) -> bool {
        matches!(
            kind,
            Kind::StockRejected
                | Kind::PaymentDeclined
                | Kind::ShipmentScheduled
                | Kind::ShipmentFailed
        )
    }

    fn react(mut self, event: &Event) -> (Self, Vec<Event>) {
        let id = event.order_id();
        let emitted = match event {
            Event::ShipmentScheduled { tracking, .. } => self.confirm(id, tracking),
            Event::StockRejected { reason, .. } => {
                self.cancel(id, format!("out of stock ({reason})"))
            }
            Event::PaymentDeclined { reason, .. } => {
                self.cancel(id, format!("payment declined ({reason})"))
            }
            Event::ShipmentFailed { reason, .. } => {
                self.cancel(id, format!("cannot ship ({reason})"))
            }
            _ => vec![],
        };
        (self, emitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Line;

    fn order(id: &str) -> OrderPlaced {
        OrderPlaced {
            order_id: id.into(),
            customer_id: "c-42".into(),
            lines: vec![Line { sku: "kettle".into(), quantity: 1 }],
            total_cents: 2899,
            ship_to: "NL".into(),
        }
    }

    #[test]
    fn placing_is_idempotent_and_an_id_cannot_be_reused() {
        let mut orders = Orders::default();
        assert_eq!(orders.place(order("o-1")).unwrap().len(), 1);
        assert_eq!(orders.place(order("o-1")).unwrap(), vec![]);
        let mut other = order("o-1");
        other.total_cents = 1;
        assert_eq!(orders.place(other), Err(PlaceError::Conflict));
        let mut empty = order("o-2");
        empty.lines.clear();
        assert_eq!(orders.place(empty), Err(PlaceError::Empty));
    }

    #[test]
    fn the_first_outcome_is_final() {
        let mut orders = Orders::default();
        orders.place(order("o-1")).unwrap();
        let scheduled = Event::ShipmentScheduled {
            order_id: "o-1".into(),
            tracking: "t".into(),
        };
        let (orders, emitted) = orders.react(&scheduled);
        assert_eq!(emitted, [Event::OrderConfirmed { order_id: "o-1".into() }]);
        let declined =
            Event::PaymentDeclined { order_id: "o-1".into(), reason: "x".into() };
        let (orders, emitted) = orders.react(&declined);
        assert!(emitted.is_empty());
        let status = &orders.orders["o-1"].status;
        assert_eq!(status, &OrderStatus::Confirmed { tracking: "t".into() });
    }

    #[test]
    fn a_failure_cancels_with_its_reason_and_unknown_orders_are_left_alone() {
        let mut orders = Orders::default();
        orders.place(order("o-1")).unwrap();
        let rejected =
            Event::StockRejected { order_id: "o-1".into(), reason: "kettle".into() };
        let (orders, _) = orders.react(&rejected);
        let reason = "out of stock (kettle)".to_owned();
        assert_eq!(orders.orders["o-1"].status, OrderStatus::Cancelled { reason });
        let stranger =
            Event::ShipmentFailed { order_id: "o-9".into(), reason: "x".into() };
        let (after, emitted) = orders.clone().react(&stranger);
        assert!(emitted.is_empty());
        assert_eq!(after, orders);
    }
}
