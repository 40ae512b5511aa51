//! The writer's side: an event goes into the outbox table in the same transaction as the state
//! change it announces.

use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::{OutboxError, checked};

/// An event waiting in the outbox. The relay publishes it to `topic` with
/// `aggregate_id` as the Kafka key (so one aggregate's events share a partition and
/// keep their order), and with headers `event-id` and `event-type` added to
/// `headers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The event's identity, chosen by the writer: the consumer's inbox recognises a
    /// redelivery by it, so it must be the same in every copy.
    pub id: Uuid,
    /// The entity whose events must stay in order (an order id, say).
    pub aggregate_id: String,
    /// The Kafka topic it goes to. Nothing here creates it: a row the broker keeps
    /// refusing uses up its attempts and is marked `failed`.
    pub topic: String,
    /// Sent as the `event-type` header, so a consumer picks a decoder without
    /// reading the payload.
    pub event_type: String,
    /// The message body, published as is: the outbox neither encodes nor reads it.
    pub payload: Vec<u8>,
    /// Extra Kafka headers (correlation id, causation id, schema version...), as
    /// UTF-8 pairs.
    pub headers: Vec<(String, String)>,
}

impl OutboxEvent {
    /// A new event with a fresh id and no extra headers.
    pub fn new(
        aggregate_id: impl Into<String>,
        topic: impl Into<String>,
        event_type: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        OutboxEvent {
            id: Uuid::new_v4(),
            aggregate_id: aggregate_id.into(),
            topic: topic.into(),
            event_type: event_type.into(),
            payload: payload.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

// ANCHOR: enqueue
/// Writes `event` into `<schema>.outbox` inside the caller's transaction. Nothing is
/// published here: the relay finds the row once the transaction has committed, and
/// never if it rolls back.
///
/// The transaction first takes a lock on the event's aggregate (released at commit).
/// A second transaction writing an event for the same aggregate waits for it, so it
/// gets a higher `seq` AND commits later: per aggregate, `seq` order is commit
/// order, which is what lets the relay keep each aggregate's events in order.
pub async fn enqueue(
    tx: &Transaction<'_>,
    schema: &str,
    event: &OutboxEvent,
) -> Result<(), OutboxError> {
    let s = checked(schema)?;
    let lock = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
    tx.execute(lock, &[&format!("{s}.outbox/{}", event.aggregate_id)]).await?;
    let (names, values): (Vec<&str>, Vec<&str>) = event
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .unzip();
    let insert = format!(
        "INSERT INTO {s}.outbox (id, aggregate_id, topic, event_type, payload,
                                 header_names, header_values)
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
        &event.id,
        &event.aggregate_id,
        &event.topic,
        &event.event_type,
        &event.payload,
        &names,
        &values,
    ];
    tx.execute(&insert, &params).await?;
    Ok(())
}
// ANCHOR_END: enqueue
