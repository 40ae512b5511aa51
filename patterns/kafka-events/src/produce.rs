//! Publishing an `OrderPlaced` event, keyed by its order id.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::envelope::{Metadata, OrderPlaced};

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The payload could not be serialized; nothing was sent.
    #[error("cannot encode the event: {0}")]
    Encode(#[from] serde_json::Error),
    /// No acknowledgement came. The event may still have been written, so a retry
    /// with the same metadata can duplicate it; consumers drop it by event id.
    #[error("the broker did not take the event: {0}")]
    Kafka(#[from] KafkaError),
}

// ANCHOR: publish
/// Publishes one event and waits for the broker's acknowledgement. The key is the
/// order id: every event of one order lands in the same partition, which keeps them
/// in order.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    metadata: &Metadata,
    order: &OrderPlaced,
) -> Result<(i32, i64), PublishError> {
    let payload = serde_json::to_vec(order)?;
    let record = FutureRecord::to(topic)
        .key(order.order_id.as_str())
        .payload(&payload)
        .headers(metadata.to_headers());
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(error, _)| error)?;
    Ok((delivery.partition, delivery.offset))
}
// ANCHOR_END: publish
