//! Surviving a dropped connection: lapin's automatic recovery, and resending what was not confirmed.
//!
//! With `enable_auto_recover`, lapin reconnects after a network error or a broker-side close and
//! replays the topology (queues, exchanges, bindings, consumers, QoS, confirm mode) on the new
//! connection. What it cannot know is which of the application's messages made it: a publish whose
//! confirm never arrived may or may not be on the queue. [`publish_until_confirmed`] waits for
//! recovery and sends such a message again. The result is at-least-once: no confirmed message is
//! lost, and a message may arrive twice, so consumers must be idempotent.

use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tracing::warn;

use crate::publish::{PublishError, enable_confirms, publish_confirmed};

/// How many times one message is resent across recoveries before giving up.
const MAX_ATTEMPTS: u32 = 10;

// ANCHOR: connect_recovering
/// A connection that recovers by itself, and a channel in confirm mode on it.
pub async fn connect_recovering(uri: &str) -> lapin::Result<(Connection, Channel)> {
    let connection = Connection::connect(
        uri,
        ConnectionProperties::default().enable_auto_recover(),
    )
    .await?;
    let channel = connection.create_channel().await?;
    enable_confirms(&channel).await?;
    Ok((connection, channel))
}
// ANCHOR_END: connect_recovering

// ANCHOR: publish_until_confirmed
/// Publishes until the broker confirms, waiting out connection recoveries in between.
pub async fn publish_until_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<u32, PublishError> {
    let mut attempt = 1;
    loop {
        match publish_confirmed(
            channel,
            exchange,
            routing_key,
            payload,
            properties.clone(),
        )
        .await
        {
            Ok(()) => return Ok(attempt),
            Err(PublishError::Amqp(error))
                if error.can_be_recovered() && attempt < MAX_ATTEMPTS =>
            {
                warn!(
                    attempt,
                    "publish not confirmed ({error}); waiting for the connection to recover, then resending"
                );
                channel.wait_for_recovery(error).await?;
                attempt += 1;
            }
            Err(other) => return Err(other),
        }
    }
}
// ANCHOR_END: publish_until_confirmed
