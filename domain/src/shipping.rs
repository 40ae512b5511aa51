//! The shipping service: schedules a parcel once the order is paid, or fails when no carrier
//! delivers to the address.
//!
//! Like payments, it joins two facts from two topics: where to ship (`OrderPlaced`) and that the
//! order is paid (`PaymentAuthorized`), in whichever order they arrive.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Event, Kind, Reaction, Service};

/// Where one order's shipment stands; only `Pending` can be scheduled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShipmentStatus {
    /// Waiting for the address or for the payment.
    Pending,
    /// A carrier has the parcel.
    Scheduled {
        /// The reference told to the customer.
        tracking: String,
    },
    /// No carrier delivers to the address.
    Failed {
        /// Why, in words for the customer.
        reason: String,
    },
    /// Called off (a compensation, used by orchestration), or before it was scheduled.
    Cancelled {
        /// Why it was called off.
        reason: String,
    },
}

impl ShipmentStatus {
    /// The status without its data, lower case (`"scheduled"`), as stored and logged.
    pub fn name(&self) -> &'static str {
        match self {
            ShipmentStatus::Pending => "pending",
            ShipmentStatus::Scheduled { .. } => "scheduled",
            ShipmentStatus::Failed { .. } => "failed",
            ShipmentStatus::Cancelled { .. } => "cancelled",
        }
    }
}

/// What shipping knows about one order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    /// Where to ship, once `OrderPlaced` has been heard.
    pub ship_to: Option<String>,
    /// Whether `PaymentAuthorized` has been heard: nothing ships unpaid.
    pub paid: bool,
    /// Where the shipment stands.
    pub status: ShipmentStatus,
}

impl Shipment {
    fn new() -> Self {
        Shipment { ship_to: None, paid: false, status: ShipmentStatus::Pending }
    }
}

/// The countries some carrier delivers to, and a shipment record per order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shipping {
    /// Countries some carrier delivers to; others fail the shipment.
    pub destinations: BTreeSet<String>,
    /// One shipment record per order, by order id.
    pub shipments: BTreeMap<String, Shipment>,
}

impl Shipping {
    /// Schedules the parcel, or fails it when no carrier delivers to `ship_to`.
    /// Only a pending shipment changes; a repeat emits nothing.
    pub fn schedule(&mut self, order_id: &str, ship_to: &str) -> Vec<Event> {
        let shipment =
            self.shipments.entry(order_id.to_owned()).or_insert_with(Shipment::new);
        if shipment.status != ShipmentStatus::Pending {
            return vec![];
        }
        shipment.ship_to.get_or_insert_with(|| ship_to.to_owned());
        let order_id = order_id.to_owned();
        if !self.destinations.contains(ship_to) {
            let reason = format!("no carrier delivers to {ship_to}");
            shipment.status = ShipmentStatus::Failed { reason: reason.clone() };
            return vec![Event::ShipmentFailed { order_id, reason }];
        }
        // Deterministic, so that a repeat would give the same number.
        let tracking = format!("trk-{order_id}");
        shipment.status = ShipmentStatus::Scheduled { tracking: tracking.clone() };
        vec![Event::ShipmentScheduled { order_id, tracking }]
    }

    /// Compensation: calls a shipment off. Safe to repeat, and before scheduling
    /// it marks the order so that a late request is refused.
    pub fn cancel(&mut self, order_id: &str, reason: &str) -> Vec<Event> {
        let shipment =
            self.shipments.entry(order_id.to_owned()).or_insert_with(Shipment::new);
        let reason = reason.to_owned();
        match shipment.status {
            ShipmentStatus::Scheduled { .. } => {
                shipment.status =
                    ShipmentStatus::Cancelled { reason: reason.clone() };
                let order_id = order_id.to_owned();
                vec![Event::ShipmentCancelled { order_id, reason }]
            }
            ShipmentStatus::Pending => {
                shipment.status = ShipmentStatus::Cancelled { reason };
                vec![]
            }
            _ => vec![],
        }
    }

    fn schedule_if_ready(&mut self, order_id: &str) -> Vec<Event> {
        let ready = self
            .shipments
            .get(order_id)
            .and_then(|s| s.ship_to.clone().filter(|_| s.paid));
        match ready {
            Some(ship_to) => self.schedule(order_id, &ship_to),
            None => vec![],
        }
    }
}

impl Reaction for Shipping {
    const SERVICE: Service = Service::Shipping;

    fn listens_to(kind: Kind) -> bool {
        matches!(
            kind,
            Kind::OrderPlaced | Kind::PaymentAuthorized | Kind::OrderCancelled
        )
    }

    fn react(mut self, event: &Event) -> (Self, Vec<Event>) {
        let id = event.order_id().to_owned();
        let emitted = match event {
            Event::OrderPlaced(placed) => {
                let shipment =
                    self.shipments.entry(id.clone()).or_insert_with(Shipment::new);
                shipment.ship_to = Some(placed.ship_to.clone());
                self.schedule_if_ready(&id)
            }
            Event::PaymentAuthorized { .. } => {
                let shipment =
                    self.shipments.entry(id.clone()).or_insert_with(Shipment::new);
                shipment.paid = true;
                self.schedule_if_ready(&id)
            }
            // Nothing will come for a cancelled order: close a pending shipment.
            Event::OrderCancelled { reason, .. } => {
                let shipment =
                    self.shipments.entry(id.clone()).or_insert_with(Shipment::new);
                if shipment.status == ShipmentStatus::Pending {
                    shipment.status =
                        ShipmentStatus::Cancelled { reason: reason.clone() };
                }
                vec![]
            }
            _ => vec![],
        };
        (self, emitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Line, OrderPlaced};

    fn placed(ship_to: &str) -> Event {
        Event::OrderPlaced(OrderPlaced {
            order_id: "o-1".into(),
            customer_id: "c-42".into(),
            lines: vec![Line { sku: "kettle".into(), quantity: 1 }],
            total_cents: 2899,
            ship_to: ship_to.into(),
        })
    }

    fn paid() -> Event {
        Event::PaymentAuthorized { order_id: "o-1".into(), amount_cents: 2899 }
    }

    fn shipping() -> Shipping {
        Shipping { destinations: ["NL".to_owned()].into(), ..Shipping::default() }
    }

    #[test]
    fn schedules_once_paid_and_addressed_in_either_order() {
        for (a, b) in [(placed("NL"), paid()), (paid(), placed("NL"))] {
            let (shipping, first) = shipping().react(&a);
            assert!(first.is_empty());
            let (shipping, second) = shipping.react(&b);
            let tracking = "trk-o-1".to_owned();
            let scheduled =
                Event::ShipmentScheduled { order_id: "o-1".into(), tracking };
            assert_eq!(second, [scheduled]);
            assert!(
                shipping.react(&a).1.is_empty(),
                "a duplicate schedules nothing"
            );
        }
    }

    #[test]
    fn fails_where_no_carrier_goes() {
        let (shipping, _) = shipping().react(&placed("AQ"));
        let (_, emitted) = shipping.react(&paid());
        let reason = "no carrier delivers to AQ".to_owned();
        assert_eq!(
            emitted,
            [Event::ShipmentFailed { order_id: "o-1".into(), reason }]
        );
    }

    #[test]
    fn a_cancel_before_scheduling_refuses_the_late_request() {
        let mut shipping = shipping();
        assert!(shipping.cancel("o-1", "timed out").is_empty());
        assert!(shipping.schedule("o-1", "NL").is_empty());
        let mut scheduled = self::shipping();
        scheduled.schedule("o-1", "NL");
        assert_eq!(scheduled.cancel("o-1", "order refused").len(), 1);
        assert!(scheduled.cancel("o-1", "order refused").is_empty());
    }
}
