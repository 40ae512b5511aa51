//! Choreography: a checkout saga that nobody runs. Orders, inventory, payments and shipping each
//! react to the others' events on Kafka, and each undoes its own part when a later step fails.
//!
//! - The rules are `shop-domain`'s pure reactions, `(state, event) -> (state, events)`, shared
//!   with the orchestration chapter; this crate is the coordination around them.
//! - [`wire`]: the Kafka chapter's envelope, keyed by order id, plus a causation id.
//! - [`store`]: each service's own tables, in its own PostgreSQL schema; no service reads another's.
//! - [`service`]: one event applied in ONE transaction: the inbox records its id, the state
//!   changes, and the emitted events go into the outbox. A relay publishes them afterwards. Next to
//!   it, the dual write this replaces ("commit, then publish"), to show what it loses.
//! - [`shop`]: the four services and their relays in one process, with fault plans that kill a
//!   service, a relay or a consumer at each boundary, and a supervisor that restarts them.
//!
//! Choose choreography when the steps are few and stable, when services should not know who
//! consumes their events, and when no single team owns the workflow. Its cost is that the
//! workflow exists only as the sum of everybody's reactions: nobody can say where a checkout
//! stands without asking four services, every failure must be known by every service that has
//! to undo something, and adding a step means changing several services. With more steps, or
//! when someone must see and steer each saga, prefer an orchestrator (the next chapter).

#![warn(missing_docs)]

use shop_domain::Service as ServiceName;

pub mod faults;
pub mod service;
pub mod shop;
pub mod store;
pub mod wire;

/// Why a service, relay or the shop failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("postgres: {0}")]
    /// PostgreSQL refused a connection, a query or a commit.
    Postgres(#[from] tokio_postgres::Error),
    #[error("no PostgreSQL connection: {0}")]
    /// A pool could not hand out a connection: PostgreSQL is down or unreachable.
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    /// A pool could not be built (the PostgreSQL URL does not parse).
    PoolSetup(#[from] outbox::PoolSetupError),
    #[error("outbox: {0}")]
    /// Writing to or reading the outbox failed.
    Outbox(#[from] outbox::OutboxError),
    #[error("relay: {0}")]
    /// The relay could not publish or mark an outbox row.
    Relay(#[from] outbox::relay::RelayError),
    #[error("kafka: {0}")]
    /// Kafka refused a client, a topic or a send.
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("json: {0}")]
    /// An event or a stored record would not (de)serialise as JSON.
    Json(#[from] serde_json::Error),
    #[error("value out of range: {0}")]
    /// A count did not fit PostgreSQL's `i64` or the domain's unsigned type.
    OutOfRange(String),
    #[error("the order was refused: {0}")]
    /// Orders refused to place the order (empty, or its id taken by another).
    Refused(String),
    #[error("{0}")]
    /// The shop as a whole failed, e.g. a wait ran past its deadline.
    Shop(String),
    /// The fault plan killed the process here (tests and `--no-outbox`, `--crash-*`
    /// only); the span is the work it died on.
    #[error("the process died, as its fault plan said")]
    Died(tracing::Span),
}

/// The PostgreSQL schema of each service: four databases in all but name.
#[derive(Clone, Debug)]
pub struct Schemas {
    /// Schema of the orders service.
    pub orders: String,
    /// Schema of the inventory service.
    pub inventory: String,
    /// Schema of the payments service.
    pub payments: String,
    /// Schema of the shipping service.
    pub shipping: String,
}

impl Schemas {
    /// `<prefix>_orders`, `<prefix>_inventory`, ...
    pub fn new(prefix: &str) -> Self {
        Schemas {
            orders: format!("{prefix}_{}", ServiceName::Orders),
            inventory: format!("{prefix}_{}", ServiceName::Inventory),
            payments: format!("{prefix}_{}", ServiceName::Payments),
            shipping: format!("{prefix}_{}", ServiceName::Shipping),
        }
    }

    /// The schema `service` owns, for code that must name it in SQL.
    pub fn of(&self, service: ServiceName) -> &str {
        match service {
            ServiceName::Orders => &self.orders,
            ServiceName::Inventory => &self.inventory,
            ServiceName::Payments => &self.payments,
            ServiceName::Shipping => &self.shipping,
        }
    }
}
