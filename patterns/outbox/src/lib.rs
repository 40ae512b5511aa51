//! The transactional outbox and inbox: a service changes its state and emits the event that
//! says so in ONE local PostgreSQL transaction, a relay publishes the event to Kafka afterwards,
//! and the consumer's inbox turns the relay's at-least-once delivery into one effect.
//!
//! - [`migrate`] creates a service's `outbox` and `inbox` tables in its own schema.
//! - [`enqueue`] writes an event into the outbox inside the caller's transaction: the state
//!   change and the event commit together or not at all. There is no "update the database, then
//!   publish" gap for a crash to fall into.
//! - [`relay::Relay`] claims unsent rows, publishes them keyed by aggregate id, and marks them
//!   sent. It never tracks a high-water mark, so a row that commits late is still found; it
//!   claims rows with `FOR UPDATE SKIP LOCKED`, so two relays never send the same row; it keeps
//!   the order of each aggregate's events; and a row that keeps failing is marked `failed` and
//!   reported, never dropped.
//! - [`inbox::first_delivery`] records an event id in the consumer's transaction, next to the
//!   effect: a redelivered event finds its id there and has no second effect.
//! - [`pool`] builds the connection pool a relay (or a service using this crate) owns.
//!
//! Use it when a service must both change its data and tell others about it, and losing either
//! half is a bug (an order placed but never announced, a refund announced but never made). Do not
//! use it when the event is only a notification that may be lost, or when the database is not
//! transactional; and consider change data capture (Debezium reading the write-ahead log) when
//! many services need it and you can run the extra infrastructure: it replaces the polling
//! relay, not the outbox table.

#![warn(missing_docs)]

use tokio_postgres::Client;

pub mod faults;
pub mod inbox;
pub mod relay;

mod enqueue;

pub use enqueue::{OutboxEvent, enqueue};

/// Why an outbox or inbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A PostgreSQL statement or the connection failed. From [`enqueue()`], roll
    /// the caller's transaction back: committing its state change without the
    /// event is the very gap the outbox exists to close.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The schema name is pasted into SQL (names cannot be bound as parameters),
    /// so only a plain identifier is accepted; holds the name refused.
    #[error(
        "schema name {0:?} must be lowercase letters, digits and underscores, \
         starting with a letter"
    )]
    BadSchemaName(String),
}

/// The pool each relay and service uses: see [`pg_pool`].
pub use pg_pool::{PoolSetupError, pool};

/// Checks that `schema` can be pasted into SQL as an identifier. Schema names cannot be
/// bound as query parameters, so they are validated instead.
pub(crate) fn checked(schema: &str) -> Result<&str, OutboxError> {
    let valid = schema.starts_with(|c: char| c.is_ascii_lowercase())
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(schema)
    } else {
        Err(OutboxError::BadSchemaName(schema.to_owned()))
    }
}

// ANCHOR: migrate
/// Creates `<schema>.outbox` and `<schema>.inbox` if they do not exist. Safe to run
/// at every start, by several processes at once (an advisory lock serialises them).
pub async fn migrate(client: &Client, schema: &str) -> Result<(), OutboxError> {
    let s = checked(schema)?;
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(hashtextextended('outbox.migrate', 0));
             CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.outbox (
                 -- The order rows were written in; per aggregate, the order
                 -- they committed in (see enqueue).
                 seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 id UUID NOT NULL UNIQUE,
                 aggregate_id TEXT NOT NULL,
                 topic TEXT NOT NULL,
                 event_type TEXT NOT NULL,
                 payload BYTEA NOT NULL,
                 header_names TEXT[] NOT NULL,
                 header_values TEXT[] NOT NULL,
                 status TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sent', 'failed')),
                 attempts INT NOT NULL DEFAULT 0,
                 last_error TEXT,
                 created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 sent_at TIMESTAMPTZ);
             -- What the relay scans: unsent rows, by seq and by aggregate.
             CREATE INDEX IF NOT EXISTS outbox_pending
                 ON {s}.outbox (seq) WHERE status = 'pending';
             CREATE INDEX IF NOT EXISTS outbox_unsent
                 ON {s}.outbox (aggregate_id, seq) WHERE status <> 'sent';
             CREATE TABLE IF NOT EXISTS {s}.inbox (
                 consumer TEXT NOT NULL,
                 event_id UUID NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 PRIMARY KEY (consumer, event_id));"
        ))
        .await?;
    Ok(())
}
// ANCHOR_END: migrate

/// How many outbox rows are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Committed but not yet published: a number that keeps growing means the
    /// relay is behind or down.
    pub pending: i64,
    /// Acknowledged by the broker. Nothing here deletes sent rows, so this only
    /// grows.
    pub sent: i64,
    /// Out of attempts, waiting for a human ([`retry_failed`]); later events of
    /// their aggregates wait behind them.
    pub failed: i64,
}

/// Counts the outbox rows by status: what a dashboard or an alert would watch
/// (`failed > 0` needs a human; a growing `pending` means the relay is behind).
pub async fn counts(client: &Client, schema: &str) -> Result<Counts, OutboxError> {
    let s = checked(schema)?;
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE status = 'pending'),
                        count(*) FILTER (WHERE status = 'sent'),
                        count(*) FILTER (WHERE status = 'failed')
                 FROM {s}.outbox"
            ),
            &[],
        )
        .await?;
    Ok(Counts { pending: row.get(0), sent: row.get(1), failed: row.get(2) })
}

/// Puts every `failed` row back to `pending` with a fresh attempt budget and no
/// `last_error` (an error from before the fix would mislead whoever reads a pending
/// row), once a human has fixed the cause (created the topic, raised a size limit).
/// Returns how many rows were requeued.
pub async fn retry_failed(
    client: &Client,
    schema: &str,
) -> Result<u64, OutboxError> {
    let s = checked(schema)?;
    let sql = format!(
        "UPDATE {s}.outbox SET status = 'pending', attempts = 0, last_error = NULL
         WHERE status = 'failed'"
    );
    Ok(client.execute(&sql, &[]).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(checked("orders").is_ok());
        assert!(checked("orders_2").is_ok());
        for bad in ["", "2orders", "Orders", "orders; DROP TABLE x", "o-1"] {
            assert!(
                matches!(checked(bad), Err(OutboxError::BadSchemaName(_))),
                "{bad:?} must be refused"
            );
        }
    }
}
