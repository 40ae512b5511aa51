//! Orchestration: a saga orchestrator that tells each service of the checkout what to do, keeps
//! a durable log of every decision, and undoes the completed steps in reverse when one fails.
//!
//! - [`saga`]: the engine, with no I/O. A saga is a list of steps, each an action and its
//!   compensation; [`saga::decide`] turns "the log so far + this reply (or timeout)" into the
//!   records to append. Everything subtle (duplicates, late replies, unknown outcomes, the pivot,
//!   strict reverse order) is decided here and tested as a table.
//! - [`log`]: the log in PostgreSQL (or in memory, to measure), with leases so that two
//!   orchestrators never drive one saga at once.
//! - [`checkout`]: the checkout saga and what each participant does with a command, in the rules
//!   of `shop-domain` (the same rules the choreography chapter wires with events).
//! - [`participant`] and [`orchestrator`]: the services over RabbitMQ: command queues, one reply
//!   queue per orchestrator, the command id as correlation id, and an inbox per participant.
//! - [`faults`]: crashes on purpose, through a wrapper around the log, for the tests and the
//!   example's "break it" flag.
//!
//! Use orchestration when a workflow has an owner who must be able to say where each instance
//! stands and change the order of steps in one place; prefer choreography when services should
//! stay ignorant of the workflow and a central component is a cost you do not want. A production
//! orchestrator adds what this one leaves out: a workflow engine's versioning of running sagas,
//! a dashboard over the log, and alerts on sagas that stay compensating for long.

#![warn(missing_docs)]

use std::future::Future;

use deadpool_postgres::{BuildError, Manager, ManagerConfig, Pool, RecyclingMethod};

pub mod checkout;
pub mod faults;
pub mod log;
pub mod orchestrator;
pub mod participant;
pub mod saga;

/// Why a connection pool could not be built. Nothing is connected yet then:
/// a pool opens its connections when they are first asked for.
#[derive(Debug, thiserror::Error)]
pub enum PoolSetupError {
    /// The PostgreSQL URL (`DATABASE_URL`) does not parse.
    #[error("the PostgreSQL URL does not parse: {0}")]
    Url(#[from] tokio_postgres::Error),
    /// The pool refused its configuration.
    #[error("connection pool: {0}")]
    Build(#[from] BuildError),
}

/// A pool of at most `size` connections to the PostgreSQL at `url`: the saga
/// log's, and each participant's own. A connection is opened when first asked
/// for and closed when the pool is dropped, so whoever owns the pool owns its
/// connections.
pub fn pool(url: &str, size: usize) -> Result<Pool, PoolSetupError> {
    let config: tokio_postgres::Config = url.parse()?;
    // Fast recycling: a connection the server closed is dropped from the pool
    // when it is next handed out; one that broke without closing fails its
    // next query, once, which ends it, and the pool replaces it after that.
    let recycling_method = RecyclingMethod::Fast;
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig { recycling_method },
    );
    Ok(Pool::builder(manager).max_size(size).build()?)
}

/// Drives a PostgreSQL connection in the background. When it ends with an
/// error (the server went away, the network broke), the cause is logged: the
/// queries of its client fail from then on, and the log says why.
pub fn drive_connection(
    connection: impl Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "PostgreSQL connection ended");
        }
    });
}
