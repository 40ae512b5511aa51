//! What the outbox costs in throughput: the same events, published once by plain produce and once
//! through the outbox relay, in the same run, against the same broker.
//!
//! Run it: `cargo run --release --example outbox_bench`
//!
//! - **Plain produce**: every event handed to the producer at once, timed until the broker has
//!   acknowledged the last one (the producer is `kafka_events::client::producer`: acks from all
//!   replicas, idempotent).
//! - **Outbox relay**: the same events are first committed to the outbox (not timed), then one
//!   relay is timed from "all rows committed" until every row is acknowledged AND marked sent;
//!   once with the default batch size (256 rows per pass), once with 2048.
//!
//! It measures and prints; it checks only that every event arrived. Numbers depend on the
//! machine, the disk and the broker: compare the ratio, not the absolute figures.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::future::join_all;
use kafka_events::client::{create_topics, producer};
use outbox::relay::{Relay, RelayConfig};
use outbox::{OutboxEvent, counts, enqueue, migrate};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::time::timeout;
use uuid::Uuid;

const EVENTS: usize = 5_000;
const ORDERS: usize = 500;
const PARTITIONS: i32 = 3;
/// The relay's default batch size, and a larger one.
const BATCH_SIZES: [i64; 2] = [256, 2048];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (url, brokers) = (infra::database_url(), infra::kafka_brokers());
    let hint = "start them with `cargo xtask brokers up` (or `docker compose up -d --wait`)";
    // The writer's pool: one connection, which writes the rows the relays read.
    let pool = outbox::pool(&url, 1)?;
    let connecting = timeout(Duration::from_secs(5), pool.get());
    let Ok(Ok(mut db)) = connecting.await else {
        bail!(
            "this benchmark needs PostgreSQL at {url} and Kafka at {brokers}: {hint}"
        );
    };
    let run = Uuid::new_v4().simple().to_string()[..12].to_owned();
    let plain_topic = format!("bench-plain-{run}");
    let relay_topics = BATCH_SIZES.map(|size| format!("bench-relay-{run}-{size}"));
    let all_topics: Vec<&String> =
        [&plain_topic].into_iter().chain(&relay_topics).collect();
    let topics: Vec<(&str, i32)> =
        all_topics.iter().map(|topic| (topic.as_str(), PARTITIONS)).collect();
    let created =
        timeout(Duration::from_secs(10), create_topics(&brokers, &topics)).await;
    if !matches!(created, Ok(Ok(()))) {
        bail!(
            "this benchmark needs PostgreSQL at {url} and Kafka at {brokers}: {hint}"
        );
    }
    let producer = producer(&brokers)?;
    let version: String = db.query_one("SHOW server_version", &[]).await?.get(0);
    let events = |topic: &str| -> Vec<OutboxEvent> {
        (0..EVENTS)
            .map(|i| {
                let order = format!("o-{}", i % ORDERS);
                let payload = format!(
                    r#"{{"order_id":"{order}","customer_id":"c-{}","total_cents":{i},"currency":"EUR"}}"#,
                    i % 97
                );
                OutboxEvent::new(order, topic, "OrderPlaced", payload)
                    .header("correlation-id", format!("bench-{i}"))
            })
            .collect()
    };
    println!(
        "{EVENTS} events, {ORDERS} keys, {PARTITIONS} partitions; PostgreSQL {version} at {url}, \
         Kafka API broker at {brokers}"
    );
    // Warm-up: the producer's first send waits for its producer id, and the first
    // send to each topic for the topic's metadata. Neither is timed.
    for topic in &all_topics {
        let warm =
            FutureRecord::to(topic.as_str()).key("warm-up").payload("warm-up");
        producer.send(warm, Duration::from_secs(30)).await.map_err(|(e, _)| e)?;
    }

    let plain = plain_produce(&producer, &events(&plain_topic)).await?;
    let per_second = |elapsed: Duration| EVENTS as f64 / elapsed.as_secs_f64();
    println!(
        "plain produce: {EVENTS} events acknowledged in {:>5} ms = {:>7.0} events/s",
        plain.as_millis(),
        per_second(plain)
    );

    for (batch_size, topic) in BATCH_SIZES.into_iter().zip(&relay_topics) {
        let schema = format!("bench_{run}_{batch_size}");
        migrate(&db, &schema).await?;
        for chunk in events(topic).chunks(500) {
            let tx = db.transaction().await?;
            for event in chunk {
                enqueue(&tx, &schema, event).await?;
            }
            tx.commit().await?;
        }
        let config = RelayConfig { batch_size, ..RelayConfig::default() };
        let relay = Relay::connect(&url, &schema, producer.clone()).await?;
        let (elapsed, passes) = relay_all(relay.with_config(config)).await?;
        ensure!(counts(&db, &schema).await?.sent == EVENTS as i64, "every row sent");
        println!(
            "outbox relay:  {EVENTS} events acknowledged and marked sent in {:>5} ms = \
             {:>7.0} events/s, ratio to plain produce {:.2} ({passes} passes of up to \
             {batch_size} rows)",
            elapsed.as_millis(),
            per_second(elapsed),
            plain.as_secs_f64() / elapsed.as_secs_f64()
        );
        let drop = format!(
            "SET client_min_messages TO warning; DROP SCHEMA {schema} CASCADE"
        );
        db.batch_execute(&drop).await.context("cleaning up")?;
    }
    Ok(())
}

/// Runs passes until every event is published; returns the time and the passes.
async fn relay_all(mut relay: Relay) -> anyhow::Result<(Duration, usize)> {
    let (started, mut published, mut passes) = (Instant::now(), 0, 0);
    while published < EVENTS {
        let report = relay.publish_batch().await?;
        ensure!(
            report.failed.is_empty() && report.retrying.is_empty(),
            "{report:?}"
        );
        published += report.published.len();
        passes += 1;
        ensure!(passes <= EVENTS, "the relay makes no progress");
    }
    Ok((started.elapsed(), passes))
}

/// Hands every event to the producer at once and waits for every acknowledgement.
async fn plain_produce(
    producer: &FutureProducer,
    events: &[OutboxEvent],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let sends = events.iter().map(|event| {
        let id = event.id.to_string();
        async move {
            let headers = rdkafka::message::OwnedHeaders::new()
                .insert(rdkafka::message::Header {
                    key: "event-id",
                    value: Some(&id),
                })
                .insert(rdkafka::message::Header {
                    key: "event-type",
                    value: Some(&event.event_type),
                })
                .insert(rdkafka::message::Header {
                    key: "correlation-id",
                    value: Some(&event.headers[0].1),
                });
            let record = FutureRecord::to(&event.topic)
                .key(&event.aggregate_id)
                .payload(&event.payload)
                .headers(headers);
            producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e)
        }
    });
    for result in join_all(sends).await {
        result?;
    }
    Ok(started.elapsed())
}
