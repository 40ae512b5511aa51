//! Persistent messages and publisher confirms.
//!
//! A confirm (`basic.ack` from the broker) means the broker has taken responsibility for the
//! message: for a persistent message on a durable queue, it is written to disk. It does not mean a
//! consumer got it, and for an unroutable message (no queue bound for its routing key) the broker
//! confirms too, after dropping it, unless the publish is `mandatory`, in which case the message
//! comes back with the confirm. Until the confirm arrives, the publisher must assume the message
//! may be lost and be ready to send it again.
//!
//! The errors say how far a failed publish got, because that decides what a resend can cause:
//! [`PublishError::NotSent`] means no complete message left the client, so a resend cannot
//! duplicate it; [`PublishError::Unconfirmed`] means it was written to the connection and the
//! connection failed before the confirm, so the broker may have it and a resend may duplicate it.

use futures::future::try_join_all;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};

/// Why a publish was not confirmed. The variant says how far it got, and so
/// whether sending it again can make a duplicate.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// lapin refused the publish before writing it out (for example, the channel is
    /// reconnecting), or the connection failed while writing it: the broker has nothing.
    #[error("not sent ({0})")]
    NotSent(lapin::Error),
    /// The message was written to the connection, which failed before the broker's
    /// confirm came back: the message may or may not be on the queue.
    #[error("sent, but no confirm came ({0})")]
    Unconfirmed(lapin::Error),
    /// The broker would not take responsibility for it (an internal error in a
    /// queue, or a full queue set to `reject-publish`): treat it as lost.
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// No queue is bound for this routing key (held here). The publish was
    /// `mandatory`, so the broker returned the message instead of dropping it.
    #[error("no queue is bound for routing key {0:?}: the message was returned")]
    Unroutable(String),
    /// The channel was never put in confirm mode, so there is no confirm to wait for.
    #[error("the channel is not in confirm mode: call `enable_confirms` first")]
    ConfirmsNotEnabled,
}

impl PublishError {
    /// The lapin error behind a publish that did not complete, if that is what happened.
    pub fn connection_error(&self) -> Option<&lapin::Error> {
        match self {
            PublishError::NotSent(error) | PublishError::Unconfirmed(error) => {
                Some(error)
            }
            _ => None,
        }
    }
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
        Confirmation::Ack(None) => Ok(()),
        Confirmation::NotRequested => Err(PublishError::ConfirmsNotEnabled),
        Confirmation::Ack(Some(_)) => {
            Err(PublishError::Unroutable(routing_key.to_owned()))
        }
        Confirmation::Nack(_) => Err(PublishError::Nacked),
    }
}

// ANCHOR: publish_confirmed
/// Publishes one message, `mandatory` so an unroutable message is an error, and
/// waits for the broker's confirm.
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
        .await
        .map_err(PublishError::NotSent)?;
    check(confirm.await.map_err(PublishError::Unconfirmed)?, routing_key)
}
// ANCHOR_END: publish_confirmed

// ANCHOR: publish_batch
/// Publishes every message first, then waits for all the confirms: one round trip's
/// wait for the whole batch instead of one per message. On an error, any message of
/// the batch may be unconfirmed.
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
                .await
                .map_err(PublishError::NotSent)?,
        );
    }
    let confirmations =
        try_join_all(confirms).await.map_err(PublishError::Unconfirmed)?;
    for confirmation in confirmations {
        check(confirmation, routing_key)?;
    }
    Ok(())
}
// ANCHOR_END: publish_batch
