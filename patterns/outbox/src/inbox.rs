//! The consumer's side: the ids of the events a consumer has applied, written in the same
//! transaction as the effect.
//!
//! The relay delivers at least once: a relay that dies after publishing and before marking the
//! row sent publishes it again after its restart, and a consumer that dies after its effect and
//! before committing its Kafka offset reads it again. Each copy carries the same event id (the
//! outbox row's id). The inbox remembers the ids a consumer applied; a copy whose id is already
//! there is acknowledged and has no effect. Because the id is written in the effect's own
//! transaction, there is no moment at which the effect exists and the memory of it does not.

use rdkafka::message::Message;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::{OutboxError, checked};
use kafka_events::envelope::{header, header_str};

// ANCHOR: first_delivery
/// Records that `consumer` applies `event_id`, in the caller's transaction. Returns
/// `true` the first time, `false` when the id was already recorded: the caller then
/// skips the effect and commits (or rolls back) as usual.
///
/// Two deliveries racing each other are safe too: the second insert waits on the
/// primary key until the first transaction ends, then finds the id and returns
/// `false`.
pub async fn first_delivery(
    tx: &Transaction<'_>,
    schema: &str,
    consumer: &str,
    event_id: Uuid,
) -> Result<bool, OutboxError> {
    let s = checked(schema)?;
    let sql = format!(
        "INSERT INTO {s}.inbox (consumer, event_id) VALUES ($1, $2)
         ON CONFLICT DO NOTHING"
    );
    Ok(tx.execute(&sql, &[&consumer, &event_id]).await? == 1)
}
// ANCHOR_END: first_delivery

/// The `event-id` header the relay put on a message: what the inbox records.
/// `None` when it is missing or not a UUID (dead-letter such a message).
pub fn event_id<M: Message>(message: &M) -> Option<Uuid> {
    header_str(message, header::EVENT_ID).and_then(|id| Uuid::parse_str(id).ok())
}
