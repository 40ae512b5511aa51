//! The orders service places orders and writes each `OrderPlaced` event into its outbox in the
//! same transaction; a relay publishes the outbox to Kafka; billing charges each order once,
//! with an inbox next to its charges.
//!
//! Run it:   `cargo run --example outbox_relay`
//! Break it: `cargo run --example outbox_relay -- --crash-relay`  the relay dies after
//!                                 publishing two events and before marking them sent; its
//!                                 restart publishes them again and billing's inbox absorbs them
//!           `cargo run --example outbox_relay -- --late-commit`  the first order's transaction
//!                                 commits after later orders were published; it is not skipped
//!           `cargo run --example outbox_relay -- --dual-write`  no outbox: commit, then
//!                                 publish, and the service dies in between; the event is lost
//!
//! Needs PostgreSQL at `DATABASE_URL` and a Kafka API broker at `KAFKA_BROKERS` (both started by
//! `cargo xtask brokers up`); without them it says so in one line.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use deadpool_postgres::Pool;
use kafka_events::client::{consumer, create_topics, producer};
use kafka_events::consume::{DeadLetters, Handled, handle_next};
use kafka_events::envelope::{Event, Metadata, OrderPlaced, header};
use kafka_events::produce::publish;
use outbox::faults::{FaultPlan, FaultyPublisher};
use outbox::relay::{Relay, RelayStats};
use outbox::{OutboxEvent, counts, enqueue, inbox, migrate};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_postgres::Client;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;

const STEP: Duration = Duration::from_secs(30);
const CORRELATION_ID: &str = "checkout-5e1d";
/// The envelope's `occurred-at`, fixed as in the Kafka chapter's example.
const OCCURRED_AT: &str = "2026-11-22T10:00:00Z";

/// The orders of the run: id, customer, total in cents.
const ORDERS: [(&str, &str, u64); 3] =
    [("o-1001", "c-42", 2899), ("o-1002", "c-7", 1500), ("o-1003", "c-42", 399)];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let known = ["--crash-relay", "--late-commit", "--dual-write"];
    let flags = infra::example::Flags::parse(&known).map_err(anyhow::Error::msg)?;
    let mut shop = Shop::start().await?;
    let orders = info_span!("orders", correlation_id = %CORRELATION_ID);

    let expected_deliveries = if flags.has("--dual-write") {
        // Commit, then publish, with nothing tying the two together.
        for (i, order) in ORDERS.iter().enumerate() {
            let metadata =
                shop.place_without_outbox(order).instrument(orders.clone()).await?;
            if i == 1 {
                warn!(parent: &orders, "crash! {} is committed, its event never published", order.0);
                continue; // the restarted service has no idea it owes an event
            }
            publish(&shop.producer, &shop.topic, &metadata, &order_placed(order))
                .await?;
            info!(parent: &orders, "published OrderPlaced for {} after the commit", order.0);
        }
        2
    } else {
        let faults = if flags.has("--crash-relay") {
            FaultPlan { die_after: Some(2), ..FaultPlan::default() }
        } else {
            FaultPlan::default()
        };
        let (stop, relay) = if flags.has("--late-commit") {
            // The relay is already running while the orders are placed.
            let relay = shop.start_relay(faults);
            shop.place_first_order_late().instrument(orders.clone()).await?;
            relay
        } else {
            for order in &ORDERS {
                shop.place(order).instrument(orders.clone()).await?;
            }
            shop.start_relay(faults)
        };
        shop.wait_until_sent(ORDERS.len() as i64).await?;
        stop.send(true)?;
        let stats = relay.await??;
        info!(parent: &info_span!("relay"), "stopped: {} events published", stats.published);
        if flags.has("--crash-relay") { 5 } else { 3 }
    };

    let billing = info_span!("billing");
    let (charges, duplicates) =
        shop.bill(expected_deliveries).instrument(billing.clone()).await?;
    let placed = shop.placed().await?;
    info!("orders placed: {placed:?}");
    info!("charges:       {charges:?}");
    if flags.has("--dual-write") {
        ensure!(placed.len() == 3 && charges.len() == 2, "one event should be lost");
        ensure!(!charges.contains_key("o-1002"), "o-1002 was never announced");
        warn!(
            "LOST: o-1002 is placed, but billing never heard of it and never will"
        );
        info!(
            "done: without an outbox, a crash between commit and publish loses the event"
        );
    } else {
        ensure!(charges == placed, "every placed order is charged, exactly once");
        if flags.has("--late-commit") {
            ensure!(shop.sent_last().await? == "o-1001", "o-1001 went out last");
        }
        let orders_db = shop.orders_db.get().await?;
        let counts = counts(&orders_db, &shop.orders_schema).await?;
        ensure!(
            (counts.pending, counts.failed) == (0, 0),
            "outbox drained: {counts:?}"
        );
        info!(
            "done: {} orders placed, each charged once ({expected_deliveries} deliveries, \
             {duplicates} duplicates absorbed by the inbox)",
            placed.len()
        );
    }
    shop.clean_up().await
}

/// Both services' databases (a connection pool each), the topics and the producer.
struct Shop {
    url: String,
    brokers: String,
    topic: String,
    dlq: String,
    producer: FutureProducer,
    orders_schema: String,
    orders_db: Pool,
    billing_schema: String,
    billing_db: Pool,
}

impl Shop {
    /// Connects to PostgreSQL and Kafka, or explains in one line what to start.
    async fn start() -> anyhow::Result<Shop> {
        let (url, brokers) = (infra::database_url(), infra::kafka_brokers());
        let hint = "start them with `cargo xtask brokers up` (or `docker compose up -d --wait`)";
        let run = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let (topic, dlq) = (format!("orders-{run}"), format!("orders-dlq-{run}"));
        // Orders needs two connections at once for `--late-commit`, and one
        // more to watch its outbox; billing applies one event at a time.
        let (orders_db, billing_db) =
            match (connect(&url, 3).await, connect(&url, 1).await) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => bail!(
                    "this example needs PostgreSQL at {url} and Kafka at {brokers}; \
                 PostgreSQL did not answer ({e:#}): {hint}"
                ),
            };
        let listening = timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(infra::first_kafka_broker()),
        );
        let created = match listening.await {
            Ok(Ok(_)) => {
                let topics = [(topic.as_str(), 3), (dlq.as_str(), 1)];
                let create = create_topics(&brokers, &topics);
                timeout(Duration::from_secs(10), create)
                    .await
                    .ok()
                    .and_then(|r| r.ok())
            }
            _ => None,
        };
        if created.is_none() {
            bail!(
                "this example needs PostgreSQL at {url} and Kafka at {brokers}; \
                 Kafka did not answer: {hint}"
            );
        }
        let (orders_schema, billing_schema) =
            (format!("orders_{run}"), format!("billing_{run}"));
        let db = orders_db.get().await?;
        migrate(&db, &orders_schema).await?;
        db.batch_execute(&format!(
            "CREATE TABLE {orders_schema}.orders (order_id TEXT PRIMARY KEY,
                     customer_id TEXT NOT NULL, total_cents BIGINT NOT NULL)"
        ))
        .await?;
        let db = billing_db.get().await?;
        migrate(&db, &billing_schema).await?;
        db.batch_execute(&format!(
            "CREATE TABLE {billing_schema}.charges (order_id TEXT PRIMARY KEY,
                     cents BIGINT NOT NULL)"
        ))
        .await?;
        drop(db);
        info!("using PostgreSQL at {url} and Kafka at {brokers}");
        let producer = producer(&brokers)?;
        Ok(Shop {
            url,
            brokers,
            topic,
            dlq,
            producer,
            orders_schema,
            orders_db,
            billing_schema,
            billing_db,
        })
    }

    // ANCHOR: place
    /// Places an order: the order row and its `OrderPlaced` event, one commit.
    async fn place(&mut self, order: &(&str, &str, u64)) -> anyhow::Result<()> {
        let (schema, topic) = (&self.orders_schema, &self.topic);
        let mut db = self.orders_db.get().await?;
        let tx = db.transaction().await?;
        let event = insert_order(&tx, schema, topic, order).await?;
        tx.commit().await?; // both, or neither
        let id = short(event.id);
        info!(
            "placed {} ({} cents); OrderPlaced {id} in the same commit",
            order.0, order.2
        );
        Ok(())
    }
    // ANCHOR_END: place

    /// `--late-commit`: o-1001's transaction writes first (lowest `seq`) but commits
    /// only after o-1002 and o-1003 are committed AND published.
    async fn place_first_order_late(&mut self) -> anyhow::Result<()> {
        let mut slow_db = self.orders_db.get().await?;
        let slow = slow_db.transaction().await?;
        let event =
            insert_order(&slow, &self.orders_schema, &self.topic, &ORDERS[0])
                .await?;
        info!(
            "o-1001: order and OrderPlaced {} written, not committed yet",
            short(event.id)
        );
        for order in &ORDERS[1..] {
            self.place(order).await?;
        }
        self.wait_until_sent(2).await?;
        info!(
            "o-1002 and o-1003 are published; a watermark relay would now be past o-1001"
        );
        slow.commit().await?;
        info!(
            "o-1001 commits now, with a lower seq than what was already published"
        );
        Ok(())
    }

    /// `--dual-write`: the order is committed, and the event is the caller's job.
    async fn place_without_outbox(
        &mut self,
        order: &(&str, &str, u64),
    ) -> anyhow::Result<Metadata> {
        let insert =
            format!("INSERT INTO {}.orders VALUES ($1, $2, $3)", self.orders_schema);
        let (order_id, customer_id, cents) = order;
        let db = self.orders_db.get().await?;
        db.execute(&insert, &[order_id, customer_id, &(*cents as i64)]).await?;
        info!("placed {order_id} ({cents} cents); committed, no outbox");
        Ok(Metadata::order_placed(CORRELATION_ID, OCCURRED_AT))
    }

    // ANCHOR: supervise
    /// Runs the relay in the background until `stop` says so. When it dies, a new
    /// relay takes over, as a process supervisor would restart it. The first relay
    /// follows the fault plan `faults` (`--crash-relay`); its successors do not.
    fn start_relay(
        &self,
        faults: FaultPlan,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<anyhow::Result<RelayStats>>)
    {
        let (stop, stopped) = watch::channel(false);
        let (url, schema) = (self.url.clone(), self.orders_schema.clone());
        let producer = self.producer.clone();
        let supervise = async move {
            let mut faults = faults;
            loop {
                let plan = std::mem::take(&mut faults);
                let publisher = FaultyPublisher::new(producer.clone(), plan);
                let relay = Relay::connect(&url, &schema, publisher.clone()).await?;
                let mut stopped = stopped.clone();
                let until = async move {
                    // A sender that is gone can never say stop: take it as one.
                    if stopped.wait_for(|stop| *stop).await.is_err() {
                        warn!("the stop signal is gone: the relay stops");
                    }
                };
                tokio::select! {
                    stats = relay.run(until) => return Ok(stats?),
                    // Dead: the relay, its connection and its transaction go.
                    _ = publisher.died() => {
                        let why = "its unmarked events are pending";
                        warn!("restarting the relay: {why}");
                    }
                }
            }
        };
        (stop, tokio::spawn(supervise.instrument(info_span!("relay"))))
    }
    // ANCHOR_END: supervise

    /// Waits (bounded) until `n` outbox rows are sent.
    async fn wait_until_sent(&self, n: i64) -> anyhow::Result<()> {
        let db = self.orders_db.get().await?;
        let waiting = async {
            while counts(&db, &self.orders_schema).await?.sent < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(())
        };
        timeout(STEP, waiting)
            .await
            .context("the relay did not publish within 30 s")?
    }

    /// Billing consumes `deliveries` messages and charges each order once. Returns
    /// the charges and how many deliveries the inbox absorbed.
    async fn bill(&mut self, deliveries: usize) -> anyhow::Result<(Placed, usize)> {
        let group = format!("billing-{}", Uuid::new_v4().simple());
        let consumer: StreamConsumer = consumer(&self.brokers, &group)?;
        consumer.subscribe(&[&self.topic])?;
        let dead_letters =
            DeadLetters { producer: self.producer.clone(), topic: self.dlq.clone() };
        let mut duplicates = 0;
        let mut db = self.billing_db.get().await?;
        for _ in 0..deliveries {
            let (db, schema) = (&mut db, self.billing_schema.as_str());
            let step = handle_next(&consumer, &dead_letters, |event| async {
                let charged = charge_once(db, schema, &event).await?;
                let (m, order) = (&event.metadata, &event.order);
                let (order_id, cents) = (&order.order_id, order.total_cents);
                let (correlation_id, event_id) =
                    (&m.correlation_id, short(m.event_id));
                if charged {
                    info!(%correlation_id, %event_id, "charged {order_id} {cents} cents");
                } else {
                    duplicates += 1;
                    warn!(
                        %correlation_id, %event_id,
                        "duplicate of {order_id}: already charged, skipped"
                    );
                }
                anyhow::Ok(event)
            });
            match timeout(STEP, step)
                .await
                .context("billing saw nothing for 30 s")?
            {
                Ok(Handled::Processed(_)) => {}
                Ok(Handled::DeadLettered(e)) => bail!("unexpected dead letter: {e}"),
                Err(e) => bail!("billing failed: {e}"),
            }
        }
        let sql =
            format!("SELECT order_id, cents FROM {}.charges", self.billing_schema);
        let rows = db.query(&sql, &[]).await?;
        Ok((rows.iter().map(|r| (r.get(0), r.get(1))).collect(), duplicates))
    }

    async fn placed(&self) -> anyhow::Result<Placed> {
        let sql = format!(
            "SELECT order_id, total_cents FROM {}.orders",
            self.orders_schema
        );
        let rows = self.orders_db.get().await?.query(&sql, &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The aggregate of the outbox row the relay sent last.
    async fn sent_last(&self) -> anyhow::Result<String> {
        let sql = format!(
            "SELECT aggregate_id FROM {}.outbox ORDER BY sent_at DESC, seq DESC LIMIT 1",
            self.orders_schema
        );
        Ok(self.orders_db.get().await?.query_one(&sql, &[]).await?.get(0))
    }

    async fn clean_up(self) -> anyhow::Result<()> {
        for schema in [&self.orders_schema, &self.billing_schema] {
            let drop = format!(
                "SET client_min_messages TO warning; DROP SCHEMA {schema} CASCADE"
            );
            self.orders_db.get().await?.batch_execute(&drop).await?;
        }
        Ok(())
    }
}

/// Order id -> cents.
type Placed = BTreeMap<String, i64>;

/// Writes the order row and its `OrderPlaced` outbox row in `tx`.
async fn insert_order(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    topic: &str,
    (order_id, customer_id, cents): &(&str, &str, u64),
) -> anyhow::Result<OutboxEvent> {
    let insert = format!("INSERT INTO {schema}.orders VALUES ($1, $2, $3)");
    tx.execute(&insert, &[order_id, customer_id, &(*cents as i64)]).await?;
    let metadata = Metadata::order_placed(CORRELATION_ID, OCCURRED_AT);
    let event = outbox_event(topic, &metadata, &(*order_id, *customer_id, *cents))?;
    enqueue(tx, schema, &event).await?;
    Ok(event)
}

// ANCHOR: charge_once
/// Billing's effect: one charge per order, guarded by the inbox in the same
/// transaction. Returns whether this delivery charged.
async fn charge_once(
    db: &mut Client,
    schema: &str,
    event: &Event,
) -> anyhow::Result<bool> {
    let (id, order) = (event.metadata.event_id, &event.order);
    let tx = db.transaction().await?;
    let first = inbox::first_delivery(&tx, schema, "billing", id).await?;
    if first {
        let charge = format!("INSERT INTO {schema}.charges VALUES ($1, $2)");
        let cents = order.total_cents as i64;
        tx.execute(&charge, &[&order.order_id, &cents]).await?;
    }
    tx.commit().await?; // the event id and the charge, or neither
    Ok(first)
}
// ANCHOR_END: charge_once

/// The outbox row for an `OrderPlaced` event, in the Kafka chapter's envelope:
/// the same id and headers as if it were published directly.
fn outbox_event(
    topic: &str,
    metadata: &Metadata,
    order: &(&str, &str, u64),
) -> anyhow::Result<OutboxEvent> {
    Ok(OutboxEvent {
        id: metadata.event_id,
        aggregate_id: order.0.to_owned(),
        topic: topic.to_owned(),
        event_type: metadata.event_type.clone(),
        payload: serde_json::to_vec(&order_placed(order))?,
        headers: vec![
            (header::SCHEMA_VERSION.into(), metadata.schema_version.to_string()),
            (header::OCCURRED_AT.into(), metadata.occurred_at.clone()),
            (header::CORRELATION_ID.into(), metadata.correlation_id.clone()),
        ],
    })
}

fn order_placed((order_id, customer_id, cents): &(&str, &str, u64)) -> OrderPlaced {
    OrderPlaced {
        order_id: (*order_id).into(),
        customer_id: (*customer_id).into(),
        total_cents: *cents,
        currency: "EUR".into(),
    }
}

/// A service's own pool of up to `size` connections to `url`, once one of them
/// has connected: a PostgreSQL that is not there is reported at the start.
async fn connect(url: &str, size: usize) -> anyhow::Result<Pool> {
    let pool = outbox::pool(url, size)?;
    let first = timeout(Duration::from_secs(5), pool.get())
        .await
        .context("no answer within 5 s")??;
    drop(first); // back into the pool, open, for the first to ask
    Ok(pool)
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}
