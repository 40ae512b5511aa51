//! Persistent messages and publisher confirms.
//!
//! A confirm (`basic.ack` from the broker) means the broker has taken responsibility for the
//! message: for a persistent message on a durable queue, it is written to disk. It does not mean a
//! consumer got it, and for an unroutable message (no queue bound for its routing key) the broker
//! confirms too, after dropping it, unless the publish is `mandatory`, in which case the message
//! comes back with the confirm. Until the confirm arrives, the publisher must assume the message
//! may be lost and be ready to send it again.

use futures::future::try_join_all;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for routing key {0:?}: the message was returned")]
    Unroutable(String),
}

/// Persistent delivery (mode 2): the broker writes the message to disk on durable queues.
pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Puts the channel in confirm mode; every publish on it is then confirmed by the broker.
pub async fn enable_confirms(channel: &Channel) -> lapin::Result<()> {
    channel.confirm_select(ConfirmSelectOptions::default()).await
}

fn check(confirmation: Confirmation, routing_key: &str) -> Result<(), PublishError> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => {
            Err(PublishError::Unroutable(routing_key.to_owned()))
        }
        Confirmation::Nack(_) => Err(PublishError::Nacked),
    }
}

// ANCHOR: publish_confirmed
/// Publishes one message, `mandatory` so an unroutable message is an error, and waits for the
/// broker's confirm.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            payload,
            properties,
        )
        .await?;
    check(confirm.await?, routing_key)
}
// ANCHOR_END: publish_confirmed

// ANCHOR: publish_batch
/// Publishes every message first, then waits for all the confirms: one round trip's wait for the
/// whole batch instead of one per message. On an error, any message of the batch may be unconfirmed.
pub async fn publish_batch(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payloads: &[Vec<u8>],
) -> Result<(), PublishError> {
    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
    let mut confirms = Vec::with_capacity(payloads.len());
    for payload in payloads {
        confirms.push(
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    payload,
                    persistent(),
                )
                .await?,
        );
    }
    for confirmation in try_join_all(confirms).await? {
        check(confirmation, routing_key)?;
    }
    Ok(())
}
// ANCHOR_END: publish_batch
