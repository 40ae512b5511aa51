//! The inventory service: reserves stock for an order, or says why it cannot, and gives a
//! reservation back when a later step fails.
//!
//! Every order it hears of gets a [`Hold`] that is never deleted: the hold is how a redelivered
//! `OrderPlaced` is recognised after the reservation was released (deleting it would reserve the
//! stock a second time), and how a release that arrives before its reservation refuses the late
//! reservation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Event, Kind, Line, Reaction, Service};

/// What inventory did for one order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hold {
    /// These lines are taken out of the available stock.
    Reserved {
        /// What was taken, so that a release gives back exactly these lines.
        lines: Vec<Line>,
    },
    /// Nothing was taken, because of `reason`.
    Rejected {
        /// Which line was short, as told to the customer.
        reason: String,
    },
    /// Given back (or refused before it was taken), because of `reason`.
    Released {
        /// Why it was given back, or refused before it was taken.
        reason: String,
    },
}

impl Hold {
    /// The hold without its data, lower case (`"reserved"`), as logged.
    pub fn name(&self) -> &'static str {
        match self {
            Hold::Reserved { .. } => "reserved",
            Hold::Rejected { .. } => "rejected",
            Hold::Released { .. } => "released",
        }
    }
}

/// Available stock per SKU, and the hold of every order inventory has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Units free to reserve, by SKU; a SKU missing here has none.
    pub available: BTreeMap<String, u32>,
    /// One hold per order ever seen, kept forever so that repeats change nothing.
    pub holds: BTreeMap<String, Hold>,
}

impl Inventory {
    // ANCHOR: reserve
    /// Reserves every line of an order, or none of them. A second request for
    /// the same order changes nothing and emits nothing, whatever its hold.
    pub fn reserve(&mut self, order_id: &str, lines: &[Line]) -> Vec<Event> {
        if self.holds.contains_key(order_id) {
            return vec![];
        }
        let order_id = order_id.to_owned();
        let short = lines.iter().find_map(|line| {
            let have = self.available.get(&line.sku).copied().unwrap_or(0);
            (have < line.quantity).then(|| {
                format!("{}: {} wanted, {have} available", line.sku, line.quantity)
            })
        });
        if let Some(reason) = short {
            let hold = Hold::Rejected { reason: reason.clone() };
            self.holds.insert(order_id.clone(), hold);
            return vec![Event::StockRejected { order_id, reason }];
        }
        for line in lines {
            *self.available.entry(line.sku.clone()).or_default() -= line.quantity;
        }
        let hold = Hold::Reserved { lines: lines.to_vec() };
        self.holds.insert(order_id.clone(), hold);
        vec![Event::StockReserved { order_id }]
    }
    // ANCHOR_END: reserve

    /// Compensation: gives a reservation back. Safe to repeat, and safe before
    /// the reservation: the order is then marked released, so that a late
    /// reservation request is refused.
    pub fn release(&mut self, order_id: &str, reason: &str) -> Vec<Event> {
        let reason = reason.to_owned();
        match self.holds.get(order_id) {
            Some(Hold::Released { .. } | Hold::Rejected { .. }) => return vec![],
            Some(Hold::Reserved { lines }) => {
                for line in lines {
                    *self.available.entry(line.sku.clone()).or_default() +=
                        line.quantity;
                }
            }
            None => {}
        }
        let hold = Hold::Released { reason: reason.clone() };
        self.holds.insert(order_id.to_owned(), hold);
        vec![Event::StockReleased { order_id: order_id.to_owned(), reason }]
    }

    /// The SKUs a transaction must load (and lock) to apply `event`: those of
    /// the event's lines and those of the order's hold.
    pub fn skus_touched(&self, event: &Event) -> Vec<String> {
        let mut skus: Vec<String> = match event {
            Event::OrderPlaced(placed) => {
                placed.lines.iter().map(|l| l.sku.clone()).collect()
            }
            _ => vec![],
        };
        if let Some(Hold::Reserved { lines }) = self.holds.get(event.order_id()) {
            skus.extend(lines.iter().map(|l| l.sku.clone()));
        }
        skus.sort();
        skus.dedup();
        skus
    }
}

// ANCHOR: inventory_react
impl Reaction for Inventory {
    const SERVICE: Service = Service::Inventory;

    fn listens_to(kind: Kind) -> bool {
        matches!(
            kind,
            Kind::OrderPlaced | Kind::PaymentDeclined | Kind::ShipmentFailed
        )
    }

    fn react(mut self, event: &Event) -> (Self, Vec<Event>) {
        let emitted = match event {
            Event::OrderPlaced(placed) => {
                self.reserve(&placed.order_id, &placed.lines)
            }
            // Inventory must know every failure that comes after it.
            Event::PaymentDeclined { order_id, .. } => {
                self.release(order_id, "payment declined")
            }
            Event::ShipmentFailed { order_id, .. } => {
                self.release(order_id, "cannot ship")
            }
            _ => vec![],
        };
        (self, emitted)
    }
}
// ANCHOR_END: inventory_react

#[cfg(test)]
mod tests {
    use super::*;

    fn stocked(kettles: u32) -> Inventory {
        let mut inventory = Inventory::default();
        inventory.available.insert("kettle".into(), kettles);
        inventory
    }

    fn kettles(n: u32) -> Vec<Line> {
        vec![Line { sku: "kettle".into(), quantity: n }]
    }

    #[test]
    fn reserves_all_or_nothing_and_says_what_is_short() {
        let mut inventory = stocked(2);
        let lines =
            [kettles(1), vec![Line { sku: "mug".into(), quantity: 1 }]].concat();
        let emitted = inventory.reserve("o-1", &lines);
        let reason = "mug: 1 wanted, 0 available".to_owned();
        assert_eq!(
            emitted,
            [Event::StockRejected { order_id: "o-1".into(), reason }]
        );
        assert_eq!(inventory.available["kettle"], 2, "nothing taken");
        assert_eq!(inventory.reserve("o-2", &kettles(2)).len(), 1);
        assert_eq!(inventory.available["kettle"], 0);
    }

    #[test]
    fn a_repeated_reservation_takes_nothing_even_after_a_release() {
        let mut inventory = stocked(3);
        inventory.reserve("o-1", &kettles(2));
        assert!(inventory.reserve("o-1", &kettles(2)).is_empty());
        assert_eq!(inventory.available["kettle"], 1);
        assert_eq!(inventory.release("o-1", "payment declined").len(), 1);
        assert!(inventory.release("o-1", "payment declined").is_empty());
        assert_eq!(inventory.available["kettle"], 3, "given back once");
        assert!(inventory.reserve("o-1", &kettles(2)).is_empty());
        assert_eq!(inventory.available["kettle"], 3, "not taken again");
    }

    #[test]
    fn a_release_before_its_reservation_refuses_the_reservation() {
        let mut inventory = stocked(3);
        assert_eq!(inventory.release("o-1", "timed out").len(), 1);
        assert!(inventory.reserve("o-1", &kettles(1)).is_empty());
        assert_eq!(inventory.available["kettle"], 3);
        let hold = &inventory.holds["o-1"];
        assert_eq!(hold, &Hold::Released { reason: "timed out".into() });
    }

    #[test]
    fn a_rejected_order_has_nothing_to_release() {
        let mut inventory = stocked(0);
        inventory.reserve("o-1", &kettles(1));
        assert!(inventory.release("o-1", "payment declined").is_empty());
        assert!(matches!(inventory.holds["o-1"], Hold::Rejected { .. }));
    }
}
