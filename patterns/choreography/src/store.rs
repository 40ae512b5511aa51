//! Each service's own tables, in its own PostgreSQL schema, and how a transaction loads and saves
//! the slice of a service's state that one event touches.
//!
//! The domain rules work on whole states ([`shop_domain::inventory::Inventory`] and so on); a
//! service never loads all of its data for one event. [`Store::load`] reads (and locks, `FOR
//! UPDATE`) just the rows the event concerns, into a state with only those entries; the rules run
//! on it; [`Store::save`] writes the entries back. One order's records are JSON (the domain's own
//! serde form) next to a `status` column for people with `psql`; quantities that several orders
//! share, stock and balances, are plain numeric columns with `CHECK`s, so that a bug that would
//! oversell stock fails the transaction instead of committing.
//!
//! No service reads another's schema: what payments knows about an order, it learned from events.

use serde::Serialize;
use serde::de::DeserializeOwned;
use shop_domain::inventory::{Hold, Inventory};
use shop_domain::orders::{Order, Orders};
use shop_domain::payments::{Payment, Payments};
use shop_domain::shipping::{Shipment, Shipping};
use shop_domain::{Event, Reaction, Seed};
use tokio_postgres::{Client, Transaction};

use crate::Error;

/// A service's persistence: its tables, and the slice of its state that an
/// event touches, loaded and saved inside the transaction that applies it.
pub trait Store: Reaction + Send + Sync {
    /// Creates the service's tables in schema `s` (its outbox and inbox are
    /// the outbox crate's).
    fn create_tables(
        client: &Client,
        s: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Loads, and locks until the transaction ends, what `event` touches.
    fn load(
        tx: &Transaction<'_>,
        s: &str,
        event: &Event,
    ) -> impl Future<Output = Result<Self, Error>> + Send;

    /// Writes the loaded slice back, changed or not.
    fn save(
        &self,
        tx: &Transaction<'_>,
        s: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// `CREATE TABLE` of a per-order record table.
fn records_table(s: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {s}.{table} (
             order_id TEXT PRIMARY KEY,
             status TEXT NOT NULL,
             record TEXT NOT NULL);"
    )
}

/// One order's record from `table`, locked for the transaction when `lock`.
pub async fn record<T: DeserializeOwned>(
    tx: &Transaction<'_>,
    s: &str,
    table: &str,
    order_id: &str,
    lock: bool,
) -> Result<Option<T>, Error> {
    let lock = if lock { "FOR UPDATE" } else { "" };
    let sql = format!("SELECT record FROM {s}.{table} WHERE order_id = $1 {lock}");
    match tx.query_opt(&sql, &[&order_id]).await? {
        Some(row) => Ok(Some(serde_json::from_str(row.get(0))?)),
        None => Ok(None),
    }
}

async fn put_record<T: Serialize + Sync>(
    tx: &Transaction<'_>,
    s: &str,
    table: &str,
    order_id: &str,
    status: &str,
    record: &T,
) -> Result<(), Error> {
    let sql = format!(
        "INSERT INTO {s}.{table} (order_id, status, record) VALUES ($1, $2, $3)
         ON CONFLICT (order_id) DO UPDATE
         SET status = EXCLUDED.status, record = EXCLUDED.record"
    );
    let json = serde_json::to_string(record)?;
    tx.execute(&sql, &[&order_id, &status, &json]).await?;
    Ok(())
}

fn to_i64(value: u64) -> Result<i64, Error> {
    i64::try_from(value).map_err(|_| Error::OutOfRange(value.to_string()))
}

fn to_u64(value: i64) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| Error::OutOfRange(value.to_string()))
}

impl Store for Orders {
    async fn create_tables(client: &Client, s: &str) -> Result<(), Error> {
        client.batch_execute(&records_table(s, "orders")).await?;
        Ok(())
    }

    async fn load(
        tx: &Transaction<'_>,
        s: &str,
        event: &Event,
    ) -> Result<Self, Error> {
        let id = event.order_id();
        let order: Option<Order> = record(tx, s, "orders", id, true).await?;
        Ok(Orders {
            orders: order.map(|o| (id.to_owned(), o)).into_iter().collect(),
        })
    }

    async fn save(&self, tx: &Transaction<'_>, s: &str) -> Result<(), Error> {
        for (id, order) in &self.orders {
            let status = order.status.name();
            put_record(tx, s, "orders", id, status, order).await?;
        }
        Ok(())
    }
}

// ANCHOR: inventory_store
impl Store for Inventory {
    async fn create_tables(client: &Client, s: &str) -> Result<(), Error> {
        let stock = format!(
            "CREATE TABLE IF NOT EXISTS {s}.stock (
                 sku TEXT PRIMARY KEY,
                 available INT NOT NULL CHECK (available >= 0));"
        );
        client.batch_execute(&(stock + &records_table(s, "holds"))).await?;
        Ok(())
    }

    async fn load(
        tx: &Transaction<'_>,
        s: &str,
        event: &Event,
    ) -> Result<Self, Error> {
        let id = event.order_id();
        let mut inventory = Inventory::default();
        if let Some(hold) = record::<Hold>(tx, s, "holds", id, true).await? {
            inventory.holds.insert(id.to_owned(), hold);
        }
        // The SKUs of the order's lines and of its reservation, locked in one
        // order (by name) so that two transactions cannot deadlock on them.
        let skus = inventory.skus_touched(event);
        let sql = format!(
            "SELECT sku, available FROM {s}.stock WHERE sku = ANY($1)
             ORDER BY sku FOR UPDATE"
        );
        for row in tx.query(&sql, &[&skus]).await? {
            let available: i32 = row.get(1);
            let available = u32::try_from(available)
                .map_err(|_| Error::OutOfRange(available.to_string()))?;
            inventory.available.insert(row.get(0), available);
        }
        Ok(inventory)
    }

    async fn save(&self, tx: &Transaction<'_>, s: &str) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO {s}.stock (sku, available) VALUES ($1, $2)
             ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available"
        );
        for (sku, available) in &self.available {
            let available = i32::try_from(*available)
                .map_err(|_| Error::OutOfRange(available.to_string()))?;
            tx.execute(&sql, &[sku, &available]).await?;
        }
        for (id, hold) in &self.holds {
            put_record(tx, s, "holds", id, hold.name(), hold).await?;
        }
        Ok(())
    }
}
// ANCHOR_END: inventory_store

impl Store for Payments {
    async fn create_tables(client: &Client, s: &str) -> Result<(), Error> {
        let balances = format!(
            "CREATE TABLE IF NOT EXISTS {s}.balances (
                 customer_id TEXT PRIMARY KEY,
                 balance_cents BIGINT NOT NULL CHECK (balance_cents >= 0));"
        );
        client.batch_execute(&(balances + &records_table(s, "payments"))).await?;
        Ok(())
    }

    async fn load(
        tx: &Transaction<'_>,
        s: &str,
        event: &Event,
    ) -> Result<Self, Error> {
        let id = event.order_id();
        let mut payments = Payments::default();
        if let Some(payment) = record::<Payment>(tx, s, "payments", id, true).await?
        {
            payments.payments.insert(id.to_owned(), payment);
        }
        if let Some(customer) = payments.customer_touched(event) {
            let sql = format!(
                "SELECT balance_cents FROM {s}.balances WHERE customer_id = $1
                 FOR UPDATE"
            );
            if let Some(row) = tx.query_opt(&sql, &[&customer]).await? {
                payments.balances.insert(customer, to_u64(row.get(0))?);
            }
        }
        Ok(payments)
    }

    async fn save(&self, tx: &Transaction<'_>, s: &str) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO {s}.balances (customer_id, balance_cents) VALUES ($1, $2)
             ON CONFLICT (customer_id) DO UPDATE
             SET balance_cents = EXCLUDED.balance_cents"
        );
        for (customer, cents) in &self.balances {
            tx.execute(&sql, &[customer, &to_i64(*cents)?]).await?;
        }
        for (id, payment) in &self.payments {
            let status = payment.status.name();
            put_record(tx, s, "payments", id, status, payment).await?;
        }
        Ok(())
    }
}

impl Store for Shipping {
    async fn create_tables(client: &Client, s: &str) -> Result<(), Error> {
        let destinations = format!(
            "CREATE TABLE IF NOT EXISTS {s}.destinations (country TEXT PRIMARY KEY);"
        );
        client
            .batch_execute(&(destinations + &records_table(s, "shipments")))
            .await?;
        Ok(())
    }

    async fn load(
        tx: &Transaction<'_>,
        s: &str,
        event: &Event,
    ) -> Result<Self, Error> {
        let id = event.order_id();
        let mut shipping = Shipping::default();
        if let Some(shipment) =
            record::<Shipment>(tx, s, "shipments", id, true).await?
        {
            shipping.shipments.insert(id.to_owned(), shipment);
        }
        let sql = format!("SELECT country FROM {s}.destinations");
        for row in tx.query(&sql, &[]).await? {
            shipping.destinations.insert(row.get(0));
        }
        Ok(shipping)
    }

    async fn save(&self, tx: &Transaction<'_>, s: &str) -> Result<(), Error> {
        for (id, shipment) in &self.shipments {
            let status = shipment.status.name();
            put_record(tx, s, "shipments", id, status, shipment).await?;
        }
        Ok(())
    }
}

/// Writes the seed into each service's own tables; a row already there stays as it is.
pub async fn seed(
    inventory: &Client,
    payments: &Client,
    shipping: &Client,
    schemas: &crate::Schemas,
    seed: &Seed,
) -> Result<(), Error> {
    let s = &schemas.inventory;
    // A row already there is kept: seeding a shop that runs must not reset its stock.
    let sql = format!(
        "INSERT INTO {s}.stock (sku, available) VALUES ($1, $2) ON CONFLICT (sku) DO NOTHING"
    );
    for (sku, n) in &seed.stock {
        let n = i32::try_from(*n).map_err(|_| Error::OutOfRange(n.to_string()))?;
        inventory.execute(&sql, &[sku, &n]).await?;
    }
    let s = &schemas.payments;
    let sql = format!(
        "INSERT INTO {s}.balances (customer_id, balance_cents) VALUES ($1, $2)
         ON CONFLICT (customer_id) DO NOTHING"
    );
    for (customer, cents) in &seed.balances {
        payments.execute(&sql, &[customer, &to_i64(*cents)?]).await?;
    }
    let s = &schemas.shipping;
    let sql = format!(
        "INSERT INTO {s}.destinations (country) VALUES ($1) ON CONFLICT (country) DO NOTHING"
    );
    for country in &seed.destinations {
        shipping.execute(&sql, &[country]).await?;
    }
    Ok(())
}
