//! Event-driven messaging with Kafka (rdkafka): the shop publishes `OrderPlaced` events, and
//! consumers react to them without the checkout waiting for any of them.
//!
//! - [`envelope`]: what travels: a JSON payload keyed by order id, and headers with the event id,
//!   type, schema version, time and correlation id. Two schema versions, read by both readers;
//!   each derives its JSON Schema (`patterns/contracts` keeps them and checks their compatibility).
//! - [`client`]: producer and consumer settings for at-least-once delivery, and explicit topic
//!   creation (most production clusters, and `docker-compose.yml`, do not auto-create topics).
//! - [`consume`]: the consumer's loop step: decode, handle, and only then commit the offset; an
//!   event that cannot be decoded goes to a dead-letter topic, with its payload, headers and the
//!   error, and the consumer keeps going.
//! - [`produce`]: publishing with the order id as key, waiting for the acknowledgement.
//! - [`idempotent`]: at-least-once means duplicates. A PostgreSQL table of processed event ids,
//!   written in the same transaction as the effect, turns redelivery into exactly one effect.
//!
//! Use Kafka when events are facts other services react to in their own time, when order matters
//! per entity (per order id) but not globally, and when a new consumer should be able to replay
//! history. Prefer a queue (RabbitMQ) for work items that one worker should take and acknowledge,
//! and request/response when the caller needs the answer to go on.

#![warn(missing_docs)]

pub mod client;
pub mod consume;
pub mod envelope;
pub mod idempotent;
pub mod produce;
