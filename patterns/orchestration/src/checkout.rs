//! The checkout as a saga, and what each participant does with a command, in the shop's own rules
//! (`shop-domain`): the same rules the choreography chapter wires together with events.
//!
//! A participant keeps its state in its own PostgreSQL schema as small JSON records (a hold, a
//! balance, a shipment), and applies each command in one transaction together with the command's
//! id in its inbox: a command id seen before returns the reply stored with it and changes nothing.

use std::collections::BTreeMap;

use deadpool_postgres::{Client, Transaction};
use serde::{Deserialize, Serialize};
use shop_domain::inventory::{Hold, Inventory};
use shop_domain::orders::{Order, OrderStatus, Orders};
use shop_domain::payments::{Payment, PaymentStatus, Payments};
use shop_domain::shipping::{Shipment, ShipmentStatus, Shipping};
use shop_domain::{OrderPlaced, Service, euros};

use crate::saga::{Definition, Kind, Outcome, Reply, State, Step};

// ANCHOR: checkout
/// Reserve stock, take the payment (the pivot: once the money is taken the
/// shop means to deliver), schedule the shipment, confirm the order.
pub fn checkout() -> Definition {
    Definition {
        name: "checkout",
        steps: vec![
            step(Service::Inventory, "reserve", "release"),
            step(Service::Payments, "authorize", "refund"),
            step(Service::Shipping, "schedule", "cancel"),
            step(Service::Orders, "confirm", "cancel"),
        ],
        pivot: 1,
    }
}
// ANCHOR_END: checkout

fn step(
    participant: Service,
    action: &'static str,
    compensation: &'static str,
) -> Step {
    Step { participant: participant.name(), action, compensation }
}

/// What travels to a participant. `command_id` is the same on every resend of
/// one step's action (or compensation), which is what the inbox recognises.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Command {
    /// The inbox's key: applied once, however often it arrives.
    pub command_id: String,
    /// The saga the reply must reach.
    pub saga_id: String,
    /// The step, as the reply names it back.
    pub step: usize,
    /// Do or undo.
    pub kind: Kind,
    /// The order the saga is about.
    pub order: OrderPlaced,
    /// What earlier steps reported, by participant (`"shipping"`: the
    /// tracking number). Keyed by name, not position, so that adding or
    /// moving a step changes nothing for the participants.
    pub details: BTreeMap<String, String>,
}

/// What each step that is done reported, keyed by its participant.
pub fn details(saga: &Definition, state: &State) -> BTreeMap<String, String> {
    let mut details = BTreeMap::new();
    for (index, step) in saga.steps.iter().enumerate() {
        if let Some(Outcome::Done { detail }) = state.action(index) {
            details.insert(step.participant.to_owned(), detail.clone());
        }
    }
    details
}

/// A participant could not apply a command (its database failed): it sends no
/// reply, so the orchestrator's timeout decides what happens next.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The participant's database failed; the transaction did not commit.
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// A record or stored reply (key first) does not parse, or a reply does not
    /// serialize: a bug or a hand-edited row, which a retry will not fix.
    #[error("stored record {0} is unreadable: {1}")]
    Corrupt(String, serde_json::Error),
}

/// The reason a compensation gives the domain.
const UNDO: &str = "checkout compensated";

/// Reads one record, locking it for this transaction.
async fn get<T: for<'de> Deserialize<'de>>(
    tx: &Transaction<'_>,
    schema: &str,
    key: &str,
) -> Result<Option<T>, ApplyError> {
    let sql =
        format!("SELECT value FROM {schema}.records WHERE key = $1 FOR UPDATE");
    let sql = tx.prepare_cached(&sql).await?;
    let Some(row) = tx.query_opt(&sql, &[&key]).await? else { return Ok(None) };
    let text: String = row.get(0);
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ApplyError::Corrupt(key.to_owned(), e))
}

/// Writes one record (inserted or replaced).
pub(crate) async fn put<T: Serialize>(
    tx: &Transaction<'_>,
    schema: &str,
    key: &str,
    value: &T,
) -> Result<(), ApplyError> {
    let text = serde_json::to_string(value)
        .map_err(|e| ApplyError::Corrupt(key.to_owned(), e))?;
    let sql = format!(
        "INSERT INTO {schema}.records (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
    );
    let sql = tx.prepare_cached(&sql).await?;
    tx.execute(&sql, &[&key, &text]).await?;
    Ok(())
}

// ANCHOR: apply_once
/// Applies `command` at most once: the inbox row and the effect commit
/// together, and a command id already in the inbox gets its stored reply.
/// Statements are prepared once per connection (`prepare_cached`).
pub async fn apply_once(
    client: &mut Client,
    schema: &str,
    participant: Service,
    command: &Command,
) -> Result<(Reply, bool), ApplyError> {
    let tx = client.transaction().await?;
    let id = &command.command_id;
    let sql = format!(
        "INSERT INTO {schema}.inbox (command_id) VALUES ($1)
         ON CONFLICT DO NOTHING"
    );
    if tx.execute(&tx.prepare_cached(&sql).await?, &[id]).await? == 0 {
        let sql = format!("SELECT reply FROM {schema}.inbox WHERE command_id = $1");
        let stored: String =
            tx.query_one(&tx.prepare_cached(&sql).await?, &[id]).await?.get(0);
        tx.commit().await?;
        let reply = serde_json::from_str(&stored)
            .map_err(|e| ApplyError::Corrupt(id.clone(), e))?;
        return Ok((reply, false)); // a resend: answered again, applied never
    }
    let reply = match participant {
        Service::Inventory => inventory(&tx, schema, command).await?,
        Service::Payments => payments(&tx, schema, command).await?,
        Service::Shipping => shipping(&tx, schema, command).await?,
        Service::Orders => orders(&tx, schema, command).await?,
    };
    let text = serde_json::to_string(&reply)
        .map_err(|e| ApplyError::Corrupt(id.clone(), e))?;
    let sql = format!(
        "UPDATE {schema}.inbox SET reply = $2, applied_at = clock_timestamp()
         WHERE command_id = $1"
    );
    tx.execute(&tx.prepare_cached(&sql).await?, &[id, &text]).await?;
    tx.commit().await?;
    Ok((reply, true))
}
// ANCHOR_END: apply_once

fn done(detail: impl Into<String>) -> Reply {
    Reply::Done { detail: detail.into() }
}

fn refused(reason: impl Into<String>) -> Reply {
    Reply::Refused { reason: reason.into() }
}

/// Loads what the command touches, applies the shop's rule, saves it back, and
/// answers from the resulting state (not from the emitted events, which are
/// empty for a repeat).
async fn inventory(
    tx: &Transaction<'_>,
    schema: &str,
    command: &Command,
) -> Result<Reply, ApplyError> {
    let order = &command.order;
    let id = order.order_id.as_str();
    let mut stock = Inventory::default();
    let hold: Option<Hold> = get(tx, schema, &format!("hold:{id}")).await?;
    let mut skus: Vec<String> = order.lines.iter().map(|l| l.sku.clone()).collect();
    if let Some(hold) = hold {
        stock.holds.insert(id.to_owned(), hold);
    }
    skus.sort();
    skus.dedup();
    for sku in &skus {
        let have: Option<u32> = get(tx, schema, &format!("stock:{sku}")).await?;
        stock.available.insert(sku.clone(), have.unwrap_or(0));
    }
    match command.kind {
        Kind::Action => stock.reserve(id, &order.lines),
        Kind::Compensation => stock.release(id, UNDO),
    };
    for (sku, have) in &stock.available {
        put(tx, schema, &format!("stock:{sku}"), have).await?;
    }
    let hold = &stock.holds[id];
    put(tx, schema, &format!("hold:{id}"), hold).await?;
    Ok(match (command.kind, hold) {
        (Kind::Compensation, _) => done("stock released"),
        (Kind::Action, Hold::Reserved { lines }) => {
            let items: u32 = lines.iter().map(|l| l.quantity).sum();
            done(format!("{items} item(s) reserved"))
        }
        (Kind::Action, Hold::Rejected { reason }) => refused(reason.clone()),
        (Kind::Action, Hold::Released { .. }) => refused("released before reserved"),
    })
}

async fn payments(
    tx: &Transaction<'_>,
    schema: &str,
    command: &Command,
) -> Result<Reply, ApplyError> {
    let order = &command.order;
    let (id, customer) = (order.order_id.as_str(), order.customer_id.as_str());
    let mut payments = Payments::default();
    if let Some(p) = get::<Payment>(tx, schema, &format!("payment:{id}")).await? {
        payments.payments.insert(id.to_owned(), p);
    }
    let balance: Option<u64> =
        get(tx, schema, &format!("balance:{customer}")).await?;
    payments.balances.insert(customer.to_owned(), balance.unwrap_or(0));
    match command.kind {
        Kind::Action => payments.authorize(id, customer, order.total_cents),
        Kind::Compensation => payments.refund(id, UNDO),
    };
    let payment = &payments.payments[id];
    put(tx, schema, &format!("payment:{id}"), payment).await?;
    for (who, cents) in &payments.balances {
        put(tx, schema, &format!("balance:{who}"), cents).await?;
    }
    Ok(match (command.kind, &payment.status) {
        (Kind::Compensation, PaymentStatus::Refunded { amount_cents, .. }) => {
            done(format!("{} refunded", euros(*amount_cents)))
        }
        (Kind::Compensation, _) => done("nothing charged, payment voided"),
        (Kind::Action, PaymentStatus::Authorized { amount_cents }) => {
            done(format!("{} authorised", euros(*amount_cents)))
        }
        (Kind::Action, PaymentStatus::Declined { reason }) => {
            refused(reason.clone())
        }
        (Kind::Action, _) => refused("payment voided before it was authorised"),
    })
}

async fn shipping(
    tx: &Transaction<'_>,
    schema: &str,
    command: &Command,
) -> Result<Reply, ApplyError> {
    let order = &command.order;
    let id = order.order_id.as_str();
    let mut shipping = Shipping::default();
    let places: Option<Vec<String>> = get(tx, schema, "destinations").await?;
    shipping.destinations = places.unwrap_or_default().into_iter().collect();
    if let Some(s) = get::<Shipment>(tx, schema, &format!("shipment:{id}")).await? {
        shipping.shipments.insert(id.to_owned(), s);
    }
    match command.kind {
        Kind::Action => shipping.schedule(id, &order.ship_to),
        Kind::Compensation => shipping.cancel(id, UNDO),
    };
    let shipment = &shipping.shipments[id];
    put(tx, schema, &format!("shipment:{id}"), shipment).await?;
    Ok(match (command.kind, &shipment.status) {
        (Kind::Compensation, _) => done("shipment cancelled"),
        (Kind::Action, ShipmentStatus::Scheduled { tracking }) => {
            done(tracking.clone())
        }
        (Kind::Action, ShipmentStatus::Failed { reason }) => refused(reason.clone()),
        (Kind::Action, _) => refused("shipment cancelled before it was scheduled"),
    })
}

async fn orders(
    tx: &Transaction<'_>,
    schema: &str,
    command: &Command,
) -> Result<Reply, ApplyError> {
    let placed = &command.order;
    let id = placed.order_id.as_str();
    let mut orders = Orders::default();
    if let Some(order) = get::<Order>(tx, schema, &format!("order:{id}")).await? {
        orders.orders.insert(id.to_owned(), order);
    }
    if orders.place(placed.clone()).is_err() {
        return Ok(refused("the order on file differs from the saga's"));
    }
    match command.kind {
        // The tracking number is what shipping reported, wherever its step is.
        Kind::Action => match command.details.get(Service::Shipping.name()) {
            Some(tracking) => orders.confirm(id, tracking),
            None => return Ok(refused("no tracking number from shipping")),
        },
        Kind::Compensation => orders.cancel(id, UNDO.to_owned()),
    };
    let order = &orders.orders[id];
    put(tx, schema, &format!("order:{id}"), order).await?;
    Ok(match (command.kind, &order.status) {
        (Kind::Compensation, _) => done("order cancelled"),
        (Kind::Action, OrderStatus::Confirmed { .. }) => done("order confirmed"),
        (Kind::Action, OrderStatus::Cancelled { reason }) => refused(reason.clone()),
        (Kind::Action, OrderStatus::Placed) => refused("order still open"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::Record;

    #[test]
    fn details_are_keyed_by_participant_wherever_its_step_is() {
        // A step added before shipping moves it from index 2 to index 3.
        let mut saga = checkout();
        let fraud =
            Step { participant: "fraud", action: "check", compensation: "forget" };
        saga.steps.insert(1, fraud);
        let done = |step: usize, detail: &str| Record::Outcome {
            step,
            kind: Kind::Action,
            outcome: Outcome::Done { detail: detail.into() },
        };
        let log = [
            done(0, "2 item(s) reserved"),
            done(1, "looks fine"),
            done(2, "58.00 authorised"),
            done(3, "trk-o-1001"),
        ];
        let details = details(&saga, &State::replay(&log));
        assert_eq!(details[Service::Shipping.name()], "trk-o-1001");
        assert_eq!(details["fraud"], "looks fine");
        assert_eq!(details.len(), 4);
    }
}
