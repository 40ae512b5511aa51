//! What a step's side effect does: a participant applies one command to its own database, once.
//!
//! The rules are the orchestration chapter's, unchanged: `orchestration::checkout::apply_once`
//! loads what the command touches from the participant's schema, applies `shop-domain`'s rule,
//! saves it and records the command id in the participant's inbox, all in one transaction. A
//! command id seen before gets the reply stored with it and changes nothing. The engine needs
//! exactly that: it runs a side effect at least once (again after a crash that came between the
//! effect and the journal entry), so the effect itself must be idempotent.
//!
//! Here the workflow's process opens each participant's database itself. In a shop of separate
//! services the closure would call the participant's API with the command id as its idempotency
//! key, or the participant would be a Restate service of its own; the inbox stays either way.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::{Pool, PoolError};
use futures::future::BoxFuture;
use orchestration::checkout::{ApplyError, Command, apply_once};
use orchestration::participant::{self, Names, PARTICIPANTS, ServiceError};
use orchestration::saga::Reply;
use shop_domain::{Seed, Service};
use tracing::info;

/// Why a participant could not apply a command. Every one of these is worth a
/// retry: the database may come back, a person may repair a record.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// No connection could be had from the participant's pool.
    #[error("{0}: no PostgreSQL connection: {1}")]
    Pool(&'static str, PoolError),
    /// The transaction failed or a record is unreadable; nothing was committed.
    #[error("{0}: {1}")]
    Apply(&'static str, ApplyError),
    /// The workflow named a participant this process does not serve.
    #[error("no participant called {0} here")]
    Unknown(&'static str),
}

// ANCHOR: Participants
/// Applies a command at a participant. The workflow calls this inside
/// `ctx.run`, so the engine journals the reply; an `Err` is retried.
pub trait Participants: Send + Sync + 'static {
    /// Applies `command` at `participant` at most once, and returns its reply
    /// (the stored one, if the command id was applied before).
    fn apply(
        &self,
        participant: Service,
        command: Command,
    ) -> BoxFuture<'_, Result<Reply, StepError>>;
}
// ANCHOR_END: Participants

/// The participants as the orchestration chapter keeps them: a PostgreSQL
/// schema each (records and inbox), and a pool each, so that no participant
/// shares a connection with another.
pub struct Databases {
    names: Names,
    pools: HashMap<Service, Pool>,
}

impl Databases {
    /// Pools for every participant of the shop `names` at `url`. Nothing is
    /// connected yet: a pool connects when a command first needs it.
    pub fn new(
        url: &str,
        names: Names,
    ) -> Result<Self, orchestration::PoolSetupError> {
        let mut pools = HashMap::new();
        for participant in PARTICIPANTS {
            pools.insert(participant, orchestration::pool(url, 4)?);
        }
        Ok(Databases { names, pools })
    }
}

impl Participants for Databases {
    fn apply(
        &self,
        participant: Service,
        command: Command,
    ) -> BoxFuture<'_, Result<Reply, StepError>> {
        Box::pin(async move {
            let name = participant.name();
            let pool =
                self.pools.get(&participant).ok_or(StepError::Unknown(name))?;
            let mut db = pool.get().await.map_err(|e| StepError::Pool(name, e))?;
            let schema = self.names.schema(participant);
            let (reply, applied) =
                apply_once(&mut db, &schema, participant, &command)
                    .await
                    .map_err(|e| StepError::Apply(name, e))?;
            let id = &command.command_id;
            if applied {
                info!(service = name, "{id} applied: {reply:?}");
            } else {
                info!(service = name, "{id} seen before: stored reply, no effect");
            }
            Ok(reply)
        })
    }
}

impl<P: Participants + ?Sized> Participants for Arc<P> {
    fn apply(
        &self,
        participant: Service,
        command: Command,
    ) -> BoxFuture<'_, Result<Reply, StepError>> {
        (**self).apply(participant, command)
    }
}

/// Creates (or recreates) each participant's schema as the orchestration
/// chapter lays it out, and seeds stock, balances and destinations. No
/// RabbitMQ: here the engine carries the commands.
pub async fn setup(
    url: &str,
    names: &Names,
    seed: &Seed,
) -> Result<(), ServiceError> {
    participant::setup_schemas(url, names, seed).await
}

/// Removes the participants' schemas.
pub async fn teardown(url: &str, names: &Names) -> Result<(), ServiceError> {
    participant::teardown_schemas(url, names).await
}
