//! Producer and consumer settings, and topic creation.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;

fn base(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", "10000")
        // librdkafka doubles its wait between attempts to reach a broker that went away,
        // up to 10 s by default: a broker back after an outage could wait that long for
        // the next attempt. 1 s bounds the wait, for about one attempt a second per
        // broker while it is away.
        .set("reconnect.backoff.max.ms", "1000");
    config
}

// ANCHOR: producer
/// A producer that waits for the leader's and replicas' acknowledgement, and is
/// idempotent: its own retries (after a lost ack) cannot write an event twice or out
/// of order.
pub fn producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
    base(brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        // How long a message may wait for others to share its request. librdkafka's
        // default is 5 ms; 1 ms keeps a checkout's four hops short and still batches
        // a burst (the queue fills while a request is in flight).
        .set("linger.ms", "1")
        .create()
}
// ANCHOR_END: producer

// ANCHOR: consumer
/// A consumer for at-least-once processing. Offsets are committed in the
/// background (no blocking commit on a tokio worker), but only the offsets the
/// code stored after finishing a message: never one it has not processed yet.
pub fn consumer(brokers: &str, group: &str) -> Result<StreamConsumer, KafkaError> {
    base(brokers)
        .set("group.id", group)
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        // The cost of a crash: up to this much finished work is delivered again.
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        // How long the broker may hold a fetch that found nothing (librdkafka's
        // default: 500 ms). A broker that only looks again when the wait ends makes
        // this the latency of an idle consumer's next event; the cost of a short
        // wait is an idle consumer asking the broker 50 times a second.
        .set("fetch.wait.max.ms", "20")
        .create()
}
// ANCHOR_END: consumer

/// Creates topics that do not exist yet; an existing topic is fine.
pub async fn create_topics(
    brokers: &str,
    topics: &[(&str, i32)],
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base(brokers).create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(1))
        })
        .collect();
    let options =
        AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::warn!(%topic, "cannot create topic"));
            }
        }
    }
    Ok(())
}
