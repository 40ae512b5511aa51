//! What two client settings cost and buy, measured on the broker at `KAFKA_BROKERS`: the
//! consumer's `fetch.wait.max.ms` and the producer's `linger.ms` (the two this crate sets in
//! `client.rs`). Measured, never asserted: the figures belong to the machine and the broker.
//!
//! Run it: `cargo run --release --example kafka_knobs` (needs a Kafka-API broker)
//!
//! For each pair of settings, on a fresh one-partition topic:
//! - one hop, idle first: the consumer has been waiting in an empty fetch for 50 ms when
//!   a message is sent; the time from send to receive, p50 and p99;
//! - what an idle consumer costs: fetch requests per second while nothing is sent;
//! - a burst: 5,000 sends at once; messages per second, and messages per produce request.
//!
//! The request counts are librdkafka's own (its statistics, `brokers[].req`), so they
//! count what went over the wire, not what the code asked for.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use tokio::time::timeout;

/// A client context that keeps one client's count of one kind of request ("Fetch",
/// "Produce"), summed over brokers, from each of librdkafka's statistics reports.
#[derive(Clone)]
struct Counting {
    kind: &'static str,
    sent: Arc<AtomicI64>,
}

impl Counting {
    fn new(kind: &'static str) -> Self {
        Counting { kind, sent: Arc::default() }
    }

    fn sent(&self) -> i64 {
        self.sent.load(Relaxed)
    }
}

impl ClientContext for Counting {
    fn stats(&self, statistics: Statistics) {
        let sent = statistics.brokers.values().filter_map(|b| b.req.get(self.kind));
        self.sent.store(sent.sum(), Relaxed);
    }
}

impl ConsumerContext for Counting {}

/// One row of the table: the two settings under test.
struct Knobs {
    fetch_wait_ms: u32,
    linger_ms: u32,
    label: &'static str,
}

const ROWS: [Knobs; 3] = [
    Knobs { fetch_wait_ms: 500, linger_ms: 5, label: "librdkafka's defaults" },
    Knobs { fetch_wait_ms: 20, linger_ms: 5, label: "short fetch wait only" },
    Knobs { fetch_wait_ms: 20, linger_ms: 1, label: "this crate's client.rs" },
];

/// How many idle-first hops are timed per row.
const HOPS: usize = 40;
/// How long the consumer sits in an empty fetch before each timed hop.
const IDLE: Duration = Duration::from_millis(50);
/// How many sends make a burst.
const BURST: usize = 5_000;
/// A bound on any single wait.
const STEP: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let brokers = infra::kafka_brokers();
    println!(
        "Kafka API at {brokers}; {HOPS} idle-first hops and a burst of {BURST} per row"
    );
    println!(
        "{:<24} {:>6} {:>6}  {:>9} {:>9}  {:>12}  {:>11} {:>9}",
        "settings",
        "wait",
        "linger",
        "hop p50",
        "hop p99",
        "idle fetch/s",
        "burst msg/s",
        "msg/req"
    );
    for knobs in ROWS {
        row(&brokers, &knobs).await.with_context(|| knobs.label)?;
    }
    Ok(())
}

async fn row(brokers: &str, knobs: &Knobs) -> anyhow::Result<()> {
    let topic = format!("knobs-{}", uuid::Uuid::new_v4().simple());
    let created =
        timeout(STEP, kafka_events::client::create_topics(brokers, &[(&topic, 1)]))
            .await;
    if !matches!(created, Ok(Ok(()))) {
        bail!(
            "no Kafka broker answers at {brokers}: start one with `cargo xtask brokers up`"
        );
    }
    let (produces, fetches) = (Counting::new("Produce"), Counting::new("Fetch"));
    let producer: FutureProducer<Counting> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", knobs.linger_ms.to_string())
        .set("statistics.interval.ms", "100")
        .create_with_context(produces.clone())?;
    let consumer: StreamConsumer<Counting> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("knobs-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", knobs.fetch_wait_ms.to_string())
        .set("statistics.interval.ms", "100")
        .create_with_context(fetches.clone())?;
    consumer.subscribe(&[&topic])?;

    let send = |payload: &'static str| {
        producer.send(FutureRecord::<(), _>::to(&topic).payload(payload), STEP)
    };
    // The first message also waits for the group join; it is not timed.
    send("warm-up").await.map_err(|(e, _)| e)?;
    timeout(STEP, consumer.recv()).await.context("warm-up message")??;

    let mut hops = Vec::with_capacity(HOPS);
    for _ in 0..HOPS {
        tokio::time::sleep(IDLE).await;
        let sent = Instant::now();
        send("hop").await.map_err(|(e, _)| e)?;
        timeout(STEP, consumer.recv()).await.context("a timed hop")??;
        hops.push(sent.elapsed());
    }
    hops.sort();
    // Nearest rank: the smallest time that at least p% of the hops did not exceed.
    let percentile = |p: f64| {
        let rank = (p / 100.0 * hops.len() as f64).ceil() as usize;
        hops[rank.clamp(1, hops.len()) - 1].as_secs_f64() * 1e3
    };

    // An idle consumer, for two seconds: what its fetch loop costs the broker.
    let window = Duration::from_secs(2);
    // A consumer hands over its statistics only while it is polled, so it waits in
    // `recv` (nothing arrives) rather than sleeping.
    let before = fetches.sent();
    if let Ok(message) = timeout(window, consumer.recv()).await {
        bail!("nothing was sent, yet the idle consumer received {message:?}");
    }
    let idle_fetches = (fetches.sent() - before) as f64 / window.as_secs_f64();

    let produce_before = produces.sent();
    let began = Instant::now();
    // Enqueued all at once (as a burst of checkouts would), then every ack awaited.
    let mut acks = Vec::with_capacity(BURST);
    for _ in 0..BURST {
        let record = FutureRecord::<(), _>::to(&topic).payload("burst");
        acks.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for ack in acks {
        ack.await.context("the producer went away")?.map_err(|(e, _)| e)?;
    }
    let burst = began.elapsed();
    // The statistics run every 100 ms: let one more report land before reading.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let requests = produces.sent() - produce_before;
    if requests <= 0 {
        bail!("librdkafka's statistics counted no produce request for the burst");
    }

    println!(
        "{:<24} {:>4}ms {:>4}ms  {:>7.1}ms {:>7.1}ms  {:>12.0}  {:>11.0} {:>9.1}",
        knobs.label,
        knobs.fetch_wait_ms,
        knobs.linger_ms,
        percentile(50.0),
        percentile(99.0),
        idle_fetches,
        BURST as f64 / burst.as_secs_f64(),
        BURST as f64 / requests as f64,
    );
    Ok(())
}
