//! The checkout publishes `OrderPlaced` events; a totals service consumes them at least once,
//! applies each exactly once, and a replay from the start rebuilds the same totals.
//!
//! Run it:   `cargo run --example kafka_orders`
//! Break it: `cargo run --example kafka_orders -- --fail-once`  the handler fails on one event;
//!                                             the consumer retries it before going on
//!           `cargo run --example kafka_orders -- --crash-before-commit`  the service dies
//!                                             after applying an event, before its offset is
//!                                             stored; processed ids live in PostgreSQL
//!           `cargo run --example kafka_orders -- --poison`  an undecodable event in the stream
//!
//! It uses the broker at `KAFKA_BROKERS` (127.0.0.1:9092 by default); when none answers, it starts
//! librdkafka's in-process mock cluster instead and says so. `--crash-before-commit` also needs
//! PostgreSQL at `DATABASE_URL`, because that is where the memory of processed events must live
//! for it to survive a crash.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use kafka_events::client::{consumer, create_topics, producer};
use kafka_events::consume::{DeadLetters, Handled, StepError, handle_next};
use kafka_events::envelope::{self, Event, Metadata, OrderPlaced};
use kafka_events::idempotent::{CustomerTotals, Store, add_to_totals};
use kafka_events::produce::publish;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureRecord};
use tokio::time::timeout;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;

const STEP: Duration = Duration::from_secs(30);
/// How often the consumer retries a failing event before it stops.
const ATTEMPTS: u32 = 5;

/// Where the totals service keeps its projection and the ids it has applied.
enum Projection {
    /// In process memory: gone when the process dies. Fine while nothing crashes.
    Memory { applied: HashSet<Uuid>, totals: CustomerTotals },
    /// In PostgreSQL, id and effect in one transaction: it outlives a crash.
    Postgres(Store),
}

impl Projection {
    // ANCHOR: apply
    /// Applies the event's effect unless this event was applied before.
    async fn apply(&mut self, event: &Event) -> anyhow::Result<()> {
        let (id, order) = (short(event.metadata.event_id), &event.order);
        let first_time = match self {
            Projection::Memory { applied, totals } => {
                let first_time = applied.insert(event.metadata.event_id);
                if first_time {
                    add_to_totals(totals, order);
                }
                first_time
            }
            Projection::Postgres(store) => store.apply_once(event).await?,
        };
        let order_id = &order.order_id;
        if first_time {
            info!(event_id = %id, "applied {order_id} for {}", order.customer_id);
        } else {
            warn!(event_id = %id, "duplicate delivery of {order_id}: skipped");
        }
        Ok(())
    }
    // ANCHOR_END: apply

    async fn totals(&self) -> anyhow::Result<CustomerTotals> {
        match self {
            Projection::Memory { totals, .. } => Ok(totals.clone()),
            Projection::Postgres(store) => Ok(store.totals().await?),
        }
    }
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let known = ["--fail-once", "--crash-before-commit", "--poison"];
    let flags = infra::example::Flags::parse(&known).map_err(anyhow::Error::msg)?;
    let run = Uuid::new_v4().simple().to_string();
    let (topic, dlq) = (format!("orders-{run}"), format!("orders-dlq-{run}"));
    let (brokers, _mock) = brokers(&topic, &dlq).await?;
    let producer = producer(&brokers)?;
    let schema = format!("totals_{run}");
    let crash = flags.has("--crash-before-commit");
    let mut projection = if crash {
        Projection::Postgres(postgres_store(&schema).await?)
    } else {
        Projection::Memory { applied: HashSet::new(), totals: CustomerTotals::new() }
    };

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
        // Every event gets its own id: the id is what makes a redelivery recognisable.
        let metadata =
            Metadata::order_placed("checkout-7f3a", "2026-11-22T10:00:00Z");
        let (partition, offset) = publish(&producer, &topic, &metadata, &event)
            .instrument(checkout.clone())
            .await?;
        checkout.in_scope(|| {
            info!("published {order_id} (key {order_id}) to partition {partition} at offset {offset}")
        });
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

    let group = format!("totals-{run}");
    let dead_letters =
        DeadLetters { producer: producer.clone(), topic: dlq.clone() };
    let span = info_span!("totals-service");
    let mut service = subscribe(&brokers, &group, &topic)?;
    if crash {
        // The first event is applied, then the process dies before its offset is
        // stored, so no commit can ever include it. Its pool of PostgreSQL
        // connections dies with it; only what PostgreSQL committed survives.
        let message =
            timeout(STEP, service.recv()).await.context("no event arrived")??;
        let event = envelope::decode(&message)?;
        projection.apply(&event).instrument(span.clone()).await?;
        span.in_scope(|| {
            warn!(
                "crash! {} was applied, its offset never stored",
                event.order.order_id
            )
        });
        drop(message);
        drop(service);
        drop(projection);
        service = subscribe(&brokers, &group, &topic)?;
        projection = Projection::Postgres(postgres_store(&schema).await?);
        // Nothing was stored, so nothing was committed: the new member starts where
        // auto.offset.reset says. With `latest`, the unstored event would be skipped.
        span.in_scope(|| {
            info!(
                "restarted: the group has no committed offset yet; \
                 auto.offset.reset=earliest starts it at the first event"
            )
        });
    }
    let mut failed_once = false;
    let mut handled = 0;
    // Failed attempts per message (partition, offset): other partitions' successes
    // in between must not reset the count of the message that keeps failing.
    let mut failures: HashMap<(i32, i64), u32> = HashMap::new();
    while handled < expected {
        let step = handle_next(&service, &dead_letters, |event| async {
            if flags.has("--fail-once")
                && event.order.order_id == "o-1003"
                && !failed_once
            {
                failed_once = true;
                bail!("the totals database timed out");
            }
            projection.apply(&event).await?;
            Ok(event)
        });
        let outcome = timeout(STEP, step.instrument(span.clone()))
            .await
            .context("the consumer saw nothing for 30 s")?;
        match outcome {
            Ok(Handled::Processed(_)) => handled += 1,
            Ok(Handled::DeadLettered(error)) => {
                handled += 1;
                span.in_scope(|| {
                    warn!("dead-lettered to {dlq}: {error}; the consumer goes on")
                });
            }
            // ANCHOR: retry
            Err(StepError::Handler { partition, offset, error }) => {
                let attempt = failures.entry((partition, offset)).or_insert(0);
                *attempt += 1;
                let why = format!("{partition}/{offset} failed: {error}");
                if *attempt == ATTEMPTS {
                    bail!("the consumer stops after {ATTEMPTS} attempts: {why}");
                }
                let pause = Duration::from_millis(100 << *attempt);
                warn!(parent: &span, "{why}; retry {attempt} in {pause:?}");
                tokio::time::sleep(pause).await;
            }
            // ANCHOR_END: retry
            Err(e) => bail!("the consumer stops, nothing skipped: {e}"),
        }
    }
    drop(service);

    // ANCHOR: replay
    // A new group, reading from the earliest offset, rebuilds the projection.
    let replay_group = format!("replay-{}", Uuid::new_v4().simple());
    let replay = subscribe(&brokers, &replay_group, &topic)?;
    // It only reads: no effects, no commits; dead-lettered events are skipped.
    let mut rebuilt = CustomerTotals::new();
    for _ in 0..expected {
        let message =
            timeout(STEP, replay.recv()).await.context("replay stalled")??;
        match envelope::decode(&message) {
            Ok(event) => add_to_totals(&mut rebuilt, &event.order),
            Err(e) => info!("replay: skips the event it cannot decode: {e}"),
        }
    }
    // ANCHOR_END: replay
    let live = projection.totals().await?;
    info!("live totals:   {live:?}");
    info!("replay totals: {rebuilt:?}");
    ensure!(
        live["c-42"] == (2, 2899 + 399),
        "c-42 placed two orders, counted once each"
    );
    ensure!(
        live.values().map(|t| t.0).sum::<i64>() == 5,
        "five orders, each applied once"
    );
    ensure!(rebuilt == live, "a replay must rebuild the same projection");
    if let Projection::Postgres(store) = projection {
        store.drop_schema().await?;
    }
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

/// The totals service's durable store, or one line on how to get PostgreSQL.
async fn postgres_store(schema: &str) -> anyhow::Result<Store> {
    let url = infra::database_url();
    match timeout(Duration::from_secs(10), Store::connect(&url, schema, "totals"))
        .await
    {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => bail!(
            "--crash-before-commit keeps processed ids in PostgreSQL, so they outlive \
             the crash; it did not answer at {url} ({e}): run `cargo xtask brokers up`"
        ),
        Err(_) => bail!("PostgreSQL at {url} did not answer within 10 s"),
    }
}

/// The real broker if one answers, else an in-process mock cluster (kept alive by the caller).
async fn brokers(
    topic: &str,
    dlq: &str,
) -> anyhow::Result<(String, Option<MockCluster<'static, DefaultProducerContext>>)> {
    let brokers = infra::kafka_brokers();
    // Nothing listening at all: no need to wait for the client's own connection retries.
    let connect = tokio::net::TcpStream::connect(infra::first_kafka_broker());
    let listening =
        matches!(timeout(Duration::from_secs(1), connect).await, Ok(Ok(_)));
    let created = if listening {
        let topics = [(topic, 3), (dlq, 1)];
        let create = create_topics(&brokers, &topics);
        match timeout(Duration::from_secs(10), create).await {
            Ok(created) => created.map_err(anyhow::Error::from),
            Err(_) => Err(anyhow::anyhow!("creating the topics took over 10 s")),
        }
    } else {
        Err(anyhow::anyhow!("nothing listens there"))
    };
    match created {
        Ok(()) => {
            info!("using the Kafka broker at {brokers}");
            Ok((brokers, None))
        }
        Err(e) if infra::brokers_required() => bail!(
            "no Kafka broker answers at {brokers} ({e}): \
             start one with `cargo xtask brokers up`"
        ),
        Err(e) => {
            let mock = MockCluster::new(1)?;
            mock.create_topic(topic, 3, 1)?;
            mock.create_topic(dlq, 1, 1)?;
            info!(
                "no usable Kafka broker at {brokers} ({e}); using librdkafka's \
                 in-process mock cluster (start a real one with `cargo xtask brokers up`)"
            );
            Ok((mock.bootstrap_servers(), Some(mock)))
        }
    }
}
