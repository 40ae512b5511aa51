//! The choreography's promises, against PostgreSQL at `DATABASE_URL` and the Kafka API broker at
//! `KAFKA_BROKERS`: every branch of the checkout ends with every service in the right final state,
//! a crash at each boundary still converges with every effect exactly once, unreadable events are
//! dead-lettered without stopping anyone, and without an outbox a crash loses an event for good.
//!
//! Each test starts its own shop: fresh schemas, topics and consumer groups. Waits are bounded
//! waits on conditions (every commit wakes the waiter); fault plans decide where things die.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::collections::BTreeMap;
use std::time::Duration;

use choreography::shop::{Config, Faults, Outcome, Shop, correlation_id};
use kafka_events::client::consumer;
use kafka_events::envelope::header;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use shop_domain::inventory::Hold;
use shop_domain::orders::OrderStatus;
use shop_domain::payments::PaymentStatus;
use shop_domain::shipping::ShipmentStatus;
use shop_domain::{Line, OrderPlaced, Seed, Service};
use tokio::time::timeout;
use uuid::Uuid;

/// A bound on any one wait: a healthy run settles a checkout in well under a second, a
/// consumer group rebalance after a crash takes a few seconds.
const WAIT: Duration = Duration::from_secs(90);

fn seed() -> Seed {
    Seed {
        stock: vec![("kettle".into(), 10), ("mug".into(), 1)],
        balances: vec![("c-rich".into(), 100_000), ("c-poor".into(), 1_000)],
        destinations: vec!["NL".into(), "DE".into(), "BE".into()],
    }
}

/// A fresh shop, or `None` (after printing why, or panicking under REQUIRE_BROKERS).
async fn shop(faults: Faults) -> Option<Shop> {
    let (brokers, url) = (infra::kafka_brokers(), infra::database_url());
    let mut config = Config::new(&brokers, &url, "t", seed());
    config.faults = faults;
    let why = match timeout(Duration::from_secs(60), Shop::start(config)).await {
        Ok(Ok(shop)) => return Some(shop),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 60 s".to_owned(),
    };
    infra::unavailable("Kafka and PostgreSQL", &format!("{brokers} and {url}"), why);
    None
}

/// The four checkouts: one per branch.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Branch {
    Confirmed,
    OutOfStock,
    Declined,
    CannotShip,
}

const BRANCHES: [Branch; 4] =
    [Branch::Confirmed, Branch::OutOfStock, Branch::Declined, Branch::CannotShip];

impl Branch {
    fn order(self) -> OrderPlaced {
        let (id, customer, sku, quantity, cents, ship_to) = match self {
            Branch::Confirmed => ("o-ok", "c-rich", "kettle", 2, 5798, "NL"),
            Branch::OutOfStock => ("o-oos", "c-rich", "mug", 2, 1598, "NL"),
            Branch::Declined => ("o-dec", "c-poor", "kettle", 1, 2899, "NL"),
            Branch::CannotShip => ("o-aq", "c-rich", "kettle", 1, 2899, "AQ"),
        };
        OrderPlaced {
            order_id: id.into(),
            customer_id: customer.into(),
            lines: vec![Line { sku: sku.into(), quantity }],
            total_cents: cents,
            ship_to: ship_to.into(),
        }
    }

    /// Every event the checkout must produce, each exactly once: one per effect.
    fn emitted(self) -> BTreeMap<String, u64> {
        let kinds: &[&str] = match self {
            Branch::Confirmed => &[
                "OrderPlaced",
                "StockReserved",
                "PaymentAuthorized",
                "ShipmentScheduled",
                "OrderConfirmed",
            ],
            Branch::OutOfStock => {
                &["OrderPlaced", "StockRejected", "OrderCancelled"]
            }
            Branch::Declined => &[
                "OrderPlaced",
                "StockReserved",
                "PaymentDeclined",
                "StockReleased",
                "OrderCancelled",
            ],
            Branch::CannotShip => &[
                "OrderPlaced",
                "StockReserved",
                "PaymentAuthorized",
                "ShipmentFailed",
                "PaymentRefunded",
                "StockReleased",
                "OrderCancelled",
            ],
        };
        kinds.iter().map(|k| (k.to_string(), 1)).collect()
    }

    /// Checks every service's final record of this checkout.
    fn check(self, outcome: &Outcome) {
        let order = outcome.order.as_ref().expect("orders knows the order");
        let hold = outcome.hold.as_ref().expect("inventory knows the order");
        let payment = &outcome.payment.as_ref().expect("payments knows it").status;
        let shipment = &outcome.shipment.as_ref().expect("shipping knows it").status;
        let reason = match &order.status {
            OrderStatus::Cancelled { reason } => reason.as_str(),
            _ => "",
        };
        match self {
            Branch::Confirmed => {
                let tracking = "trk-o-ok".to_owned();
                assert_eq!(
                    order.status,
                    OrderStatus::Confirmed { tracking: tracking.clone() }
                );
                assert!(
                    matches!(hold, Hold::Reserved { lines } if lines[0].quantity == 2)
                );
                assert_eq!(
                    payment,
                    &PaymentStatus::Authorized { amount_cents: 5798 }
                );
                assert_eq!(shipment, &ShipmentStatus::Scheduled { tracking });
            }
            Branch::OutOfStock => {
                assert_eq!(reason, "out of stock (mug: 2 wanted, 1 available)");
                assert!(matches!(hold, Hold::Rejected { .. }));
                assert!(
                    matches!(payment, PaymentStatus::Voided { .. }),
                    "{payment:?}"
                );
                assert!(matches!(shipment, ShipmentStatus::Cancelled { .. }));
            }
            Branch::Declined => {
                let declined = "insufficient funds: 28.99 wanted, 10.00 available";
                assert_eq!(reason, format!("payment declined ({declined})"));
                let released = Hold::Released { reason: "payment declined".into() };
                assert_eq!(hold, &released);
                let status = PaymentStatus::Declined { reason: declined.into() };
                assert_eq!(payment, &status);
                assert!(matches!(shipment, ShipmentStatus::Cancelled { .. }));
            }
            Branch::CannotShip => {
                assert_eq!(reason, "cannot ship (no carrier delivers to AQ)");
                let released = Hold::Released { reason: "cannot ship".into() };
                assert_eq!(hold, &released);
                let refunded = PaymentStatus::Refunded {
                    amount_cents: 2899,
                    reason: "cannot ship".into(),
                };
                assert_eq!(payment, &refunded);
                assert!(matches!(shipment, ShipmentStatus::Failed { .. }));
            }
        }
        assert_eq!(outcome.emitted, self.emitted(), "{self:?}: every effect once");
    }
}

/// Stock and balances after `branches` settled, from the seed: only a confirmed
/// checkout keeps anything (2 kettles and 57.98 from c-rich).
fn check_totals(outcome: &Outcome, branches: &[Branch]) {
    let confirmed = branches.contains(&Branch::Confirmed);
    let kettles = if confirmed { 8 } else { 10 };
    assert_eq!(
        outcome.stock["kettle"], kettles,
        "kettles reserved once, released once"
    );
    assert_eq!(outcome.stock["mug"], 1, "a rejected order takes nothing");
    let rich = if confirmed { 100_000 - 5798 } else { 100_000 };
    assert_eq!(
        outcome.balances["c-rich"], rich,
        "charged once, refunded at most once"
    );
    assert_eq!(
        outcome.balances["c-poor"], 1_000,
        "a declined payment takes nothing"
    );
}

/// Places the checkouts of `branches`, waits until they settle, and checks each.
async fn run_checkouts(shop: &Shop, branches: &[Branch]) {
    for branch in branches {
        shop.place(branch.order(), &correlation_id())
            .await
            .expect("the order is placed");
    }
    let ids: Vec<String> = branches.iter().map(|b| b.order().order_id).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let outcomes = shop.settle(&ids, WAIT).await.expect("every checkout settles");
    for (branch, outcome) in branches.iter().zip(&outcomes) {
        branch.check(outcome);
    }
    // Read again: each outcome above was read at its own moment.
    let settled = shop.outcome(ids[0]).await.expect("the outcome");
    check_totals(&settled, branches);
}

#[tokio::test]
async fn the_happy_path_confirms_and_every_service_agrees() {
    let Some(shop) = shop(Faults::default()).await else { return };
    run_checkouts(&shop, &[Branch::Confirmed]).await;
    let stats = shop.stats();
    assert_eq!(stats.total(|c| &c.duplicates), 0, "a calm run has no duplicates");
    assert_eq!(stats.total(|c| &c.dead_lettered), 0);
    shop.shut_down().await.unwrap();
}

#[tokio::test]
async fn out_of_stock_cancels_with_the_reason_and_takes_nothing() {
    let Some(shop) = shop(Faults::default()).await else { return };
    run_checkouts(&shop, &[Branch::OutOfStock]).await;
    shop.shut_down().await.unwrap();
}

#[tokio::test]
async fn a_declined_payment_releases_the_stock_and_cancels() {
    let Some(shop) = shop(Faults::default()).await else { return };
    run_checkouts(&shop, &[Branch::Declined]).await;
    shop.shut_down().await.unwrap();
}

#[tokio::test]
async fn an_undeliverable_order_is_refunded_released_and_cancelled() {
    let Some(shop) = shop(Faults::default()).await else { return };
    run_checkouts(&shop, &[Branch::CannotShip]).await;
    shop.shut_down().await.unwrap();
}

// ANCHOR: crash_before_relay
#[tokio::test]
async fn crash_after_commit_before_the_relay_publishes() {
    let all = Service::ALL.into_iter().collect();
    let faults = Faults { die_before_relay: all, ..Faults::default() };
    let Some(shop) = shop(faults).await else { return };
    run_checkouts(&shop, &BRANCHES).await;
    let stats = shop.stats();
    for service in Service::ALL {
        let counters = stats.of(service);
        assert_eq!(counters.crashes.load(Relaxed), 1, "{service:?} died once");
        // What it committed waited in its outbox while it was dead, and went
        // out after the restart: nothing was lost.
        assert!(counters.pending_at_crash.load(Relaxed) >= 1, "{service:?}");
    }
    shop.drained(WAIT).await.expect("every event published and marked, none failed");
    shop.shut_down().await.unwrap();
}
// ANCHOR_END: crash_before_relay

#[tokio::test]
async fn crash_of_the_relay_after_publish_before_mark() {
    let all = Service::ALL.into_iter().collect();
    let faults = Faults { relay_dies_before_mark: all, ..Faults::default() };
    let Some(shop) = shop(faults).await else { return };
    run_checkouts(&shop, &BRANCHES).await;
    // Each relay published a row, died before marking it, and its successor
    // published it again: the copies reach the consumers, whose inboxes absorb
    // them (the effects were checked above: each exactly once).
    let stats = shop.stats();
    let four_copies = |s: &choreography::shop::Stats| {
        s.total(|c| &c.relay_crashes) == 4 && s.total(|c| &c.duplicates) >= 4
    };
    shop.wait_until("four duplicates absorbed", WAIT, four_copies).await.unwrap();
    for service in Service::ALL {
        assert_eq!(stats.of(service).relay_crashes.load(Relaxed), 1, "{service:?}");
        assert_eq!(
            stats.of(service).crashes.load(Relaxed),
            0,
            "only the relay died"
        );
    }
    shop.drained(WAIT).await.expect("every event published and marked, none failed");
    shop.shut_down().await.unwrap();
}

#[tokio::test]
async fn crash_of_a_consumer_after_its_effect_before_its_offset_is_stored() {
    let all = Service::ALL.into_iter().collect();
    let faults = Faults { die_after_effect: all, ..Faults::default() };
    let Some(shop) = shop(faults).await else { return };
    run_checkouts(&shop, &BRANCHES).await;
    // The message whose offset was never stored comes again to the restarted
    // consumer, and its inbox says it was applied already.
    let redelivered = |s: &choreography::shop::Stats| {
        Service::ALL
            .iter()
            .all(|service| s.of(*service).duplicates.load(Relaxed) >= 1)
    };
    shop.wait_until("a redelivery at every service", WAIT, redelivered)
        .await
        .unwrap();
    for service in Service::ALL {
        assert_eq!(shop.stats().of(service).crashes.load(Relaxed), 1, "{service:?}");
    }
    shop.shut_down().await.unwrap();
}

#[tokio::test]
async fn a_step_that_fails_rewinds_and_its_message_comes_again() {
    let all = Service::ALL.into_iter().collect();
    let faults = Faults { fail_once: all, ..Faults::default() };
    let Some(shop) = shop(faults).await else { return };
    // Every checkout still ends as its branch says: the failed step's message came again.
    run_checkouts(&shop, &BRANCHES).await;
    for service in Service::ALL {
        let counters = shop.stats().of(service);
        assert_eq!(counters.rewound.load(Relaxed), 1, "{service:?} rewound once");
        assert_eq!(counters.crashes.load(Relaxed), 0, "{service:?} did not die");
    }
    shop.shut_down().await.unwrap();
}

#[tokio::test]
async fn unreadable_and_unknown_events_are_dead_lettered_and_the_checkout_goes_on() {
    let Some(shop) = shop(Faults::default()).await else { return };
    let topic = shop.topics().of(Service::Orders);
    let id = Uuid::new_v4().to_string();
    let headers = |kind: &str| {
        [
            (header::EVENT_ID, id.as_str()),
            (header::EVENT_TYPE, kind),
            (header::SCHEMA_VERSION, "1"),
            (header::CORRELATION_ID, "chk-poison"),
        ]
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header { key, value: Some(value) })
        })
    };
    // Same key as the good order: same partition, ahead of it.
    for (kind, payload) in [
        ("OrderPlaced", "{not json"),
        ("OrderTeleported", "{\"order_id\":\"o-ok\"}"),
    ] {
        let record = FutureRecord::to(&topic)
            .key("o-ok")
            .payload(payload)
            .headers(headers(kind));
        shop.producer().send(record, WAIT).await.map_err(|(e, _)| e).unwrap();
    }
    run_checkouts(&shop, &[Branch::Confirmed]).await;
    // Inventory, payments and shipping all read the orders topic: each
    // dead-lettered both, to its own dead-letter topic, and went on.
    for service in [Service::Inventory, Service::Payments, Service::Shipping] {
        assert_eq!(shop.stats().of(service).dead_lettered.load(Relaxed), 2);
    }
    let dlq = shop.topics().dead_letters(Service::Inventory);
    let reader =
        consumer(&infra::kafka_brokers(), &format!("{dlq}-reader")).unwrap();
    reader.subscribe(&[&dlq]).unwrap();
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let message = timeout(WAIT, reader.recv()).await.unwrap().unwrap();
        let reason = kafka_events::envelope::header_str(&message, header::DLQ_ERROR);
        assert_eq!(message.key(), Some(&b"o-ok"[..]));
        reasons.push(reason.unwrap_or_default().to_owned());
    }
    reasons.sort();
    assert!(
        reasons[0].starts_with("payload is not a valid OrderPlaced: "),
        "{reasons:?}"
    );
    assert_eq!(reasons[1], "unknown event type \"OrderTeleported\"");
    drop(reader);
    shop.shut_down().await.unwrap();
}

#[tokio::test]
async fn without_an_outbox_a_crash_between_commit_and_publish_loses_the_event() {
    let faults =
        Faults { dual_write: [Service::Inventory].into(), ..Faults::default() };
    let Some(shop) = shop(faults).await else { return };
    shop.place(Branch::Confirmed.order(), &correlation_id()).await.unwrap();
    // Inventory reserves, commits, dies before publishing; after the restart,
    // the redelivered OrderPlaced finds the work done and emits nothing.
    let redelivered = |s: &choreography::shop::Stats| {
        let inventory = s.of(Service::Inventory);
        inventory.crashes.load(Relaxed) == 1
            && inventory.duplicates.load(Relaxed) == 1
    };
    shop.wait_until("the redelivery", WAIT, redelivered).await.unwrap();
    let outcome = shop.outcome("o-ok").await.unwrap();
    assert!(matches!(outcome.hold, Some(Hold::Reserved { .. })), "stock is held");
    assert_eq!(outcome.stock["kettle"], 8);
    assert_eq!(shop.messages_in(Service::Inventory).await.unwrap(), 0, "never sent");
    let payment = outcome.payment.expect("payments heard of the order");
    assert!(!payment.stock_reserved, "and waits for StockReserved forever");
    let order = outcome.order.expect("the order exists");
    assert_eq!(
        order.status,
        OrderStatus::Placed,
        "never confirmed, never cancelled"
    );
    shop.shut_down().await.unwrap();
}

use std::sync::atomic::Ordering::Relaxed;
