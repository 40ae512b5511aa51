//! Surviving a dropped connection: lapin's automatic recovery, and resending what was not confirmed.
//!
//! With `enable_auto_recover`, lapin reconnects after a network error or a broker-side close and
//! replays the topology (queues, exchanges, bindings, consumers, QoS, confirm mode) on the new
//! connection. While it reconnects, a publish is refused before anything is sent. What lapin
//! cannot know is which of the application's messages made it: a publish that was written out but
//! whose confirm never arrived may or may not be on the queue. [`publish_until_confirmed`] waits
//! for recovery and sends such a message again, and reports how many of its earlier attempts may
//! have reached the broker. The result is at-least-once: no confirmed message is lost, and a
//! message may be queued twice, so consumers must be idempotent.

use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tracing::warn;

use crate::publish::{PublishError, enable_confirms, publish_confirmed};

/// How many times one message is published across recoveries before giving up.
const MAX_ATTEMPTS: u32 = 10;

// ANCHOR: connect_recovering
/// A connection that recovers by itself, named so the broker's tools show who it is,
/// and a channel in confirm mode on it.
pub async fn connect_recovering(
    uri: &str,
    name: &str,
) -> lapin::Result<(Connection, Channel)> {
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .enable_auto_recover();
    let connection = Connection::connect(uri, properties).await?;
    let channel = connection.create_channel().await?;
    enable_confirms(&channel).await?;
    Ok((connection, channel))
}
// ANCHOR_END: connect_recovering

// ANCHOR: confirmed
/// What it took to get one message confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// Publishes made, the confirmed one included: 1 when nothing went wrong.
    pub attempts: u32,
    /// Earlier attempts that were written out but never confirmed. The broker may
    /// have queued each, so the message is queued 1 to `1 + unconfirmed` times.
    /// An attempt lapin refused while reconnecting sent nothing: no duplicate.
    pub unconfirmed: u32,
}
// ANCHOR_END: confirmed

// ANCHOR: publish_until_confirmed
/// Publishes until the broker confirms, waiting out connection recoveries between
/// attempts.
pub async fn publish_until_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<Confirmed, PublishError> {
    let mut tally = Confirmed { attempts: 1, unconfirmed: 0 };
    loop {
        let failed = match publish_confirmed(
            channel,
            exchange,
            routing_key,
            payload,
            properties.clone(),
        )
        .await
        {
            Ok(()) => return Ok(tally),
            Err(failed) => failed,
        };
        let recoverable = match failed.connection_error() {
            Some(error) if error.can_be_recovered() => error.clone(),
            _ => return Err(failed),
        };
        if tally.attempts == MAX_ATTEMPTS {
            return Err(failed);
        }
        warn!(
            attempt = tally.attempts,
            "publish {failed}; resending once the connection recovers"
        );
        if matches!(failed, PublishError::Unconfirmed(_)) {
            tally.unconfirmed += 1;
        }
        if channel.wait_for_recovery(recoverable).await.is_err() {
            return Err(failed);
        }
        tally.attempts += 1;
    }
}
// ANCHOR_END: publish_until_confirmed
