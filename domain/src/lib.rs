//! The shop's checkout rules, with no I/O: what orders, inventory, payments and shipping decide,
//! and what each of them says about it.
//!
//! A checkout crosses four services that each own their data. This crate holds what they decide,
//! as pure functions of their own state and the event (or command) in front of them, so that the
//! rules can be tested exhaustively in memory, and so that two very different ways of coordinating
//! the services share them:
//!
//! - **Choreography** (`patterns/choreography`): each service reacts to the others' events. The
//!   [`Reaction`] trait is that reaction: `(state, event) -> (state, events to emit)`.
//! - **Orchestration**: a saga orchestrator tells each service what to do. It calls the same
//!   operations directly ([`inventory::Inventory::reserve`], [`payments::Payments::refund`], ...),
//!   each of which returns the events that describe what it did.
//!
//! Every operation is *idempotent* and *order-tolerant*: applying it twice changes nothing the
//! second time and emits nothing, and a compensation that arrives before the action it undoes
//! leaves a record that refuses the late action. Transports deliver at least once and do not keep
//! order across topics or queues; rules that assumed otherwise would be correct only on good days.
//! `tests/convergence.rs` checks this against random interleavings and duplications.
//!
//! What is deliberately missing: money is whole cents in one currency, stock is a count per SKU
//! with no warehouses, and a payment is one step (authorised means the money is taken). A real
//! shop splits these further; the coordination problems stay the same.

#![warn(missing_docs)]

use serde::{Deserialize, Serialize};

pub mod inventory;
pub mod orders;
pub mod payments;
pub mod shipping;
pub mod time;

/// The four services of the checkout. Each owns its data and its events. Its
/// [`name`](Service::name) is how every crate spells it: in topics, queues,
/// schemas, span names and log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// Owns orders and their status; starts and settles every checkout.
    Orders,
    /// Owns stock; reserves it for an order and releases it on failure.
    Inventory,
    /// Owns customers' balances; charges an order and refunds it on failure.
    Payments,
    /// Owns shipments; schedules a parcel once the order is paid.
    Shipping,
}

impl Service {
    /// Every service, for code that must set up each one (topics, queues, stores).
    pub const ALL: [Service; 4] =
        [Service::Orders, Service::Inventory, Service::Payments, Service::Shipping];

    /// The service's name, lower case: `"inventory"`. A `const fn`, so that a
    /// span name (which must be known at compile time) can use it.
    pub const fn name(self) -> &'static str {
        match self {
            Service::Orders => "orders",
            Service::Inventory => "inventory",
            Service::Payments => "payments",
            Service::Shipping => "shipping",
        }
    }

    /// The service a name stands for; `None` for a name this shop does not know.
    pub fn parse(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a shop starts with: articles in stock, customers' balances, and the
/// countries a carrier delivers to. The choreographed and the orchestrated
/// shop seed their own stores from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seed {
    /// Units in stock, by SKU: an order for more is refused by inventory.
    pub stock: Vec<(String, u32)>,
    /// Cents each customer can pay, by customer id: payments refuses beyond it.
    pub balances: Vec<(String, u64)>,
    /// Countries shipping delivers to: any other is refused.
    pub destinations: Vec<String>,
}

/// One line of an order: how many of which article.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub struct Line {
    /// The article, as inventory keys its stock.
    pub sku: String,
    /// Units wanted; an order with a line of zero is refused by orders.
    pub quantity: u32,
}

/// The fact that starts a checkout. It carries what the other services need
/// (lines for inventory, customer and amount for payments, destination for
/// shipping), so none of them has to ask the orders service: they keep their own
/// copy of what concerns them.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub struct OrderPlaced {
    /// The order's key everywhere: message key, store key, correlation.
    pub order_id: String,
    /// Whose balance payments charges.
    pub customer_id: String,
    /// What inventory reserves; never empty in an order that was placed.
    pub lines: Vec<Line>,
    /// The amount payments charges, in whole cents.
    pub total_cents: u64,
    /// ISO country code of the delivery address.
    pub ship_to: String,
}

/// Everything the checkout's services say, each about one order. The payload of
/// a message; the envelope (ids, type, correlation and causation) is the
/// transport's business.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    /// A new order: the one event the other services learn its details from.
    OrderPlaced(OrderPlaced),
    /// Inventory took every line out of stock; payments may now charge.
    StockReserved {
        /// The order this event is about.
        order_id: String,
    },
    /// Inventory could not cover some line; nothing was taken.
    StockRejected {
        /// The order this event is about.
        order_id: String,
        /// Which line was short, for the customer-facing cancellation reason.
        reason: String,
    },
    /// Compensation: a reservation given back.
    StockReleased {
        /// The order this event is about.
        order_id: String,
        /// Why the stock went back, for logs and the order's story.
        reason: String,
    },
    /// The customer was charged; shipping may now schedule.
    PaymentAuthorized {
        /// The order this event is about.
        order_id: String,
        /// Cents taken, so a refund can give back exactly that.
        amount_cents: u64,
    },
    /// The customer's balance was short; nothing was charged.
    PaymentDeclined {
        /// The order this event is about.
        order_id: String,
        /// Why, in words for the customer.
        reason: String,
    },
    /// Compensation: an authorised payment given back.
    PaymentRefunded {
        /// The order this event is about.
        order_id: String,
        /// Cents returned to the customer.
        amount_cents: u64,
        /// Which failure caused the refund.
        reason: String,
    },
    /// A carrier took the parcel; the order can be confirmed.
    ShipmentScheduled {
        /// The order this event is about.
        order_id: String,
        /// The carrier's reference the customer is told.
        tracking: String,
    },
    /// No carrier delivers to the address; earlier steps must be undone.
    ShipmentFailed {
        /// The order this event is about.
        order_id: String,
        /// Why, in words for the customer.
        reason: String,
    },
    /// Compensation (used by orchestration): a scheduled shipment called off.
    ShipmentCancelled {
        /// The order this event is about.
        order_id: String,
        /// Why the shipment was called off.
        reason: String,
    },
    /// The checkout succeeded; the last event of a good order.
    OrderConfirmed {
        /// The order this event is about.
        order_id: String,
    },
    /// The checkout failed; the last event of a failed order.
    OrderCancelled {
        /// The order this event is about.
        order_id: String,
        /// The first failure, in words for the customer.
        reason: String,
    },
}

/// The type of an event, without its data: what a message's `event-type` header names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Type of [`Event::OrderPlaced`].
    OrderPlaced,
    /// Type of [`Event::StockReserved`].
    StockReserved,
    /// Type of [`Event::StockRejected`].
    StockRejected,
    /// Type of [`Event::StockReleased`].
    StockReleased,
    /// Type of [`Event::PaymentAuthorized`].
    PaymentAuthorized,
    /// Type of [`Event::PaymentDeclined`].
    PaymentDeclined,
    /// Type of [`Event::PaymentRefunded`].
    PaymentRefunded,
    /// Type of [`Event::ShipmentScheduled`].
    ShipmentScheduled,
    /// Type of [`Event::ShipmentFailed`].
    ShipmentFailed,
    /// Type of [`Event::ShipmentCancelled`].
    ShipmentCancelled,
    /// Type of [`Event::OrderConfirmed`].
    OrderConfirmed,
    /// Type of [`Event::OrderCancelled`].
    OrderCancelled,
}

impl Kind {
    /// Every kind, so that [`parse`](Kind::parse) and tests can enumerate them.
    pub const ALL: [Kind; 12] = [
        Kind::OrderPlaced,
        Kind::StockReserved,
        Kind::StockRejected,
        Kind::StockReleased,
        Kind::PaymentAuthorized,
        Kind::PaymentDeclined,
        Kind::PaymentRefunded,
        Kind::ShipmentScheduled,
        Kind::ShipmentFailed,
        Kind::ShipmentCancelled,
        Kind::OrderConfirmed,
        Kind::OrderCancelled,
    ];

    /// The type name as written in the `event-type` header;
    /// [`parse`](Kind::parse) reverses it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OrderPlaced => "OrderPlaced",
            Kind::StockReserved => "StockReserved",
            Kind::StockRejected => "StockRejected",
            Kind::StockReleased => "StockReleased",
            Kind::PaymentAuthorized => "PaymentAuthorized",
            Kind::PaymentDeclined => "PaymentDeclined",
            Kind::PaymentRefunded => "PaymentRefunded",
            Kind::ShipmentScheduled => "ShipmentScheduled",
            Kind::ShipmentFailed => "ShipmentFailed",
            Kind::ShipmentCancelled => "ShipmentCancelled",
            Kind::OrderConfirmed => "OrderConfirmed",
            Kind::OrderCancelled => "OrderCancelled",
        }
    }

    /// The kind a type name stands for; `None` for a name this shop does not know.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The service that emits events of this kind (and owns their topic).
    pub fn source(self) -> Service {
        match self {
            Kind::OrderPlaced | Kind::OrderConfirmed | Kind::OrderCancelled => {
                Service::Orders
            }
            Kind::StockReserved | Kind::StockRejected | Kind::StockReleased => {
                Service::Inventory
            }
            Kind::PaymentAuthorized
            | Kind::PaymentDeclined
            | Kind::PaymentRefunded => Service::Payments,
            Kind::ShipmentScheduled
            | Kind::ShipmentFailed
            | Kind::ShipmentCancelled => Service::Shipping,
        }
    }
}

impl Event {
    /// The event's type, for the header and for a service's
    /// [`Reaction::listens_to`].
    pub fn kind(&self) -> Kind {
        match self {
            Event::OrderPlaced(_) => Kind::OrderPlaced,
            Event::StockReserved { .. } => Kind::StockReserved,
            Event::StockRejected { .. } => Kind::StockRejected,
            Event::StockReleased { .. } => Kind::StockReleased,
            Event::PaymentAuthorized { .. } => Kind::PaymentAuthorized,
            Event::PaymentDeclined { .. } => Kind::PaymentDeclined,
            Event::PaymentRefunded { .. } => Kind::PaymentRefunded,
            Event::ShipmentScheduled { .. } => Kind::ShipmentScheduled,
            Event::ShipmentFailed { .. } => Kind::ShipmentFailed,
            Event::ShipmentCancelled { .. } => Kind::ShipmentCancelled,
            Event::OrderConfirmed { .. } => Kind::OrderConfirmed,
            Event::OrderCancelled { .. } => Kind::OrderCancelled,
        }
    }

    /// The order the event is about: the message key, so one order's events stay in order.
    pub fn order_id(&self) -> &str {
        match self {
            Event::OrderPlaced(placed) => &placed.order_id,
            Event::StockReserved { order_id }
            | Event::StockRejected { order_id, .. }
            | Event::StockReleased { order_id, .. }
            | Event::PaymentAuthorized { order_id, .. }
            | Event::PaymentDeclined { order_id, .. }
            | Event::PaymentRefunded { order_id, .. }
            | Event::ShipmentScheduled { order_id, .. }
            | Event::ShipmentFailed { order_id, .. }
            | Event::ShipmentCancelled { order_id, .. }
            | Event::OrderConfirmed { order_id }
            | Event::OrderCancelled { order_id, .. } => order_id,
        }
    }
}

// ANCHOR: Reaction
/// How a service takes part in a choreography: a pure function from its state
/// and an event to its new state and the events it emits. No clock, no I/O, no
/// randomness: the same inputs always give the same outputs, which is what lets
/// a crash-and-retry repeat it safely and a property test explore it.
pub trait Reaction: Sized {
    /// Whose reaction this is.
    const SERVICE: Service;

    /// Whether this service reacts to events of `kind` at all (it subscribes
    /// to their topic and ignores the rest of it).
    fn listens_to(kind: Kind) -> bool;

    /// Applies `event`. A duplicate, or an event that changes nothing, returns
    /// the state unchanged and emits nothing.
    fn react(self, event: &Event) -> (Self, Vec<Event>);
}
// ANCHOR_END: Reaction

/// Cents as euros for reasons a person reads: `2899` -> `"28.99"`.
pub fn euros(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name_and_has_one_source() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("OrderTeleported"), None);
        let by_orders = Kind::ALL.iter().filter(|k| k.source() == Service::Orders);
        assert_eq!(by_orders.count(), 3);
    }

    #[test]
    fn every_service_round_trips_through_its_name() {
        for service in Service::ALL {
            assert_eq!(Service::parse(service.name()), Some(service));
            assert_eq!(service.to_string(), service.name());
        }
        assert_eq!(Service::Inventory.name(), "inventory");
        assert_eq!(Service::parse("billing"), None);
    }

    #[test]
    fn the_payload_is_the_data_and_the_type_is_the_kind() {
        let event = Event::StockReserved { order_id: "o-1".into() };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], event.kind().as_str());
        assert_eq!(json["data"]["order_id"], "o-1");
        assert_eq!(event.order_id(), "o-1");
        assert_eq!(euros(2899), "28.99");
        assert_eq!(euros(5), "0.05");
    }
}
