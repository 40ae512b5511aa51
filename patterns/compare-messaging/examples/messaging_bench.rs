//! Messaging throughput and latency against the real brokers, measured in one run.
//!
//! Run it: `cargo run --release --example messaging_bench`
//! (start the brokers first: `cargo xtask brokers up`)
//!
//! - Kafka: produce throughput of 100-byte messages, batched by the client (many in
//!   flight), and end-to-end latency (produce, then consume in the same process) one
//!   message at a time, with the consumer polling every 5 ms.
//! - RabbitMQ: publish throughput with a confirm awaited per message, against
//!   publishing in batches and awaiting their confirms together; then consume
//!   throughput with manual acks.
//!
//! The figures are the brokers' on this machine over loopback: compare them with
//! each other, not with published numbers from clusters of dedicated machines.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use compare_messaging::stats::Sample;
use futures::StreamExt;
use futures::future::try_join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use rabbitmq_queues::publish::{
    enable_confirms, persistent, publish_batch, publish_confirmed,
};
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::time::timeout;

const PAYLOAD: [u8; 100] = [b'x'; 100];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        println!(
            "note: a debug build measures the compiler's debug code; run with --release for real figures"
        );
    }
    kafka().await?;
    rabbitmq().await
}

fn per_second(count: usize, elapsed: Duration) -> String {
    format!("{:>9.0} msg/s", count as f64 / elapsed.as_secs_f64())
}

async fn kafka() -> anyhow::Result<()> {
    let brokers = infra::kafka_brokers();
    let topic = format!("bench-{}", uuid::Uuid::new_v4().simple());
    match timeout(
        Duration::from_secs(10),
        kafka_events::client::create_topics(&brokers, &[(&topic, 1)]),
    )
    .await
    {
        Ok(Ok(())) => {}
        _ => bail!(
            "no Kafka broker answers at {brokers}: start one with `cargo xtask brokers up`"
        ),
    }
    println!("Kafka API at {brokers}");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("acks", "all")
        .create()?;

    let count = 20_000;
    let began = Instant::now();
    let sends = (0..count).map(|_| {
        producer.send(
            FutureRecord::<(), _>::to(&topic).payload(&PAYLOAD[..]),
            Duration::from_secs(60),
        )
    });
    try_join_all(sends).await.map_err(|(e, _)| e)?;
    println!(
        "  produce, batched, 100 B       {}  ({count} messages)",
        per_second(count, began.elapsed())
    );

    // A short fetch wait: a broker may hold a fetch until `fetch.wait.max.ms` (500
    // ms by default) even when data has arrived, and then the wait, not the broker,
    // is what gets measured.
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("bench-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    consumer.subscribe(&[&topic])?;
    for _ in 0..count {
        timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("draining the batch")??;
    }
    let mut latencies = Vec::with_capacity(500);
    for _ in 0..500 {
        let sent = Instant::now();
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&PAYLOAD[..]),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        let message = timeout(Duration::from_secs(10), consumer.recv())
            .await
            .context("end-to-end message")??;
        latencies.push(sent.elapsed());
        debug_assert_eq!(message.payload().map(<[u8]>::len), Some(PAYLOAD.len()));
    }
    let sample = Sample::new(latencies).context("no latencies")?;
    println!(
        "  end to end, one at a time     p50 {:.2} ms, p99 {:.2} ms  ({} messages)",
        sample.percentile(50.0).as_secs_f64() * 1e3,
        sample.percentile(99.0).as_secs_f64() * 1e3,
        sample.len()
    );
    Ok(())
}

async fn rabbitmq() -> anyhow::Result<()> {
    let uri = infra::amqp_addr();
    let Ok(Ok((connection, channel))) =
        timeout(Duration::from_secs(10), rabbitmq_queues::connect(&uri)).await
    else {
        bail!(
            "no RabbitMQ broker answers at {uri}: start one with `cargo xtask brokers up`"
        );
    };
    println!("RabbitMQ at {uri}");
    enable_confirms(&channel).await?;
    let queue = format!("bench.{}", uuid::Uuid::new_v4().simple());
    rabbitmq_queues::topology::work_queue(&channel, &queue, "bench.dlx").await?;

    let single = 2_000;
    let began = Instant::now();
    for _ in 0..single {
        publish_confirmed(&channel, "", &queue, &PAYLOAD, persistent()).await?;
    }
    println!(
        "  publish, confirm each         {}  ({single} messages)",
        per_second(single, began.elapsed())
    );

    let batched = 20_000;
    let batch: Vec<Vec<u8>> = vec![PAYLOAD.to_vec(); 500];
    let began = Instant::now();
    for _ in 0..batched / batch.len() {
        publish_batch(&channel, "", &queue, &batch).await?;
    }
    println!(
        "  publish, confirm per 500      {}  ({batched} messages)",
        per_second(batched, began.elapsed())
    );

    let total = single + batched;
    channel.basic_qos(500, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let began = Instant::now();
    for received in 1..=total {
        let delivery = timeout(Duration::from_secs(30), deliveries.next())
            .await
            .context("consuming")?
            .context("consumer closed")??;
        // Acknowledge every 100th with `multiple`, covering the 99 before it in one
        // frame.
        if received % 100 == 0 || received == total {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    println!(
        "  consume, manual acks          {}  ({total} messages)",
        per_second(total, began.elapsed())
    );
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    connection.close(200, "done".into()).await?;
    Ok(())
}
