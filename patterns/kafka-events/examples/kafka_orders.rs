//! The checkout publishes `OrderPlaced` events; a totals service consumes them at least once,
//! applies each exactly once, and a replay from the start rebuilds the same totals.
//!
//! Run it:   `cargo run --example kafka_orders`
//! Break it: `cargo run --example kafka_orders -- --crash-before-commit`  the consumer dies after
//!                                             applying an event, before committing its offset
//!           `cargo run --example kafka_orders -- --poison`  an undecodable event in the stream
//!
//! It uses the broker at `KAFKA_BROKERS` (127.0.0.1:9092 by default); when none answers, it starts
//! librdkafka's in-process mock cluster instead and says so.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use kafka_events::client::{consumer, create_topics, producer};
use kafka_events::consume::{DeadLetters, Handled, handle_next};
use kafka_events::envelope::{self, Event, Metadata, OrderPlaced};
use kafka_events::idempotent::{CustomerTotals, add_to_totals};
use kafka_events::produce::publish;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureRecord};
use tokio::time::timeout;
use tracing::{info, info_span, warn};
use uuid::Uuid;

const STEP: Duration = Duration::from_secs(30);

/// The totals service's state: its projection and the ids it has applied. In production both
/// live in one database and change in one transaction (see `idempotent::Store`).
#[derive(Default)]
struct Totals {
    applied: HashSet<Uuid>,
    by_customer: CustomerTotals,
}

impl Totals {
    // ANCHOR: apply
    fn apply(&mut self, event: &Event) {
        let id = event.metadata.event_id;
        if !self.applied.insert(id) {
            warn!(event_id = %short(id), "duplicate delivery of {}: already applied, skipped", event.order.order_id);
            return;
        }
        add_to_totals(&mut self.by_customer, &event.order);
        info!(event_id = %short(id), "applied {}: {} now at {:?}", event.order.order_id, event.order.customer_id, self.by_customer[&event.order.customer_id]);
    }
    // ANCHOR_END: apply
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags = infra::example::Flags::parse(&["--crash-before-commit", "--poison"])
        .map_err(anyhow::Error::msg)?;
    let (topic, dlq) = (
        format!("orders-{}", Uuid::new_v4().simple()),
        format!("orders-dlq-{}", Uuid::new_v4().simple()),
    );
    let (brokers, _mock) = brokers(&topic, &dlq).await?;
    let producer = producer(&brokers)?;

    let orders = [
        ("o-1001", "c-42", 2899),
        ("o-1002", "c-7", 1500),
        ("o-1003", "c-42", 399),
        ("o-1004", "c-9", 4200),
        ("o-1005", "c-7", 800),
    ];
    let checkout = info_span!("checkout", correlation_id = %"checkout-7f3a");
    for (i, (order_id, customer, cents)) in orders.iter().enumerate() {
        let event = OrderPlaced {
            order_id: (*order_id).into(),
            customer_id: (*customer).into(),
            total_cents: *cents,
            currency: "EUR".into(),
        };
        let (partition, offset) = publish(
            &producer,
            &topic,
            &Metadata::order_placed("checkout-7f3a", "2026-11-22T10:00:00Z"),
            &event,
        )
        .await?;
        checkout.in_scope(|| info!("published OrderPlaced {order_id} (key {order_id}) to partition {partition} at offset {offset}"));
        if i == 1 && flags.has("--poison") {
            let bad = FutureRecord::to(&topic)
                .key("o-????")
                .payload("{this is not json")
                .headers(
                    Metadata::order_placed("checkout-7f3a", "now").to_headers(),
                );
            producer.send(bad, STEP).await.map_err(|(e, _)| e)?;
            checkout.in_scope(|| {
                warn!("published a poison event (its payload is not JSON)")
            });
        }
    }
    let expected = orders.len() + usize::from(flags.has("--poison"));

    let group = format!("totals-{}", Uuid::new_v4().simple());
    let dead_letters =
        DeadLetters { producer: producer.clone(), topic: dlq.clone() };
    let mut totals = Totals::default();
    let span = info_span!("totals-service");
    let mut handled = 0;
    let mut service = subscribe(&brokers, &group, &topic)?;
    if flags.has("--crash-before-commit") {
        // The first event is applied, then the process dies before the offset is committed.
        let message =
            timeout(STEP, service.recv()).await.context("no event arrived")??;
        let event = envelope::decode(&message)?;
        span.in_scope(|| totals.apply(&event));
        span.in_scope(|| {
            warn!(
                "crash! the offset of {} was never committed",
                event.order.order_id
            )
        });
        drop(message);
        drop(service);
        service = subscribe(&brokers, &group, &topic)?;
        span.in_scope(|| info!("restarted in the same group: consumption resumes from the last committed offset"));
    }
    while handled < expected {
        let step = handle_next(&service, &dead_letters, |event| async {
            span.in_scope(|| totals.apply(&event));
            Ok::<_, anyhow::Error>(event)
        });
        match timeout(STEP, step)
            .await
            .context("the consumer saw nothing for 30 s")??
        {
            Handled::Processed(_) => handled += 1,
            Handled::DeadLettered(error) => {
                handled += 1;
                span.in_scope(|| {
                    warn!("dead-lettered to {dlq}: {error}; the consumer goes on")
                });
            }
        }
    }
    drop(service);

    // ANCHOR: replay
    // A new group, reading from the earliest offset, rebuilds the projection from history.
    let replay =
        subscribe(&brokers, &format!("replay-{}", Uuid::new_v4().simple()), &topic)?;
    // It only reads: no effects, no commits, and events that were dead-lettered are skipped.
    let mut rebuilt = CustomerTotals::new();
    for _ in 0..expected {
        let message =
            timeout(STEP, replay.recv()).await.context("replay stalled")??;
        if let Ok(event) = envelope::decode(&message) {
            add_to_totals(&mut rebuilt, &event.order);
        }
    }
    // ANCHOR_END: replay
    info!("live totals:   {:?}", totals.by_customer);
    info!("replay totals: {:?}", rebuilt);
    ensure!(
        totals.applied.len() == orders.len(),
        "every order applied exactly once"
    );
    ensure!(
        rebuilt == totals.by_customer,
        "a replay must rebuild the same projection"
    );
    ensure!(totals.by_customer["c-42"] == (2, 2899 + 399), "c-42 placed two orders");
    info!("done: each order applied once, and the replay agrees");
    Ok(())
}

fn subscribe(
    brokers: &str,
    group: &str,
    topic: &str,
) -> anyhow::Result<StreamConsumer> {
    let consumer = consumer(brokers, group)?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// The real broker if one answers, else an in-process mock cluster (kept alive by the caller).
async fn brokers(
    topic: &str,
    dlq: &str,
) -> anyhow::Result<(String, Option<MockCluster<'static, DefaultProducerContext>>)> {
    let brokers = infra::kafka_brokers();
    // Nothing listening at all: no need to wait for the client's own connection retries.
    let listening = matches!(
        timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(infra::first_kafka_broker())
        )
        .await,
        Ok(Ok(_))
    );
    let created = if listening {
        timeout(
            Duration::from_secs(10),
            create_topics(&brokers, &[(topic, 3), (dlq, 1)]),
        )
        .await
        .ok()
    } else {
        None
    };
    match created {
        Some(Ok(())) => {
            info!("using the Kafka broker at {brokers}");
            Ok((brokers, None))
        }
        _ if infra::brokers_required() => bail!(
            "no Kafka broker answers at {brokers}: start one with `cargo xtask brokers up`"
        ),
        _ => {
            let mock = MockCluster::new(1)?;
            mock.create_topic(topic, 3, 1)?;
            mock.create_topic(dlq, 1, 1)?;
            info!(
                "no Kafka broker at {brokers}; using librdkafka's in-process mock cluster (start a real one with `cargo xtask brokers up`)"
            );
            Ok((mock.bootstrap_servers(), Some(mock)))
        }
    }
}
