//! Convergence of the checkout under the deliveries a real transport makes: any interleaving of
//! the services' events (Kafka orders a partition of one topic, never across topics), each event
//! delivered again at any later time (at-least-once). Whatever the schedule, every service ends
//! in the same state as with a calm, in-order run, and every effect happened once: the same
//! events, each emitted exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use proptest::prelude::*;
use shop_domain::inventory::{Hold, Inventory};
use shop_domain::orders::{OrderStatus, Orders};
use shop_domain::payments::{PaymentStatus, Payments};
use shop_domain::shipping::{ShipmentStatus, Shipping};
use shop_domain::{Event, Line, OrderPlaced, Reaction, Service};

/// The four services' states, as one in-memory shop.
#[derive(Clone, Debug, PartialEq)]
struct World {
    orders: Orders,
    inventory: Inventory,
    payments: Payments,
    shipping: Shipping,
}

/// One checkout's starting point: what is in stock, what the customer can pay,
/// where the parcel goes. Together they reach every branch.
#[derive(Clone, Debug)]
struct Scenario {
    stock: u32,
    quantity: u32,
    balance: u64,
    total: u64,
    ship_to: &'static str,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        0u32..4,
        1u32..3,
        0u64..6000,
        1000u64..4000,
        prop::sample::select(vec!["NL", "AQ"]),
    )
        .prop_map(|(stock, quantity, balance, total, ship_to)| Scenario {
            stock,
            quantity,
            balance,
            total,
            ship_to,
        })
}

impl World {
    fn new(s: &Scenario) -> World {
        let mut inventory = Inventory::default();
        inventory.available.insert("kettle".into(), s.stock);
        let mut payments = Payments::default();
        payments.balances.insert("c-42".into(), s.balance);
        let shipping = Shipping {
            destinations: ["NL".to_owned()].into(),
            ..Shipping::default()
        };
        World { orders: Orders::default(), inventory, payments, shipping }
    }

    /// Places the order; returns the first deliveries (to every listener).
    fn place(&mut self, s: &Scenario) -> Vec<(Service, Event)> {
        let order = OrderPlaced {
            order_id: "o-1".into(),
            customer_id: "c-42".into(),
            lines: vec![Line { sku: "kettle".into(), quantity: s.quantity }],
            total_cents: s.total,
            ship_to: s.ship_to.into(),
        };
        let emitted = self.orders.place(order).expect("a valid order");
        deliveries(&emitted)
    }

    /// Delivers one event to one service; returns what it emitted.
    fn deliver(&mut self, to: Service, event: &Event) -> Vec<Event> {
        fn step<R: Reaction + Clone>(state: &mut R, event: &Event) -> Vec<Event> {
            let (next, emitted) = state.clone().react(event);
            *state = next;
            emitted
        }
        match to {
            Service::Orders => step(&mut self.orders, event),
            Service::Inventory => step(&mut self.inventory, event),
            Service::Payments => step(&mut self.payments, event),
            Service::Shipping => step(&mut self.shipping, event),
        }
    }
}

/// Every (listener, event) pair the transport must deliver for these events.
fn deliveries(events: &[Event]) -> Vec<(Service, Event)> {
    let listens = |service: Service, event: &Event| match service {
        Service::Orders => Orders::listens_to(event.kind()),
        Service::Inventory => Inventory::listens_to(event.kind()),
        Service::Payments => Payments::listens_to(event.kind()),
        Service::Shipping => Shipping::listens_to(event.kind()),
    };
    events
        .iter()
        .flat_map(|e| {
            Service::ALL
                .into_iter()
                .filter(|s| listens(*s, e))
                .map(|s| (s, e.clone()))
        })
        .collect()
}

/// The calm run: every delivery once, first in, first out. Returns the final world
/// and every event emitted, sorted.
fn calm(s: &Scenario) -> (World, Vec<Event>) {
    let mut world = World::new(s);
    let mut queue = std::collections::VecDeque::from(world.place(s));
    let mut emitted = vec![Event::OrderPlaced(placed_of(&world))];
    while let Some((to, event)) = queue.pop_front() {
        let out = world.deliver(to, &event);
        queue.extend(deliveries(&out));
        emitted.extend(out);
    }
    emitted.sort();
    (world, emitted)
}

fn placed_of(world: &World) -> OrderPlaced {
    world.orders.orders["o-1"].placed.clone()
}

// ANCHOR: storm
/// A storm: at each step, deliver any pending event (in any order), or deliver
/// again one already delivered. `choices` drives the schedule; when it runs out,
/// the rest is delivered in order.
fn storm(s: &Scenario, choices: &[(bool, usize)]) -> (World, Vec<Event>) {
    let mut world = World::new(s);
    let mut pending = world.place(s);
    let mut delivered: Vec<(Service, Event)> = Vec::new();
    let mut emitted = vec![Event::OrderPlaced(placed_of(&world))];
    let mut choices = choices.iter();
    while !pending.is_empty() {
        let (to, event) = match choices.next() {
            Some(&(true, i)) if !delivered.is_empty() => {
                delivered[i % delivered.len()].clone()
            }
            Some(&(_, i)) => pending.remove(i % pending.len()),
            None => pending.remove(0),
        };
        let out = world.deliver(to, &event);
        pending.extend(deliveries(&out));
        emitted.extend(out);
        delivered.push((to, event));
    }
    // Late duplicates of everything, after the checkout settled.
    for (to, event) in delivered {
        emitted.extend(world.deliver(to, &event));
    }
    emitted.sort();
    (world, emitted)
}

// ANCHOR_END: storm

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_interleaving_with_duplicates_converges_to_the_calm_outcome(
        s in scenario(),
        choices in prop::collection::vec((any::<bool>(), any::<usize>()), 0..40),
    ) {
        let (expected, expected_events) = calm(&s);
        let (world, events) = storm(&s, &choices);
        prop_assert_eq!(&world, &expected);
        prop_assert_eq!(events, expected_events, "every effect once, no more");
    }

    #[test]
    fn the_calm_outcome_is_the_one_the_rules_promise(s in scenario()) {
        let (world, _) = calm(&s);
        let in_stock = s.stock >= s.quantity;
        let can_pay = s.balance >= s.total;
        let deliverable = s.ship_to == "NL";
        let status = &world.orders.orders["o-1"].status;
        let available = world.inventory.available["kettle"];
        let balance = world.payments.balances["c-42"];
        if in_stock && can_pay && deliverable {
            let confirmed = matches!(status, OrderStatus::Confirmed { .. });
            prop_assert!(confirmed, "not confirmed: {:?}", status);
            prop_assert_eq!(available, s.stock - s.quantity, "reserved once");
            prop_assert_eq!(balance, s.balance - s.total, "charged once");
            let shipment = &world.shipping.shipments["o-1"].status;
            let scheduled = matches!(shipment, ShipmentStatus::Scheduled { .. });
            prop_assert!(scheduled, "not scheduled: {:?}", shipment);
        } else {
            let OrderStatus::Cancelled { reason } = status else {
                return Err(TestCaseError::fail(format!("not cancelled: {status:?}")));
            };
            let expected = if !in_stock {
                "out of stock"
            } else if !can_pay {
                "payment declined"
            } else {
                "cannot ship"
            };
            prop_assert!(reason.starts_with(expected), "{} for {:?}", reason, s);
            prop_assert_eq!(available, s.stock, "nothing stays reserved");
            prop_assert_eq!(balance, s.balance, "nothing stays charged");
            let hold = &world.inventory.holds["o-1"];
            prop_assert_eq!(in_stock, matches!(hold, Hold::Released { .. }));
            // Every service's record ends final: nothing waits for what will never come.
            let payment = &world.payments.payments["o-1"].status;
            let closed = if !in_stock {
                matches!(payment, PaymentStatus::Voided { .. })
            } else if !can_pay {
                matches!(payment, PaymentStatus::Declined { .. })
            } else {
                matches!(payment, PaymentStatus::Refunded { .. })
            };
            prop_assert!(closed, "payment {:?}", payment);
            let shipment = &world.shipping.shipments["o-1"].status;
            let closed = if in_stock && can_pay {
                matches!(shipment, ShipmentStatus::Failed { .. })
            } else {
                matches!(shipment, ShipmentStatus::Cancelled { .. })
            };
            prop_assert!(closed, "shipment {:?}", shipment);
        }
    }
}
