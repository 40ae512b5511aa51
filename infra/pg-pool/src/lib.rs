//! One way to build a PostgreSQL connection pool, for every crate that keeps its state in
//! PostgreSQL (the outbox's relay, the Kafka chapter's store, the orchestrator's log and its
//! participants, the choreographed services).
//!
//! Each service, relay or store owns its pool: connections open when first asked for and close
//! when the pool is dropped, so a component that stops or dies takes its connections with it, and
//! no process-wide pool outlives the part of the program that used it.
//!
//! A crate of its own rather than a feature of `infra`: Cargo switches a feature on for every
//! package of a build, so the first example would compile a PostgreSQL client it never uses.
#![warn(missing_docs)]

pub use deadpool_postgres::{BuildError, Pool};
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};

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

/// A pool of at most `size` connections to the PostgreSQL at `url`.
pub fn pool(url: &str, size: usize) -> Result<Pool, PoolSetupError> {
    Ok(pool_of(url.parse()?, size)?)
}

/// [`pool`], for a connection configuration the caller has adjusted (session options, say).
pub fn pool_of(
    config: tokio_postgres::Config,
    size: usize,
) -> Result<Pool, BuildError> {
    // Fast recycling: when the pool hands a connection out, it checks that the
    // connection is still open and opens a new one if the server closed it (a
    // restart, a terminated backend). A query on a connection that breaks
    // fails, and its caller returns the error. `Verified` would also send a
    // query at each checkout: a round trip for what the caller's first
    // statement finds out anyway.
    let recycling_method = RecyclingMethod::Fast;
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig { recycling_method },
    );
    Pool::builder(manager).max_size(size).build()
}
