//! The idempotent consumer: processed event ids in PostgreSQL, in the same transaction as the effect.
//!
//! At-least-once delivery means a consumer sees some events twice (after a crash before its
//! commit, after a rebalance). The effect here, adding an order to its customer's totals, must not
//! happen twice. The store inserts the event id into `processed_events` and applies the effect in
//! one transaction: if the id is already there, the insert does nothing and neither does the effect.
//! A crash between the two is impossible, because there is no "between": the transaction commits
//! both or neither.
//!
//! The store owns a small connection pool, made when it connects and closed when it is dropped:
//! a consumer that dies takes its connections with it, and one the server closed (a restart) is
//! replaced when the next event asks for a connection, instead of failing every event after it.

use std::collections::BTreeMap;

use deadpool_postgres::{BuildError, Pool, PoolError};

use crate::envelope::{Event, OrderPlaced};

/// Why the store could not connect, set up its tables or apply an event.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A PostgreSQL error. In [`Store::apply_once`] the event id and the effect
    /// commit together or not at all, so applying the event again is safe.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The pool could not hand out a connection: PostgreSQL is down or
    /// unreachable. Nothing was applied.
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] PoolError),
    /// The pool refused its configuration.
    #[error("connection pool: {0}")]
    PoolSetup(#[from] BuildError),
    #[error(
        "schema name {0:?} must be lowercase letters, digits and underscores, starting with a letter"
    )]
    /// The schema name is pasted into SQL, so only a plain identifier is accepted.
    BadSchemaName(String),
}

/// Order totals per customer: `(orders, total_cents)`.
pub type CustomerTotals = BTreeMap<String, (i64, i64)>;

/// Adds one order to in-memory totals (for projections rebuilt by replay).
pub fn add_to_totals(totals: &mut CustomerTotals, order: &OrderPlaced) {
    let entry = totals.entry(order.customer_id.clone()).or_default();
    entry.0 += 1;
    entry.1 += i64::try_from(order.total_cents).unwrap_or(i64::MAX);
}

/// A consumer's processed events and its projection, in one PostgreSQL schema.
pub struct Store {
    pool: Pool,
    schema: String,
    consumer: String,
}

/// Connections per store: one, as the consumer applies one event at a time.
const POOL_SIZE: usize = 1;

/// The store's own pool of connections to `url`, each of which keeps
/// PostgreSQL's notices (such as `DROP SCHEMA ... CASCADE`'s) to itself.
fn pool(url: &str) -> Result<Pool, StoreError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.options("-c client_min_messages=warning");
    Ok(pg_pool::pool_of(config, POOL_SIZE)?)
}

impl Store {
    /// Connects, and creates the schema and its tables if they do not exist.
    pub async fn connect(
        url: &str,
        schema: &str,
        consumer: &str,
    ) -> Result<Self, StoreError> {
        let valid = schema.starts_with(|c: char| c.is_ascii_lowercase())
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(StoreError::BadSchemaName(schema.to_owned()));
        }
        let pool = pool(url)?;
        let client = pool.get().await?;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {schema}.processed_events (
                     consumer TEXT NOT NULL, event_id TEXT NOT NULL, PRIMARY KEY (consumer, event_id));
                 CREATE TABLE IF NOT EXISTS {schema}.customer_totals (
                     customer_id TEXT PRIMARY KEY, orders BIGINT NOT NULL, total_cents BIGINT NOT NULL);"
            ))
            .await?;
        drop(client);
        Ok(Store { pool, schema: schema.to_owned(), consumer: consumer.to_owned() })
    }

    // ANCHOR: apply_once
    /// Applies the event's effect exactly once; returns whether it was applied now
    /// (`false`: a duplicate, already applied before).
    pub async fn apply_once(&mut self, event: &Event) -> Result<bool, StoreError> {
        let schema = &self.schema;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let remember = format!(
            "INSERT INTO {schema}.processed_events (consumer, event_id)
             VALUES ($1, $2) ON CONFLICT DO NOTHING"
        );
        let event_id = event.metadata.event_id.to_string();
        let first_time =
            tx.execute(&remember, &[&self.consumer, &event_id]).await? == 1;
        if first_time {
            let add = format!(
                "INSERT INTO {schema}.customer_totals AS t
                     (customer_id, orders, total_cents) VALUES ($1, 1, $2)
                 ON CONFLICT (customer_id) DO UPDATE
                 SET orders = t.orders + 1,
                     total_cents = t.total_cents + EXCLUDED.total_cents"
            );
            let cents = i64::try_from(event.order.total_cents).unwrap_or(i64::MAX);
            tx.execute(&add, &[&event.order.customer_id, &cents]).await?;
        }
        // Both rows or neither: a crash before this line leaves no trace.
        tx.commit().await?;
        Ok(first_time)
    }
    // ANCHOR_END: apply_once

    /// The projection as committed: each event counted once, however often it came.
    pub async fn totals(&self) -> Result<CustomerTotals, StoreError> {
        let client = self.pool.get().await?;
        let rows = client.query(&format!("SELECT customer_id, orders, total_cents FROM {}.customer_totals", self.schema), &[]).await?;
        Ok(rows.iter().map(|row| (row.get(0), (row.get(1), row.get(2)))).collect())
    }

    /// Drops the schema (tests clean up after themselves).
    pub async fn drop_schema(self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await?;
        Ok(())
    }
}
