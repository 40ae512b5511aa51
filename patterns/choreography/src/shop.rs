//! The whole choreography in one process: four services, each with its own schema, its own
//! Kafka consumer group and its own outbox relay, under a supervisor that restarts whatever dies.
//!
//! Each service runs as a "process": a consumer loop and a relay task that live and die
//! together. A [`Faults`] plan kills them at the boundaries where distributed systems lose or
//! repeat work:
//!
//! - `die_before_relay`: the service commits its first effect (state + outbox rows) and dies
//!   before its relay has published anything (its relay does not run in its first life).
//! - `relay_dies_before_mark`: the relay publishes a row and dies before marking it sent; the
//!   next relay publishes it again.
//! - `die_after_effect`: the consumer commits its first effect and dies before storing the
//!   message's offset; the restarted consumer receives the message again.
//! - `dual_write`: the service has no outbox: it commits, then publishes, and in its first life
//!   dies in between, on its first effect that emits something.
//! - `fail_once`: the service's first handling fails before it touches anything (as when its
//!   database does not answer): the step rewinds, and the message comes again after a pause.
//!
//! Tests and examples wait on conditions with a deadline: every commit bumps a counter that
//! [`Shop::wait_until`] and [`Shop::settle`] wait on, so nothing sleeps to synchronise.
//!
//! This file is the shop's API (start, place an order, wait, look, shut down). Each service's
//! process (consumer loop, supervisor, fault seams) is in `process.rs`, its relay in
//! `relaying.rs`, and the auditor's view of an order in `outcome.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use deadpool_postgres::Pool;
use kafka_events::client::{consumer, create_topics, producer};
use outbox::faults::{FaultPlan, FaultyPublisher};
use outbox::relay::{Publisher, Relay, RelayConfig};
use rdkafka::consumer::Consumer;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use shop_domain::inventory::{Hold, Inventory};
use shop_domain::orders::{Order, OrderStatus, Orders};
use shop_domain::payments::{Payment, PaymentStatus, Payments};
use shop_domain::shipping::{Shipment, ShipmentStatus, Shipping};
use shop_domain::{Kind, OrderPlaced, Reaction, Seed, Service as ServiceName};
use tokio::sync::{Mutex, Notify, broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, Span, info, info_span, warn};
use uuid::Uuid;

use crate::faults::DiesBeforePublishing;
use crate::service::{Delivery, Service, Tracing, incoming_span, span};
use crate::store::{Store, seed};
use crate::wire::{Topics, short};
use crate::{Error, Schemas, wire};

mod outcome;
mod process;
mod relaying;

/// A supervisor's pause before it restarts what died: one second, or `false` as
/// soon as the shop stops (or its stop signal is gone), so the supervisor ends.
async fn pause_before_restart(stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.wait_for(|stopped| *stopped) => false,
        () = tokio::time::sleep(Duration::from_secs(1)) => true,
    }
}

use kafka_events::consume::{DeadLetters, Handled, StepError, handle_with};
pub use outcome::Outcome;
use outcome::read_record;
use process::supervise;

/// Where each service dies once, in its first life. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Services that commit their first effect and die before their relay runs.
    pub die_before_relay: BTreeSet<ServiceName>,
    /// Services whose relay dies once between publishing a row and marking it.
    pub relay_dies_before_mark: BTreeSet<ServiceName>,
    /// Services whose consumer dies once after a commit, before storing the offset.
    pub die_after_effect: BTreeSet<ServiceName>,
    /// Services with no outbox: commit, then publish, dying in between once.
    pub dual_write: BTreeSet<ServiceName>,
    /// Services whose first handling fails once before it touches anything, as a database
    /// that did not answer makes it: the step rewinds and the message comes again.
    pub fail_once: BTreeSet<ServiceName>,
}

/// A shop to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Kafka bootstrap servers, `host:port[,...]`.
    pub brokers: String,
    /// Where the four schemas live (one PostgreSQL database).
    pub database_url: String,
    /// Names this shop's topics, groups and schemas: a fresh one per run.
    pub prefix: String,
    /// What the services' stores hold at the start.
    pub seed: Seed,
    /// Where each service dies; none by default.
    pub faults: Faults,
    /// How often an idle relay looks for rows nobody told it about. A service
    /// wakes its own relay after each commit; this only bounds the wait for rows
    /// left behind by an earlier life.
    pub relay_poll: Duration,
    /// How the services' events carry a checkout's trace; none by default.
    pub tracing: Option<Tracing>,
}

impl Config {
    /// A fresh shop (`prefix` gets a random suffix) with the given seed.
    pub fn new(brokers: &str, database_url: &str, prefix: &str, seed: Seed) -> Self {
        let prefix =
            format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..12]);
        Config {
            brokers: brokers.to_owned(),
            database_url: database_url.to_owned(),
            prefix,
            seed,
            faults: Faults::default(),
            relay_poll: Duration::from_millis(200),
            tracing: None,
        }
    }
}

/// What one service did so far, over all its lives.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages applied for the first time.
    pub applied: AtomicU64,
    /// Messages skipped because the inbox already had their id.
    pub duplicates: AtomicU64,
    /// Messages copied to the dead-letter topic because they could not be read.
    pub dead_lettered: AtomicU64,
    /// Steps that failed and rewound: the message's offset was not stored, and it came again.
    pub rewound: AtomicU64,
    /// Times the process died (consumer and relay together).
    pub crashes: AtomicU64,
    /// Times the relay alone died.
    pub relay_crashes: AtomicU64,
    /// Outbox rows this service's relays reported published.
    pub published: AtomicU64,
    /// Outbox rows still pending when the service died before its relay ran.
    pub pending_at_crash: AtomicU64,
    /// Lives whose consumer has joined its group and holds its partitions.
    pub ready: AtomicU64,
}

/// Counters of every service.
#[derive(Debug, Default)]
pub struct Stats {
    counters: [Counters; 4],
}

impl Stats {
    /// The counters of `service`.
    pub fn of(&self, service: ServiceName) -> &Counters {
        let i = ServiceName::ALL.iter().position(|s| *s == service).unwrap_or(0);
        &self.counters[i]
    }

    /// Every service's counters, on one line (for error messages).
    pub fn summary(&self) -> String {
        let line = |service: ServiceName| {
            let c = self.of(service);
            let n = |a: &AtomicU64| a.load(Relaxed);
            format!(
                "{}: {} applied, {} duplicates, {} crashes, {} relay crashes, {} lives joined",
                service.name(),
                n(&c.applied),
                n(&c.duplicates),
                n(&c.crashes),
                n(&c.relay_crashes),
                n(&c.ready)
            )
        };
        ServiceName::ALL.map(line).join("; ")
    }

    /// Sum of one counter over the four services.
    pub fn total(&self, counter: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.counters.iter().map(|c| counter(c).load(Relaxed)).sum()
    }
}

/// A service committed something about an order (for benchmarks and narration).
#[derive(Clone, Debug)]
pub struct Notice {
    /// The service that committed.
    pub service: ServiceName,
    /// The order it committed something about.
    pub order_id: String,
    /// The types of the events it put in its outbox (maybe none).
    pub emitted: Vec<Kind>,
}

/// What the processes share.
struct Shared {
    config: Config,
    topics: Topics,
    schemas: Schemas,
    producer: FutureProducer,
    stats: Arc<Stats>,
    progress: watch::Sender<u64>,
    notices: broadcast::Sender<Notice>,
    stop: watch::Receiver<bool>,
}

impl Shared {
    fn committed(&self, service: ServiceName, order_id: &str, emitted: Vec<Kind>) {
        let order_id = order_id.to_owned();
        // An error only says that nobody subscribes to notices now: nothing waits.
        if self.notices.send(Notice { service, order_id, emitted }).is_err() {
            tracing::trace!("a commit nobody waits for");
        }
        self.progress.send_modify(|n| *n += 1);
    }
}

/// A running shop.
pub struct Shop {
    shared: Arc<Shared>,
    orders_api: Mutex<Service<Orders>>,
    /// The auditor's pool: reads every schema, never writes a service's tables.
    reader: Pool,
    wakes: BTreeMap<ServiceName, Arc<Notify>>,
    kills: BTreeMap<ServiceName, Arc<Notify>>,
    orders_killed: AtomicBool,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Shop {
    /// Creates the topics and schemas, seeds the data, and starts the four
    /// services and their relays.
    pub async fn start(config: Config) -> Result<Shop, Error> {
        Shop::set_up(&config).await?;
        Shop::start_only(config, &ServiceName::ALL).await
    }

    /// Creates the topics and the four schemas and seeds them: what
    /// [`Shop::start`] does first. When the services run as separate processes,
    /// this runs once, and each process then calls [`Shop::start_only`]. It
    /// creates only what is missing: run again on a shop that has worked, it
    /// keeps its data (a seeded row already there is not reset).
    pub async fn set_up(config: &Config) -> Result<(), Error> {
        let topics = Topics::new(&config.prefix.replace('_', "-"));
        let schemas = Schemas::new(&config.prefix);
        let names = topics.all();
        let mut wanted: Vec<(&str, i32)> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            // Even entries are service topics, odd ones their dead letters.
            wanted.push((name.as_str(), if i % 2 == 0 { 3 } else { 1 }));
        }
        create_topics(&config.brokers, &wanted).await?;
        let url = &config.database_url;
        let orders =
            Service::<Orders>::connect(url, &schemas.orders, topics.clone());
        let orders = orders.await?;
        orders.migrate().await?;
        let inventory =
            Service::<Inventory>::connect(url, &schemas.inventory, topics.clone())
                .await?;
        inventory.migrate().await?;
        let payments =
            Service::<Payments>::connect(url, &schemas.payments, topics.clone())
                .await?;
        payments.migrate().await?;
        let shipping =
            Service::<Shipping>::connect(url, &schemas.shipping, topics.clone())
                .await?;
        shipping.migrate().await?;
        let (i, p, s) = (
            inventory.connection().await?,
            payments.connection().await?,
            shipping.connection().await?,
        );
        seed(&i, &p, &s, &schemas, &config.seed).await?;
        // The seeding services are done: their pools close here.
        drop((i, p, s, orders, inventory, payments, shipping));
        Ok(())
    }

    /// Starts `services` of a shop that [`Shop::set_up`] prepared, and returns
    /// once their consumers have joined their groups. Every `Shop` can place
    /// orders (through the orders service's tables) and read outcomes, whichever
    /// services it runs.
    pub async fn start_only(
        config: Config,
        services: &[ServiceName],
    ) -> Result<Shop, Error> {
        let topics = Topics::new(&config.prefix.replace('_', "-"));
        let schemas = Schemas::new(&config.prefix);
        let url = &config.database_url;
        let orders =
            Service::<Orders>::connect(url, &schemas.orders, topics.clone())
                .await?
                .with_tracing(config.tracing);
        let reader = connect(url).await?;

        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            producer: producer(&config.brokers)?,
            config,
            topics,
            schemas,
            stats: Arc::new(Stats::default()),
            progress: watch::channel(0).0,
            notices: broadcast::channel(4096).0,
            stop: stop_rx,
        });
        let mut shop = Shop {
            shared: shared.clone(),
            orders_api: Mutex::new(orders),
            reader,
            wakes: BTreeMap::new(),
            kills: BTreeMap::new(),
            orders_killed: AtomicBool::new(false),
            stop,
            tasks: Vec::new(),
        };
        for service in services {
            match service {
                ServiceName::Orders => shop.spawn::<Orders>(),
                ServiceName::Inventory => shop.spawn::<Inventory>(),
                ServiceName::Payments => shop.spawn::<Payments>(),
                ServiceName::Shipping => shop.spawn::<Shipping>(),
            }
        }
        // Up means joined: a consumer that dies while it is still joining its
        // group can leave a member behind that holds partitions until the
        // broker notices (never, with some brokers).
        let joined =
            |s: &Stats| services.iter().all(|x| s.of(*x).ready.load(Relaxed) > 0);
        let within = Duration::from_secs(60);
        if let Err(e) =
            shop.wait_until("every consumer joined", within, joined).await
        {
            if shop.stop.send(true).is_err() {
                warn!("no service task was left to stop");
            }
            return Err(e);
        }
        Ok(shop)
    }

    fn spawn<S: Store + 'static>(&mut self) {
        let (wake, kill) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        self.wakes.insert(S::SERVICE, wake.clone());
        self.kills.insert(S::SERVICE, kill.clone());
        let shared = self.shared.clone();
        self.tasks.push(tokio::spawn(supervise::<S>(shared, wake, kill)));
    }

    /// The shop's topic names, e.g. to publish to or read from one directly.
    pub fn topics(&self) -> &Topics {
        &self.shared.topics
    }

    /// The topics `service`'s consumer group reads: those of the services whose events it
    /// reacts to (to measure its lag, say).
    pub fn sources_of(&self, service: ServiceName) -> Vec<String> {
        let topics = &self.shared.topics;
        match service {
            ServiceName::Orders => process::sources::<Orders>(topics),
            ServiceName::Inventory => process::sources::<Inventory>(topics),
            ServiceName::Payments => process::sources::<Payments>(topics),
            ServiceName::Shipping => process::sources::<Shipping>(topics),
        }
    }

    /// The shop's schema names, e.g. to query a service's tables.
    pub fn schemas(&self) -> &Schemas {
        &self.shared.schemas
    }

    /// What each service did so far, for assertions and error messages.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The shop's own producer, e.g. for a test to publish a malformed message.
    pub fn producer(&self) -> &FutureProducer {
        &self.shared.producer
    }

    /// Every commit of every service, as it happens.
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.shared.notices.subscribe()
    }

    /// The customer's request: places an order through the orders service's
    /// API. `correlation_id` names the checkout in every service's events and
    /// logs (see [`correlation_id`] for a fresh one).
    pub async fn place(
        &self,
        order: OrderPlaced,
        correlation_id: &str,
    ) -> Result<(), Error> {
        let order_id = order.order_id.clone();
        let request_id = Uuid::new_v4();
        let emitted = self
            .orders_api
            .lock()
            .await
            .place(order, correlation_id, request_id)
            .await?;
        let kinds =
            emitted.iter().filter_map(|r| Kind::parse(&r.event_type)).collect();
        self.shared.committed(ServiceName::Orders, &order_id, kinds);
        let orders = ServiceName::Orders;
        let faults = &self.shared.config.faults;
        if faults.die_before_relay.contains(&orders)
            && !self.orders_killed.swap(true, Relaxed)
        {
            let span = span(orders, correlation_id, &short(request_id));
            let pending = self.outbox_counts(orders).await?.pending;
            let counter = &self.shared.stats.of(orders).pending_at_crash;
            counter.fetch_add(pending.unsigned_abs(), Relaxed);
            warn!(
                parent: &span,
                "crash! died after its commit, before its relay ran: {pending} event(s) wait in its outbox"
            );
            if let Some(kill) = self.kills.get(&orders) {
                kill.notify_one();
            }
        } else if let Some(wake) = self.wakes.get(&orders) {
            wake.notify_one();
        }
        Ok(())
    }

    /// What every service knows about `order_id`, read from their schemas (a
    /// test's or an auditor's view: no service reads another's tables).
    pub async fn outcome(&self, order_id: &str) -> Result<Outcome, Error> {
        let mut reader = self.reader.get().await?;
        // One snapshot of the whole database: all four schemas as of one moment.
        let c = reader
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let s = &self.shared.schemas;
        let mut emitted = BTreeMap::new();
        for service in ServiceName::ALL {
            let schema = s.of(service);
            let sql = format!(
                "SELECT event_type, count(*) FROM {schema}.outbox
                 WHERE aggregate_id = $1 GROUP BY event_type"
            );
            for row in c.query(&sql, &[&order_id]).await? {
                let n: i64 = row.get(1);
                emitted.insert(row.get::<_, String>(0), n as u64);
            }
        }
        let stock_sql = format!("SELECT sku, available FROM {}.stock", s.inventory);
        let stock = c
            .query(&stock_sql, &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i32>(1).max(0) as u32))
            .collect();
        let sql = format!(
            "SELECT customer_id, balance_cents FROM {}.balances",
            s.payments
        );
        let balances = c
            .query(&sql, &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
            .collect();
        Ok(Outcome {
            order: read_record(&c, &s.orders, "orders", order_id).await?,
            hold: read_record(&c, &s.inventory, "holds", order_id).await?,
            stock,
            payment: read_record(&c, &s.payments, "payments", order_id).await?,
            balances,
            shipment: read_record(&c, &s.shipping, "shipments", order_id).await?,
            emitted,
        })
    }

    /// Waits until every order in `order_ids` is settled in every service, or
    /// `within` has passed.
    pub async fn settle(
        &self,
        order_ids: &[&str],
        within: Duration,
    ) -> Result<Vec<Outcome>, Error> {
        let deadline = tokio::time::Instant::now() + within;
        let mut progress = self.shared.progress.subscribe();
        loop {
            progress.borrow_and_update();
            let mut outcomes = Vec::new();
            for id in order_ids {
                outcomes.push(self.outcome(id).await?);
            }
            if outcomes.iter().all(Outcome::settled) {
                return Ok(outcomes);
            }
            let changed =
                tokio::time::timeout_at(deadline, progress.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                let states: Vec<String> =
                    outcomes.iter().map(Outcome::summary).collect();
                let (states, stats) =
                    (states.join("; "), self.shared.stats.summary());
                return Err(Error::Shop(format!(
                    "not settled within {within:?}: {states} ({stats})"
                )));
            }
        }
    }

    /// Waits until `condition` holds of the counters, or `within` has passed.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        condition: impl Fn(&Stats) -> bool,
    ) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + within;
        let mut progress = self.shared.progress.subscribe();
        loop {
            progress.borrow_and_update();
            if condition(&self.shared.stats) {
                return Ok(());
            }
            let changed =
                tokio::time::timeout_at(deadline, progress.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                let stats = self.shared.stats.summary();
                return Err(Error::Shop(format!(
                    "{what}: not within {within:?} ({stats})"
                )));
            }
        }
    }

    /// Waits until no outbox has a pending row (every event is published and
    /// marked), or `within` has passed; fails if a row is marked failed.
    pub async fn drained(&self, within: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + within;
        let mut progress = self.shared.progress.subscribe();
        loop {
            progress.borrow_and_update();
            let mut pending = 0;
            for service in ServiceName::ALL {
                let counts = self.outbox_counts(service).await?;
                if counts.failed > 0 {
                    let s = service.name();
                    return Err(Error::Shop(format!("{s} has failed outbox rows")));
                }
                pending += counts.pending;
            }
            if pending == 0 {
                return Ok(());
            }
            let changed =
                tokio::time::timeout_at(deadline, progress.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                let what =
                    format!("{pending} outbox rows still pending after {within:?}");
                return Err(Error::Shop(what));
            }
        }
    }

    /// How many of `service`'s outbox rows are pending, sent, failed.
    pub async fn outbox_counts(
        &self,
        service: ServiceName,
    ) -> Result<outbox::Counts, Error> {
        let reader = self.reader.get().await?;
        Ok(outbox::counts(&reader, self.shared.schemas.of(service)).await?)
    }

    /// How many messages `service`'s topic holds, over all its partitions (the
    /// high watermarks: this broker keeps everything).
    pub async fn messages_in(&self, service: ServiceName) -> Result<i64, Error> {
        self.messages_in_topic(self.shared.topics.of(service)).await
    }

    /// How many messages `service`'s dead-letter topic holds: what it could not
    /// read, for a person to look at.
    pub async fn dead_letters_of(&self, service: ServiceName) -> Result<i64, Error> {
        self.messages_in_topic(self.shared.topics.dead_letters(service)).await
    }

    /// Whether the Kafka broker answers now: one metadata request about
    /// `service`'s topic, through the shop's own producer, within `within`.
    /// librdkafka sends it only over a connection that is up, so while the
    /// broker is away this fails, and once the producer has reconnected it
    /// succeeds: a readiness probe's question, asked of the client the
    /// service works with. One small request; no topic is created.
    pub async fn broker_answers(
        &self,
        service: ServiceName,
        within: Duration,
    ) -> Result<(), Error> {
        let producer = self.shared.producer.clone();
        let topic = self.shared.topics.of(service);
        // librdkafka's metadata call blocks its thread until the answer.
        let asked = tokio::task::spawn_blocking(move || {
            let client = rdkafka::producer::Producer::client(&producer);
            client.fetch_metadata(Some(&topic), within).map(drop)
        });
        asked.await.map_err(|e| Error::Shop(e.to_string()))??;
        Ok(())
    }

    async fn messages_in_topic(&self, topic: String) -> Result<i64, Error> {
        let producer = self.shared.producer.clone();
        let count = tokio::task::spawn_blocking(move || {
            let client = rdkafka::producer::Producer::client(&producer);
            let metadata =
                client.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let partitions = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect::<Vec<_>>();
            let mut total = 0;
            for partition in partitions {
                let timeout = Duration::from_secs(10);
                let (low, high) =
                    client.fetch_watermarks(&topic, partition, timeout)?;
                total += high - low;
            }
            Ok::<i64, rdkafka::error::KafkaError>(total)
        });
        let count = count.await.map_err(|e| Error::Shop(e.to_string()))??;
        Ok(count)
    }

    /// Stops every service and relay, then drops the shop's schemas. A relay
    /// stops between passes; a service may stop inside a message, whose
    /// transaction then rolls back and whose offset is not stored, so it would
    /// come again. Topics stay: the broker keeps them, as evidence.
    pub async fn shut_down(self) -> Result<(), Error> {
        let config = self.shared.config.clone();
        self.stop().await;
        Shop::tear_down(&config).await
    }

    /// Stops the services this `Shop` runs (each finishes the message in hand
    /// and its relay ends); their data stays.
    pub async fn stop(self) {
        if self.stop.send(true).is_err() {
            warn!("no service task was left to stop");
        }
        for task in self.tasks {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("a service task ended abnormally: {e}"),
                Err(_) => warn!("a service task did not stop within 30 s"),
            }
        }
    }

    /// Drops the four schemas of the shop `config` names (its topics stay).
    pub async fn tear_down(config: &Config) -> Result<(), Error> {
        let schemas = Schemas::new(&config.prefix);
        let reader = connect(&config.database_url).await?;
        for service in ServiceName::ALL {
            let schema = schemas.of(service);
            // Quiet: DROP SCHEMA ... CASCADE says NOTICE otherwise.
            let drop = format!(
                "SET client_min_messages TO warning;
                 DROP SCHEMA IF EXISTS {schema} CASCADE"
            );
            reader.get().await?.batch_execute(&drop).await?;
        }
        Ok(())
    }
}

/// A fresh correlation id for a checkout: `chk-` and 8 hex digits.
pub fn correlation_id() -> String {
    format!("chk-{}", short(Uuid::new_v4()))
}

/// The auditor's pool: two connections, so a reader of one outcome and a
/// counter of outboxes (a waiting test, say) do not queue behind each other.
/// Fails now when PostgreSQL does not answer.
async fn connect(url: &str) -> Result<Pool, Error> {
    let pool = outbox::pool(url, 2)?;
    drop(pool.get().await?);
    Ok(pool)
}
