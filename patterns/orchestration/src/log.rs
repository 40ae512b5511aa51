//! The saga log: durable in PostgreSQL ([`PgLog`]), or in memory ([`MemLog`], to measure what
//! durability costs and nothing else).
//!
//! Every change to a saga goes through [`SagaLog::apply`]: in one transaction it locks the saga's
//! row, checks that the caller owns the saga, replays the log, asks [`decide`] what to append,
//! and appends it. Ownership is a lease: a saga row names its owner and until when; an
//! orchestrator renews the leases of the sagas it drives, and takes over only sagas whose lease
//! ran out (or that name it, after a restart). The ownership check inside `apply` is the fence: an
//! orchestrator that lost a saga can no longer write to it, even if it still thinks it drives it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Pool, PoolError};
use shop_domain::OrderPlaced;

use crate::faults::Crash;
use crate::saga::{Definition, Input, Record, State, Terminal, decide};

/// Why the log could not record or read a saga. Nothing was appended (but see
/// [`LogError::Crashed`]).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A statement failed; its transaction rolled back.
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// The pool could not hand out a connection (database down, or timeout).
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] PoolError),
    /// The pool could not be built from the configuration.
    #[error(transparent)]
    PoolSetup(#[from] crate::PoolSetupError),
    /// No saga with this id is in this log.
    #[error("no saga {0}")]
    UnknownSaga(String),
    /// The fence: another orchestrator holds the saga's lease, so this one
    /// must not write, even if it thinks it still drives the saga.
    #[error("saga {saga} is driven by {owner}")]
    NotOwner {
        /// The saga asked about.
        saga: String,
        /// The orchestrator that holds its lease.
        owner: String,
    },
    /// A stored record or order does not parse (or one will not serialize): a
    /// bug or a hand-edited row, which a retry will not fix.
    #[error("unreadable log entry: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// A saga whose row says it ended has no ending as its last record: a bug or a hand-edited
    /// row.
    #[error("saga {0} is marked ended, but its log does not end")]
    Unfinished(String),
    /// A planned crash ([`crate::faults::CrashingLog`]): the orchestrator using
    /// this log dies here on purpose. At `AfterIntent` the intent is committed.
    #[error("crashed on purpose at {0:?}")]
    Crashed(Crash),
}

/// What one `apply` did: the saga's order, the records appended, and the state
/// after them.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The order the saga is about, for the commands to carry.
    pub order: OrderPlaced,
    /// What this call appended, in order: empty if the input changed nothing.
    pub appended: Vec<Record>,
    /// The saga after the appended records.
    pub state: State,
}

/// Where sagas are recorded. `apply` is the only way a saga moves.
pub trait SagaLog: Send + Sync + 'static {
    /// Records a new saga for `order`, owned by `owner`; `false` if it exists.
    fn create(
        &self,
        saga_id: &str,
        order: &OrderPlaced,
        owner: &str,
    ) -> impl Future<Output = Result<bool, LogError>> + Send;

    /// Decides and appends, atomically, as `owner`.
    fn apply(
        &self,
        saga_id: &str,
        owner: &str,
        saga: &Definition,
        input: &Input,
    ) -> impl Future<Output = Result<Applied, LogError>> + Send;

    /// Renews `owner`'s leases and takes over running sagas whose lease ran
    /// out; returns every running saga `owner` now holds.
    fn claim(
        &self,
        owner: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<String>, LogError>> + Send;

    /// The saga's order and log, if it exists.
    fn load(
        &self,
        saga_id: &str,
    ) -> impl Future<Output = Result<Option<(OrderPlaced, Vec<Record>)>, LogError>> + Send;
}

/// The log in a PostgreSQL schema of its own, over a small connection pool: a
/// connection that breaks is replaced on the next call instead of ending the
/// log, the orchestrator's workers each take a connection from it, and a
/// caller outside them (a test, a tool reading the log) does not queue behind
/// their queries.
pub struct PgLog {
    pool: Pool,
    schema: String,
    lease: Duration,
}

/// Connections per log: one for each of an orchestrator's workers (eight in
/// the shop and the benchmarks), and two for callers outside them.
const POOL_SIZE: usize = 10;

impl PgLog {
    /// Connects and creates the schema and tables if missing.
    pub async fn connect(
        url: &str,
        schema: &str,
        lease: Duration,
    ) -> Result<PgLog, LogError> {
        let pool = crate::pool(url, POOL_SIZE)?;
        let client = pool.get().await?;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {schema}.sagas (
                     id text PRIMARY KEY,
                     order_json text NOT NULL,
                     owner text NOT NULL,
                     lease_until timestamptz NOT NULL,
                     status text NOT NULL DEFAULT 'running',
                     created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                     finished_at timestamptz);
                 CREATE TABLE IF NOT EXISTS {schema}.saga_log (
                     saga_id text NOT NULL REFERENCES {schema}.sagas (id),
                     seq int NOT NULL,
                     record text NOT NULL,
                     writer text NOT NULL,
                     PRIMARY KEY (saga_id, seq));
                 ALTER TABLE {schema}.sagas
                     ADD COLUMN IF NOT EXISTS announced_at timestamptz;"
            ))
            .await?;
        drop(client);
        Ok(PgLog { pool, schema: schema.to_owned(), lease })
    }

    /// Who wrote each record of a saga (tests check that one owner drove it).
    pub async fn writers(&self, saga_id: &str) -> Result<Vec<String>, LogError> {
        let sql = format!(
            "SELECT writer FROM {}.saga_log WHERE saga_id = $1 ORDER BY seq",
            self.schema
        );
        let client = self.pool.get().await?;
        let rows = client.query(&sql, &[&saga_id]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Ends a saga's lease now, as if its owner had stopped renewing it.
    pub async fn expire_lease(&self, saga_id: &str) -> Result<(), LogError> {
        let sql = format!(
            "UPDATE {}.sagas SET lease_until = now() - interval '1 s' WHERE id = $1",
            self.schema
        );
        self.pool.get().await?.execute(&sql, &[&saga_id]).await?;
        Ok(())
    }
}

/// A saga that ended and has not been announced yet: see [`PgLog::unannounced`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    /// The saga.
    pub saga_id: String,
    /// The order it checked out.
    pub order: OrderPlaced,
    /// How it ended: completed or compensated (a stuck saga is not announced).
    pub terminal: Terminal,
}

impl PgLog {
    /// Up to `limit` sagas that completed or were compensated and are not marked announced,
    /// oldest ending first. The `sagas` row takes its status in the transaction that appends the
    /// ending, so this is an outbox over the log: nothing that ended is missed, and an ending
    /// is offered again until [`PgLog::announced`] marks it. A stuck saga waits for a person,
    /// and is not offered.
    pub async fn unannounced(&self, limit: i64) -> Result<Vec<Ending>, LogError> {
        let s = &self.schema;
        let sql = format!(
            "SELECT s.id, s.order_json, last.record
             FROM {s}.sagas s,
                  LATERAL (SELECT record FROM {s}.saga_log l WHERE l.saga_id = s.id
                           ORDER BY seq DESC LIMIT 1) last
             WHERE s.status IN ('completed', 'compensated') AND s.announced_at IS NULL
             ORDER BY s.finished_at LIMIT $1"
        );
        let client = self.pool.get().await?;
        let mut endings = vec![];
        for row in client.query(&sql, &[&limit]).await? {
            let saga_id: String = row.try_get(0)?;
            let record = serde_json::from_str::<Record>(row.try_get(2)?)?;
            let Record::Finished(terminal) = record else {
                return Err(LogError::Unfinished(saga_id));
            };
            let order = serde_json::from_str(row.try_get(1)?)?;
            endings.push(Ending { saga_id, order, terminal });
        }
        Ok(endings)
    }

    /// Marks the endings of `saga_ids` announced: [`PgLog::unannounced`] no longer offers them.
    pub async fn announced(&self, saga_ids: &[String]) -> Result<(), LogError> {
        let sql = format!(
            "UPDATE {}.sagas SET announced_at = clock_timestamp() WHERE id = ANY($1)",
            self.schema
        );
        self.pool.get().await?.execute(&sql, &[&saga_ids]).await?;
        Ok(())
    }
}

fn lease_secs(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

impl SagaLog for PgLog {
    async fn create(
        &self,
        saga_id: &str,
        order: &OrderPlaced,
        owner: &str,
    ) -> Result<bool, LogError> {
        let order = serde_json::to_string(order)?;
        let sql = format!(
            "INSERT INTO {}.sagas (id, order_json, owner, lease_until)
             VALUES ($1, $2, $3, now() + $4 * interval '1 s') ON CONFLICT DO NOTHING",
            self.schema
        );
        let lease = lease_secs(self.lease);
        let client = self.pool.get().await?;
        Ok(client.execute(&sql, &[&saga_id, &order, &owner, &lease]).await? == 1)
    }

    // ANCHOR: pg_apply
    async fn apply(
        &self,
        saga_id: &str,
        owner: &str,
        saga: &Definition,
        input: &Input,
    ) -> Result<Applied, LogError> {
        let s = &self.schema;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Each statement is parsed once per connection, not once per call.
        let sql = format!(
            "SELECT order_json, owner FROM {s}.sagas WHERE id = $1 FOR UPDATE"
        );
        let sql = tx.prepare_cached(&sql).await?;
        let Some(row) = tx.query_opt(&sql, &[&saga_id]).await? else {
            return Err(LogError::UnknownSaga(saga_id.to_owned()));
        };
        let (order, holder): (String, String) = (row.get(0), row.get(1));
        if holder != owner {
            let saga = saga_id.to_owned();
            return Err(LogError::NotOwner { saga, owner: holder });
        }
        let sql = format!(
            "SELECT record FROM {s}.saga_log WHERE saga_id = $1 ORDER BY seq"
        );
        let sql = tx.prepare_cached(&sql).await?;
        let mut records = vec![];
        for row in tx.query(&sql, &[&saga_id]).await? {
            records.push(serde_json::from_str::<Record>(row.get(0))?);
        }
        let appended = decide(saga, &State::replay(&records), input);
        let sql = format!(
            "INSERT INTO {s}.saga_log (saga_id, seq, record, writer)
             VALUES ($1, $2, $3, $4)"
        );
        let sql = tx.prepare_cached(&sql).await?;
        for (i, record) in appended.iter().enumerate() {
            let seq = (records.len() + i) as i32;
            let text = serde_json::to_string(record)?;
            tx.execute(&sql, &[&saga_id, &seq, &text, &owner]).await?;
            if let Record::Finished(terminal) = record {
                let status = match terminal {
                    Terminal::Completed => "completed",
                    Terminal::Compensated { .. } => "compensated",
                    Terminal::Stuck { .. } => "stuck",
                };
                let sql = format!(
                    "UPDATE {s}.sagas
                     SET status = $2, finished_at = clock_timestamp()
                     WHERE id = $1"
                );
                tx.execute(&sql, &[&saga_id, &status]).await?;
            }
        }
        tx.commit().await?;
        records.extend(appended.iter().cloned());
        let state = State::replay(&records);
        Ok(Applied { order: serde_json::from_str(&order)?, appended, state })
    }
    // ANCHOR_END: pg_apply

    // ANCHOR: pg_claim
    async fn claim(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<String>, LogError> {
        let s = &self.schema;
        let lease = lease_secs(lease);
        // Its own sagas: renewed, waiting for a row one of its workers holds
        // in an `apply` (a few milliseconds), so none misses its renewal.
        let renew = format!(
            "UPDATE {s}.sagas SET lease_until = now() + $2 * interval '1 s'
             WHERE status = 'running' AND owner = $1
             RETURNING id"
        );
        // Others' expired sagas: rows another orchestrator is claiming right
        // now are skipped, not waited for, so two never take the same saga.
        let take_over = format!(
            "UPDATE {s}.sagas
             SET owner = $1, lease_until = now() + $2 * interval '1 s'
             WHERE id IN (SELECT id FROM {s}.sagas WHERE status = 'running'
                          AND owner <> $1 AND lease_until < now()
                          FOR UPDATE SKIP LOCKED)
             RETURNING id"
        );
        let client = self.pool.get().await?;
        let mut ids = vec![];
        for sql in [renew, take_over] {
            for row in client.query(&sql, &[&owner, &lease]).await? {
                ids.push(row.get(0));
            }
        }
        Ok(ids)
    }
    // ANCHOR_END: pg_claim

    async fn load(
        &self,
        saga_id: &str,
    ) -> Result<Option<(OrderPlaced, Vec<Record>)>, LogError> {
        let s = &self.schema;
        let client = self.pool.get().await?;
        let sql = format!("SELECT order_json FROM {s}.sagas WHERE id = $1");
        let Some(row) = client.query_opt(&sql, &[&saga_id]).await? else {
            return Ok(None);
        };
        let order = serde_json::from_str(row.get(0))?;
        let sql = format!(
            "SELECT record FROM {s}.saga_log WHERE saga_id = $1 ORDER BY seq"
        );
        let mut records = vec![];
        for row in client.query(&sql, &[&saga_id]).await? {
            records.push(serde_json::from_str::<Record>(row.get(0))?);
        }
        Ok(Some((order, records)))
    }
}

/// One saga in memory.
struct MemSaga {
    order: OrderPlaced,
    owner: String,
    lease_until: Instant,
    records: Vec<Record>,
}

/// The same log in a map: gone when the process is. For measuring only.
#[derive(Clone, Default)]
pub struct MemLog {
    sagas: Arc<Mutex<HashMap<String, MemSaga>>>,
}

impl MemLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MemSaga>> {
        self.sagas.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SagaLog for MemLog {
    async fn create(
        &self,
        saga_id: &str,
        order: &OrderPlaced,
        owner: &str,
    ) -> Result<bool, LogError> {
        let mut sagas = self.lock();
        if sagas.contains_key(saga_id) {
            return Ok(false);
        }
        let saga = MemSaga {
            order: order.clone(),
            owner: owner.to_owned(),
            lease_until: Instant::now(),
            records: vec![],
        };
        sagas.insert(saga_id.to_owned(), saga);
        Ok(true)
    }

    async fn apply(
        &self,
        saga_id: &str,
        owner: &str,
        saga: &Definition,
        input: &Input,
    ) -> Result<Applied, LogError> {
        let mut sagas = self.lock();
        let Some(entry) = sagas.get_mut(saga_id) else {
            return Err(LogError::UnknownSaga(saga_id.to_owned()));
        };
        if entry.owner != owner {
            let saga = saga_id.to_owned();
            return Err(LogError::NotOwner { saga, owner: entry.owner.clone() });
        }
        let appended = decide(saga, &State::replay(&entry.records), input);
        entry.records.extend(appended.iter().cloned());
        let state = State::replay(&entry.records);
        Ok(Applied { order: entry.order.clone(), appended, state })
    }

    async fn claim(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<String>, LogError> {
        let now = Instant::now();
        let mut claimed = vec![];
        for (id, saga) in self.lock().iter_mut() {
            let running = State::replay(&saga.records).finished.is_none();
            if running && (saga.owner == owner || saga.lease_until < now) {
                saga.owner = owner.to_owned();
                saga.lease_until = now + lease;
                claimed.push(id.clone());
            }
        }
        Ok(claimed)
    }

    async fn load(
        &self,
        saga_id: &str,
    ) -> Result<Option<(OrderPlaced, Vec<Record>)>, LogError> {
        let sagas = self.lock();
        Ok(sagas.get(saga_id).map(|s| (s.order.clone(), s.records.clone())))
    }
}
