//! The relay: it takes committed outbox rows, publishes them to Kafka, and marks them sent.
//!
//! One pass ([`Relay::publish_batch`]) runs in one PostgreSQL transaction:
//!
//! 1. **Claim** up to `batch_size` pending rows in `seq` order, `FOR UPDATE SKIP LOCKED`. The
//!    relay does not remember how far it got (no high-water mark): it asks for every row still
//!    pending, so a row that committed late, after rows with a higher `seq` were published, is
//!    simply found by the next pass. Rows another relay has claimed are locked, and skipped.
//! 2. **Hold back** a claimed row when an earlier row of the same aggregate is still unsent and
//!    not in this claim (another relay holds it, or it failed): publishing it now would overtake
//!    its predecessor.
//! 3. **Publish** each aggregate's rows one after the other (key = aggregate id, so they share a
//!    partition), and different aggregates concurrently. When a row fails, the rest of its
//!    aggregate waits for the next pass.
//! 4. **Mark** the published rows `sent`; a failed row gets one more attempt counted and, once it
//!    has used `max_attempts`, is marked `failed` and reported. Then commit.
//!
//! A crash between 3 and 4 rolls the transaction back: the rows are still pending, and the next
//! relay publishes them again. That is the at-least-once half of the bargain; the consumer's inbox
//! is the other half.
//!
//! The relay publishes through a [`Publisher`]: a Kafka producer in production, and the seam
//! through which the tests and the examples' "break it" flags make a publish fail or the relay
//! die ([`crate::faults`]). The relay's own code has no test branch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, Pool, PoolError, Transaction};
use futures::FutureExt;
use futures::future::join_all;
use kafka_events::envelope::header;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Notify;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use tracing::field::display;
use tracing::{info, warn};
use uuid::Uuid;

use crate::{OutboxError, checked};

/// Why a relay pass stopped. Publish failures of single rows are not errors: they
/// are counted on the row and reported in [`RelayReport`].
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A PostgreSQL statement or the connection failed. Unless the commit itself
    /// went through, the pass rolls back: its rows are pending again, and those it
    /// published go out a second time, which consumers' inboxes absorb.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The schema name was refused ([`OutboxError::BadSchemaName`]) when the relay
    /// was made.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The relay's pool could not hand out a connection: PostgreSQL is down or
    /// unreachable. Nothing was claimed; the next pass asks again.
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] PoolError),
    /// The relay's pool could not be built (the URL does not parse).
    #[error(transparent)]
    PoolSetup(#[from] crate::PoolSetupError),
}

/// Why one row was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker refused the row or did not acknowledge it in time. The row
    /// counts an attempt; it may still have been written, so a retry can make a
    /// copy, which the consumer's inbox absorbs.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Refused for another reason (a wrapper's own rule, an injected fault).
    #[error("{0}")]
    Refused(String),
}

/// Where a relay sends its rows, and waits for each acknowledgement.
pub trait Publisher: Send + Sync {
    /// Publishes one row; its partition and offset once the broker has it.
    fn publish(
        &self,
        row: &ClaimedRow,
    ) -> impl Future<Output = Result<(i32, i64), PublishError>> + Send;
}

impl Publisher for FutureProducer {
    async fn publish(&self, row: &ClaimedRow) -> Result<(i32, i64), PublishError> {
        Ok(send(self, row).await?)
    }
}

/// How a relay works.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows claimed per pass (one transaction).
    pub batch_size: i64,
    /// Publish attempts per row before it is marked `failed`.
    pub max_attempts: i32,
    /// How long [`Relay::run`] waits after a pass that published nothing.
    pub poll_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 256,
            max_attempts: 5,
            poll_interval: Duration::from_millis(20),
        }
    }
}

/// A row the broker acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event id, also sent as the `event-id` header.
    pub id: Uuid,
    /// The message key: every event of the aggregate goes to the same partition.
    pub aggregate_id: String,
    /// Also sent as the `event-type` header.
    pub event_type: String,
    /// With `partition` and `offset`, where a consumer finds the event.
    pub topic: String,
    /// Decided by the key, so the same for all of the aggregate's events as long
    /// as the topic's partition count does not change.
    pub partition: i32,
    /// Its place in the partition: the order consumers of that partition read in.
    pub offset: i64,
}

/// A row whose publishing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRow {
    /// The event id: the row to look at in the outbox table.
    pub id: Uuid,
    /// The aggregate whose later events wait behind this one.
    pub aggregate_id: String,
    /// What kind of event, for the log line and whoever reads it.
    pub event_type: String,
    /// Attempts used so far, this one included.
    pub attempts: i32,
    /// The publisher's error as text, as stored in the row's `last_error`.
    pub error: String,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Published and marked sent, in the order the broker acknowledged them.
    pub published: Vec<Published>,
    /// Failed this time, still `pending`: the next pass tries again.
    pub retrying: Vec<FailedRow>,
    /// Out of attempts: marked `failed`, left in the table for a human
    /// ([`crate::retry_failed`]). Later events of the same aggregate wait behind it.
    pub failed: Vec<FailedRow>,
    /// Claimed but not published, because an earlier event of the same aggregate is
    /// still unsent.
    pub held_back: usize,
}

/// What [`Relay::run`] did in all, until it was stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Every pass, idle ones included: many passes and little published means the
    /// relay mostly polled.
    pub passes: u64,
    /// Rows published and marked sent.
    pub published: u64,
    /// Failed publishes that left their row pending for another try; a row that
    /// fails twice counts twice.
    pub retried: u64,
    /// Every row this relay marked `failed`.
    pub failed: Vec<FailedRow>,
}

/// A relay for one service's outbox (one schema), with a connection pool of its
/// own: a pass holds a transaction open while it waits for the broker, so it
/// shares its connection with nobody. The pool goes with the relay, and so do
/// its connection and any pass in flight.
pub struct Relay<P = FutureProducer> {
    pool: Pool,
    /// The connection of the current (or last) pass. Each pass takes it from
    /// the pool afresh, so a connection the server closed is replaced then.
    connection: Option<Object>,
    /// Everything else, apart from the connection so that a batch can borrow it
    /// while its transaction borrows the connection.
    state: State<P>,
}

struct State<P> {
    schema: String,
    publisher: P,
    config: RelayConfig,
    /// Ends [`Relay::run`]'s wait after an idle pass early.
    wake: Arc<Notify>,
}

impl<P: Publisher> Relay<P> {
    /// A relay over `<schema>.outbox` on connections from `pool` (give it one of
    /// its own: see [`Relay`]), publishing with `publisher`: a producer from
    /// [`kafka_events::client::producer`] (acks from all replicas, idempotent),
    /// or a wrapper around one.
    pub fn new(pool: Pool, schema: &str, publisher: P) -> Result<Self, RelayError> {
        let state = State {
            schema: checked(schema)?.to_owned(),
            publisher,
            config: RelayConfig::default(),
            wake: Arc::new(Notify::new()),
        };
        Ok(Relay { pool, connection: None, state })
    }

    /// A relay with a pool of its own to `url`: one connection, as a pass needs
    /// no more. Fails now, not at the first pass, when PostgreSQL does not
    /// answer.
    pub async fn connect(
        url: &str,
        schema: &str,
        publisher: P,
    ) -> Result<Self, RelayError> {
        checked(schema)?;
        let pool = crate::pool(url, 1)?;
        let mut relay = Relay::new(pool, schema, publisher)?;
        relay.connection = Some(relay.pool.get().await?);
        Ok(relay)
    }

    /// Replaces the defaults ([`RelayConfig::default`]); call it before running.
    pub fn with_config(mut self, config: RelayConfig) -> Self {
        self.state.config = config;
        self
    }

    /// Lets the service wake the relay right after a commit, so an event leaves
    /// within milliseconds instead of a poll interval.
    pub fn with_wake(mut self, wake: Arc<Notify>) -> Self {
        self.state.wake = wake;
        self
    }

    /// One pass: claim, publish, mark, commit. See the module documentation.
    pub async fn publish_batch(&mut self) -> Result<RelayReport, RelayError> {
        self.claim().await?.finish().await
    }

    // ANCHOR: claim
    /// Steps 1 and 2 of a pass: claims pending rows and sets aside those that would
    /// overtake an unsent earlier event of their aggregate. The claimed rows stay
    /// locked until the returned batch finishes (or is dropped, which rolls back).
    pub async fn claim(&mut self) -> Result<Batch<'_, P>, RelayError> {
        let s = &self.state.schema;
        // Back to the pool and out again: a connection that closed since the
        // last pass is replaced here instead of failing every pass after it.
        self.connection = None;
        let connection = self.connection.insert(self.pool.get().await?);
        let tx = connection.transaction().await?;
        // No watermark: every pending row, however late it committed.
        let claim = format!(
            "SELECT seq, id, aggregate_id, topic, event_type, payload,
                    header_names, header_values
             FROM {s}.outbox WHERE status = 'pending'
             ORDER BY seq LIMIT $1
             FOR UPDATE SKIP LOCKED"
        );
        // Prepared once per connection: a pass sends no statement to be parsed.
        let claim = tx.prepare_cached(&claim).await?;
        let rows = tx.query(&claim, &[&self.state.config.batch_size]).await?;
        let mut rows: Vec<ClaimedRow> =
            rows.iter().map(ClaimedRow::from_row).collect();
        // The earliest unsent row of each aggregate that is not ours: locked by
        // another relay, or failed. Our rows after it must wait. Only a row
        // before our last can hold one back; ours are left out through a hash.
        let blockers = format!(
            "SELECT aggregate_id, min(seq) FROM {s}.outbox
             WHERE aggregate_id = ANY($1) AND status <> 'sent' AND seq < $3
               AND seq NOT IN (SELECT unnest($2::bigint[]))
             GROUP BY aggregate_id"
        );
        let aggregates: Vec<&str> =
            rows.iter().map(|r| r.aggregate_id.as_str()).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let last = seqs.last().copied().unwrap_or(0);
        let blockers = tx.prepare_cached(&blockers).await?;
        let first_unsent: HashMap<String, i64> = tx
            .query(&blockers, &[&aggregates, &seqs, &last])
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let claimed = rows.len();
        rows.retain(|r| {
            first_unsent.get(&r.aggregate_id).is_none_or(|&b| r.seq < b)
        });
        let held_back = claimed - rows.len();
        Ok(Batch { tx, state: &mut self.state, rows, held_back })
    }
    // ANCHOR_END: claim

    /// [`Relay::run_with`], with nothing to do after each pass.
    pub async fn run(
        self,
        stop: impl Future<Output = ()>,
    ) -> Result<RelayStats, RelayError> {
        self.run_with(stop, |_| {}).await
    }

    // ANCHOR: run
    /// Runs passes until `stop` completes, then returns what it did; `on_pass`
    /// sees each pass's report. `stop` is checked between passes, never inside
    /// one: a pass that has published also marks. After a pass that published
    /// nothing, it waits `poll_interval`, or until it is woken.
    pub async fn run_with(
        mut self,
        stop: impl Future<Output = ()>,
        mut on_pass: impl FnMut(&RelayReport),
    ) -> Result<RelayStats, RelayError> {
        let mut stop = std::pin::pin!(stop);
        let mut stats = RelayStats::default();
        loop {
            let report = self.publish_batch().await?;
            on_pass(&report);
            stats.passes += 1;
            stats.published += report.published.len() as u64;
            stats.retried += report.retrying.len() as u64;
            let idle = report.published.is_empty();
            stats.failed.extend(report.failed);
            if !idle {
                if (&mut stop).now_or_never().is_some() {
                    return Ok(stats);
                }
                continue;
            }
            let wake = Arc::clone(&self.state.wake);
            tokio::select! {
                () = &mut stop => return Ok(stats),
                () = wake.notified() => {}
                () = tokio::time::sleep(self.state.config.poll_interval) => {}
            }
        }
    }
    // ANCHOR_END: run
}

/// A claimed batch: rows locked by this relay's open transaction.
pub struct Batch<'a, P> {
    tx: Transaction<'a>,
    state: &'a mut State<P>,
    rows: Vec<ClaimedRow>,
    held_back: usize,
}

/// An outbox row a relay has claimed and is about to publish.
pub struct ClaimedRow {
    seq: i64,
    id: Uuid,
    aggregate_id: String,
    topic: String,
    event_type: String,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl ClaimedRow {
    /// The event's id, chosen by the service that wrote it.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The aggregate's id: the message key.
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }

    /// The event's type, sent as the `event-type` header; a wrapping
    /// [`Publisher`] can route or refuse by it.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    fn from_row(row: &Row) -> Self {
        let names: Vec<String> = row.get(6);
        let values: Vec<String> = row.get(7);
        ClaimedRow {
            seq: row.get(0),
            id: row.get(1),
            aggregate_id: row.get(2),
            topic: row.get(3),
            event_type: row.get(4),
            payload: row.get(5),
            headers: names.into_iter().zip(values).collect(),
        }
    }

    fn published(&self, partition: i32, offset: i64) -> Published {
        Published {
            id: self.id,
            aggregate_id: self.aggregate_id.clone(),
            event_type: self.event_type.clone(),
            topic: self.topic.clone(),
            partition,
            offset,
        }
    }

    /// The value of one of the event's own headers.
    fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        found.next().map(|(_, value)| value.as_str())
    }

    /// One line per event, with its correlation id when it has one, so a reader
    /// can follow an event from the service that wrote it to its consumers.
    fn log_published(&self, p: &Published) {
        let (kind, key) = (&p.event_type, &p.aggregate_id);
        let at = format!("{}/{}@{}", p.topic, p.partition, p.offset);
        let correlation_id = self.header(header::CORRELATION_ID).map(display);
        info!(event_id = %p.id, correlation_id, "published {kind} (key {key}) to {at}");
    }

    fn log_failure(&self, f: &FailedRow, out_of_attempts: bool) {
        let (kind, key, n, error) =
            (&f.event_type, &f.aggregate_id, f.attempts, &f.error);
        let correlation_id = self.header(header::CORRELATION_ID).map(display);
        if out_of_attempts {
            warn!(event_id = %f.id, correlation_id, "{kind} of {key} marked failed after {n} attempts: {error}");
        } else {
            warn!(event_id = %f.id, correlation_id, "{kind} of {key} not published (attempt {n}), tried again next pass: {error}");
        }
    }

    fn failed(&self, attempts: i32, error: &str) -> FailedRow {
        FailedRow {
            id: self.id,
            aggregate_id: self.aggregate_id.clone(),
            event_type: self.event_type.clone(),
            attempts,
            error: error.to_owned(),
        }
    }
}

impl<P: Publisher> Batch<'_, P> {
    /// The ids of the rows this batch will publish, in `seq` order.
    pub fn ids(&self) -> Vec<Uuid> {
        self.rows.iter().map(|r| r.id).collect()
    }

    // ANCHOR: finish
    /// Steps 3 and 4: publishes each aggregate's rows in order (aggregates
    /// concurrently), then, in the claim's transaction, marks what the broker
    /// acknowledged as `sent`, counts an attempt on what failed, and commits.
    pub async fn finish(self) -> Result<RelayReport, RelayError> {
        let Batch { tx, state, rows, held_back } = self;
        let chains = by_aggregate(&rows);
        let publisher = &state.publisher;
        let publishing = chains.iter().map(|chain| publish_chain(publisher, chain));
        // A relay that dies here has published rows it never marks: its
        // transaction rolls back, and they are all pending again.
        let outcomes = join_all(publishing).await;
        let mut report = mark(&tx, state, &outcomes).await?;
        tx.commit().await?;
        let reached: usize = outcomes.iter().map(Vec::len).sum();
        report.held_back = held_back + (rows.len() - reached);
        Ok(report)
    }
    // ANCHOR_END: finish
}

/// The claimed rows grouped by aggregate, each group in `seq` order, the groups in
/// the order of their first row.
fn by_aggregate(rows: &[ClaimedRow]) -> Vec<Vec<&ClaimedRow>> {
    let mut chains: Vec<Vec<&ClaimedRow>> = Vec::new();
    let mut chain_of: HashMap<&str, usize> = HashMap::new();
    for row in rows {
        let next = chains.len();
        let i = *chain_of.entry(row.aggregate_id.as_str()).or_insert(next);
        if i == next {
            chains.push(Vec::new());
        }
        chains[i].push(row);
    }
    chains
}

// ANCHOR: mark
/// Records the outcome of each publish: `sent`, or one more attempt and the error,
/// and `failed` once the row has used `max_attempts`.
async fn mark<P>(
    tx: &Transaction<'_>,
    state: &State<P>,
    outcomes: &[ChainOutcome<'_>],
) -> Result<RelayReport, RelayError> {
    let s = &state.schema;
    let mut report = RelayReport::default();
    let mut sent = Vec::new();
    let count_failure = format!(
        "UPDATE {s}.outbox SET attempts = attempts + 1, last_error = $2,
             status = CASE WHEN attempts + 1 >= $3 THEN 'failed'
                           ELSE 'pending' END
         WHERE seq = $1 RETURNING status, attempts"
    );
    for (row, result) in outcomes.iter().flatten() {
        match result {
            Ok((partition, offset)) => {
                sent.push(row.seq);
                let published = row.published(*partition, *offset);
                row.log_published(&published);
                report.published.push(published);
            }
            Err(error) => {
                let max = state.config.max_attempts;
                let params: [&(dyn ToSql + Sync); 3] = [&row.seq, error, &max];
                let marked = tx.query_one(&count_failure, &params).await?;
                let failed = row.failed(marked.get(1), error);
                let out_of_attempts = marked.get::<_, &str>(0) == "failed";
                row.log_failure(&failed, out_of_attempts);
                match out_of_attempts {
                    true => report.failed.push(failed),
                    false => report.retrying.push(failed),
                }
            }
        }
    }
    let mark_sent = format!(
        "UPDATE {s}.outbox SET status = 'sent', sent_at = now(),
             attempts = attempts + 1
         WHERE seq = ANY($1)"
    );
    tx.execute(&tx.prepare_cached(&mark_sent).await?, &[&sent]).await?;
    Ok(report)
}
// ANCHOR_END: mark

/// What happened to each row of one aggregate's chain, in order. A chain stops at
/// its first failure, so rows after it are absent (and count as held back).
type ChainOutcome<'r> = Vec<(&'r ClaimedRow, Result<(i32, i64), String>)>;

/// Publishes one aggregate's rows in order, each after the previous one's
/// acknowledgement, and stops at the first failure.
async fn publish_chain<'r, P: Publisher>(
    publisher: &P,
    chain: &[&'r ClaimedRow],
) -> ChainOutcome<'r> {
    let mut outcome = Vec::new();
    for row in chain {
        let result = publisher.publish(row).await.map_err(|e| e.to_string());
        let failed = result.is_err();
        outcome.push((*row, result));
        if failed {
            break;
        }
    }
    outcome
}

// ANCHOR: send
/// Publishes one row and waits for the broker's acknowledgement. The key is the
/// aggregate id; the headers say which event this is, so a consumer's inbox can
/// recognise a second copy.
async fn send(
    producer: &FutureProducer,
    row: &ClaimedRow,
) -> Result<(i32, i64), KafkaError> {
    let id = row.id.to_string();
    let ours =
        [(header::EVENT_ID, id.as_str()), (header::EVENT_TYPE, &row.event_type)];
    let theirs = row.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let headers =
        ours.into_iter()
            .chain(theirs.filter(|(k, _)| {
                ![header::EVENT_ID, header::EVENT_TYPE].contains(k)
            }))
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header { key, value: Some(value) })
            });
    let record = FutureRecord::to(&row.topic)
        .key(row.aggregate_id.as_str())
        .payload(row.payload.as_slice())
        .headers(headers);
    let delivery = producer
        .send(record, Duration::from_secs(5))
        .await
        .map_err(|(error, _)| error)?;
    Ok((delivery.partition, delivery.offset))
}
// ANCHOR_END: send
