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

pub mod checkout;
pub mod faults;
pub mod log;
pub mod orchestrator;
pub mod participant;
pub mod saga;

/// The pool the log and each participant use: see [`pg_pool`].
pub use pg_pool::{PoolSetupError, pool};

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
