//! One step of an at-least-once consumer, and the dead-letter topic.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::envelope::{self, DecodeError, Event, header};

/// What happened to the message a step took.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    Processed(Event),
    DeadLettered(DecodeError),
}

/// Why a step failed. The offset was not committed: the message will be delivered again.
#[derive(Debug, thiserror::Error)]
pub enum StepError<E> {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the handler failed: {0}")]
    Handler(E),
}

/// Where undecodable messages go, with their payload, headers and the reason.
pub struct DeadLetters {
    pub producer: FutureProducer,
    pub topic: String,
}

impl DeadLetters {
    // ANCHOR: dead_letter
    /// Copies the message to the dead-letter topic: same key, same payload, same headers, plus
    /// why it failed and where it came from, so it can be inspected and replayed later.
    pub async fn send(
        &self,
        message: &BorrowedMessage<'_>,
        error: &DecodeError,
    ) -> Result<(), KafkaError> {
        let origin = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let reason = error.to_string();
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
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
    // ANCHOR_END: dead_letter
}

// ANCHOR: handle_next
/// Takes the next message, decodes it, runs `handler`, and only then commits its offset. If the
/// process dies before the commit, the message is delivered again: at least once. A message that
/// cannot be decoded is dead-lettered and committed, so one bad message cannot stop the consumer.
pub async fn handle_next<F, Fut, E>(
    consumer: &StreamConsumer,
    dead_letters: &DeadLetters,
    handler: F,
) -> Result<Handled, StepError<E>>
where
    F: FnOnce(Event) -> Fut,
    Fut: Future<Output = Result<Event, E>>,
{
    let message = consumer.recv().await?;
    let handled = match envelope::decode(&message) {
        Ok(event) => {
            Handled::Processed(handler(event).await.map_err(StepError::Handler)?)
        }
        Err(error) => {
            tracing::warn!(
                offset = message.offset(),
                "undecodable event sent to {}: {error}",
                dead_letters.topic
            );
            dead_letters.send(&message, &error).await?;
            Handled::DeadLettered(error)
        }
    };
    // Synchronous commit: simple and exact. Production code often commits asynchronously or in
    // batches, accepting a few more redeliveries after a crash (the idempotent consumer absorbs them).
    consumer.commit_message(&message, CommitMode::Sync)?;
    Ok(handled)
}
// ANCHOR_END: handle_next
