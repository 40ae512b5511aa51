//! One step of an at-least-once consumer, and the dead-letter topic.
//!
//! The promise: an offset is recorded only for a message whose work is done, and a message whose
//! handler fails is delivered again, by this same running consumer, before anything after it in
//! its partition. Two mechanisms make it so:
//!
//! - **Explicit offset storage.** The consumer runs with `enable.auto.offset.store=false`
//!   (see [`crate::client::consumer`]): librdkafka's background auto-commit only ever commits
//!   offsets this code stored with `store_offset_from_message`, after the handler succeeded or the
//!   message was dead-lettered. Storing is a local, non-blocking call; the commit happens on
//!   librdkafka's own thread, so no tokio worker ever waits for the broker.
//! - **Rewind on failure.** When the handler fails, the step seeks the partition back to the
//!   failed message. librdkafka raises a version barrier at once, so messages it had already
//!   fetched past that point are discarded, and the next step receives the failed message again.
//!   The caller decides how long to wait before that next step (backoff), or to stop.

use std::fmt::Display;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::envelope::{self, DecodeError, Event, header};

/// What happened to the message a step took: the handler's result, or why the
/// message could not be decoded (it went to the dead-letter topic).
#[derive(Debug, Clone, PartialEq)]
pub enum Handled<T = Event, R = DecodeError> {
    /// The handler succeeded and the offset is stored; this is what it returned.
    Processed(T),
    /// The message could not be decoded; this reason went with its copy to the
    /// dead-letter topic, and the offset is stored, so it is not read again.
    DeadLettered(R),
}

/// Why a step failed. No offset was stored for a message the step took, and its
/// partition was rewound to it, so it comes again before anything after it; the
/// two exceptions (nothing was received, or the rewind itself failed) are
/// [`StepError::Kafka`]'s.
#[derive(Debug, thiserror::Error)]
pub enum StepError<E> {
    /// librdkafka failed to receive the message, send it to the dead-letter topic,
    /// store its offset or rewind to it. A failed receive took no message, and a
    /// failed rewind leaves the position where it was.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The handler failed on the message at `partition`/`offset`; the consumer was
    /// rewound to it.
    #[error(
        "the handler failed on {partition}/{offset}, which comes again: {error}"
    )]
    Handler {
        /// The partition of the message that comes again.
        partition: i32,
        /// Its offset: the consumer's next message from `partition`.
        offset: i64,
        /// What the handler returned, for the caller to log or to decide to stop.
        error: E,
    },
}

/// Where undecodable messages go, with their payload, headers and the reason.
pub struct DeadLetters {
    /// Sends the copies. The offset is stored once it acknowledges a copy, so give
    /// it `acks=all` ([`crate::client::producer`]) or a copy can be lost.
    pub producer: FutureProducer,
    /// Create it up front ([`crate::client::create_topics`]): nothing here creates
    /// it, and a step whose copy cannot be sent is rewound and fails.
    pub topic: String,
}

impl DeadLetters {
    // ANCHOR: dead_letter
    /// Copies the message to the dead-letter topic: same key, payload and headers,
    /// plus why it failed and where it came from, so it can be inspected and
    /// replayed later.
    pub async fn send(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &impl Display,
    ) -> Result<(), KafkaError> {
        let origin = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let reason = reason.to_string();
        let headers = message
            .headers()
            .map(|h| h.detach())
            .unwrap_or_default()
            .insert(Header { key: header::DLQ_ERROR, value: Some(reason.as_str()) })
            .insert(Header {
                key: header::DLQ_ORIGIN,
                value: Some(origin.as_str()),
            });
        let mut record =
            FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        let sent = self.producer.send(record, Duration::from_secs(30)).await;
        sent.map(|_| ()).map_err(|(e, _)| e)
    }
    // ANCHOR_END: dead_letter
}

/// [`handle_with`] for this crate's envelope: decodes an [`Event`], and hands it
/// to `handler`.
pub async fn handle_next<F, Fut, E>(
    consumer: &StreamConsumer,
    dead_letters: &DeadLetters,
    handler: F,
) -> Result<Handled, StepError<E>>
where
    F: FnOnce(Event) -> Fut,
    Fut: Future<Output = Result<Event, E>>,
{
    let decode = |message: &BorrowedMessage<'_>| envelope::decode(message);
    handle_with(consumer, dead_letters, decode, handler).await
}

// ANCHOR: handle_next
/// Takes the next message, decodes it, runs `handler`, and only then stores its
/// offset for the background commit. A message that `decode` refuses is
/// dead-lettered with its reason and stored, so one bad message cannot stop the
/// consumer.
///
/// When anything fails (the handler, the dead-letter send, storing the offset),
/// the partition is rewound to the message: the next call receives it again,
/// before any later message of its partition. Retry after a backoff, or stop;
/// never skip it.
pub async fn handle_with<T, R, D, F, Fut, O, E>(
    consumer: &StreamConsumer,
    dead_letters: &DeadLetters,
    decode: D,
    handler: F,
) -> Result<Handled<O, R>, StepError<E>>
where
    D: FnOnce(&BorrowedMessage<'_>) -> Result<T, R>,
    R: Display,
    F: FnOnce(T) -> Fut,
    Fut: Future<Output = Result<O, E>>,
{
    let message = consumer.recv().await?;
    let (partition, offset) = (message.partition(), message.offset());
    let outcome = match decode(&message) {
        Ok(decoded) => handler(decoded)
            .await
            .map(Handled::Processed)
            .map_err(|error| StepError::Handler { partition, offset, error }),
        Err(reason) => {
            let dlq = &dead_letters.topic;
            tracing::warn!(offset, "undecodable event sent to {dlq}: {reason}");
            let sent = dead_letters.send(&message, &reason).await;
            sent.map(|()| Handled::DeadLettered(reason)).map_err(StepError::Kafka)
        }
    };
    // Local and non-blocking: librdkafka commits stored offsets in the background.
    let stored = |handled| {
        consumer.store_offset_from_message(&message)?;
        Ok(handled)
    };
    let outcome = outcome.and_then(stored);
    if outcome.is_err() {
        // Not finished, so not skipped: the next step starts from this message.
        rewind(consumer, &message)?;
    }
    outcome
}

/// Moves the partition's position back to `message`. A zero timeout makes the
/// seek asynchronous, so the tokio worker never blocks on it; librdkafka drops
/// the messages it prefetched after `message` before the next `recv`.
fn rewind(
    consumer: &StreamConsumer,
    message: &BorrowedMessage<'_>,
) -> Result<(), KafkaError> {
    let (topic, partition) = (message.topic(), message.partition());
    let offset = Offset::Offset(message.offset());
    consumer.seek(topic, partition, offset, Timeout::After(Duration::ZERO))
}
// ANCHOR_END: handle_next
