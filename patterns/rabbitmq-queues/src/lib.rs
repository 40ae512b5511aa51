//! Messaging with RabbitMQ (lapin): tasks that exactly one worker should do, and notifications that
//! every subscriber should get.
//!
//! - [`topology`]: durable queues, fanout and topic exchanges, and a dead-letter exchange that
//!   catches rejected and expired messages.
//! - [`publish`]: persistent messages with publisher confirms, one at a time or in batches, and
//!   what a confirm does (and does not) promise.
//! - [`rpc`]: request-reply over queues: `reply_to` and `correlation_id`, a caller timeout, and late
//!   replies discarded safely.
//! - [`reconnect`]: a publisher that survives the broker dropping its connection, re-sending what
//!   was not confirmed, so no confirmed message is lost.
//!
//! Use a queue when a piece of work must be done once, by whichever worker is free, and the
//! producer should not wait: each message is acknowledged by the worker that did it and redelivered
//! if that worker dies first. Prefer Kafka for facts that many consumers read independently and
//! may replay, and request/response when the caller needs the answer now.

#![warn(missing_docs)]

pub mod admin;
pub mod publish;
pub mod reconnect;
pub mod rpc;
pub mod topology;

use lapin::{Channel, Connection, ConnectionProperties};

/// Connects and opens one channel.
pub async fn connect(uri: &str) -> lapin::Result<(Connection, Channel)> {
    let connection =
        Connection::connect(uri, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}
