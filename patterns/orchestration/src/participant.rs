//! A participant as a service: it consumes its command queue on RabbitMQ, applies each command
//! once in its own PostgreSQL schema, and answers to the command's `reply_to` queue with the
//! command id as the correlation id.
//!
//! One command at a time (prefetch 1), acknowledged only after the reply is confirmed by the
//! broker: a participant that dies mid-command gets it again, and its inbox turns the second
//! delivery into the stored reply. A command it cannot read is dead-lettered, not retried forever.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use deadpool_postgres::{Pool, PoolError};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rabbitmq_queues::publish::{enable_confirms, persistent, publish_confirmed};
use rabbitmq_queues::topology::{dead_letters, work_queue};
use shop_domain::{Seed, Service};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use crate::PoolSetupError;
use crate::checkout::{ApplyError, Command, apply_once, put};
use crate::saga::Reply;

/// Where things live for one shop: queue names and schema names share a prefix,
/// so that tests and runs never see each other's messages or rows.
#[derive(Clone, Debug)]
pub struct Names {
    /// Unique per run or test (a random suffix, say).
    pub prefix: String,
}

impl Names {
    /// The names under `prefix`.
    pub fn new(prefix: &str) -> Names {
        Names { prefix: prefix.to_owned() }
    }
    /// The command queue `participant` consumes (a [`Service`], or a step's
    /// participant as the saga names it: the same name).
    pub fn queue(&self, participant: impl std::fmt::Display) -> String {
        format!("{}.{participant}", self.prefix)
    }
    /// The PostgreSQL schema of `participant`: the prefix with `-` and `.` made
    /// `_`, as an unquoted identifier needs, then the service's name.
    pub fn schema(&self, participant: Service) -> String {
        self.schema_of(participant.name())
    }
    /// The PostgreSQL schema of the saga log.
    pub fn log_schema(&self) -> String {
        self.schema_of("log")
    }
    fn schema_of(&self, owner: &str) -> String {
        format!("{}_{owner}", self.prefix.replace(['-', '.'], "_"))
    }
    /// The reply queue of the orchestrator called `orchestrator`: one each, so a
    /// reply reaches the orchestrator that sent the command.
    pub fn replies(&self, orchestrator: &str) -> String {
        format!("{}.replies.{orchestrator}", self.prefix)
    }
    /// Where the command queues send what they reject.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }
    /// The queue that keeps dead letters, for a person to look at.
    pub fn dead_letters(&self) -> String {
        format!("{}.dead", self.prefix)
    }
}

/// Every participant of the checkout saga: what [`setup`] creates a schema and
/// a queue for.
pub const PARTICIPANTS: [Service; 4] =
    [Service::Inventory, Service::Payments, Service::Shipping, Service::Orders];

/// Why a participant, or its setup, stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A statement failed.
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had (the database is down, or refuses us).
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] PoolError),
    /// The connection pool could not be built (the URL does not parse).
    #[error(transparent)]
    PoolSetup(#[from] PoolSetupError),
    /// Connecting, declaring or consuming failed.
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    /// [`setup`] could not write a seed record. (In the consume loop, a command
    /// that cannot be applied is logged and requeued; the loop goes on, unless
    /// the database could not be reached: see [`ServiceError::is_unreachable`].)
    #[error("{0}")]
    Apply(#[from] ApplyError),
    /// A reply was not confirmed by the broker.
    #[error("reply: {0}")]
    Publish(#[from] rabbitmq_queues::publish::PublishError),
    /// The reply to this command id could not be serialized.
    #[error("reply to {0} could not be encoded: {1}")]
    Encode(String, serde_json::Error),
    /// The record under this key does not parse: a bug or a hand-edited row.
    #[error("stored record {0} is unreadable: {1}")]
    Corrupt(String, serde_json::Error),
    /// The participant's task panicked or was cancelled.
    #[error("the participant's task panicked or was cancelled: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ServiceError {
    /// Whether PostgreSQL could not be reached at all (no connection, or one
    /// that broke), as opposed to a statement the server refused. A participant
    /// whose database is unreachable stops consuming with this error, so it
    /// does not take command after command only to put each one back.
    pub fn is_unreachable(&self) -> bool {
        let lost = |e: &tokio_postgres::Error| e.as_db_error().is_none();
        match self {
            ServiceError::Pool(_) => true,
            ServiceError::Db(e) | ServiceError::Apply(ApplyError::Db(e)) => lost(e),
            _ => false,
        }
    }
}

/// Creates (or recreates) each participant's schema and seeds it: [`setup`] without the queues,
/// for a coordinator that carries the commands itself (a workflow engine).
pub async fn setup_schemas(
    url: &str,
    names: &Names,
    seed: &Seed,
) -> Result<(), ServiceError> {
    // One connection, closed when the pool goes at the end of the setup.
    let pool = crate::pool(url, 1)?;
    create_schemas(&pool, names, seed, &PARTICIPANTS).await
}

/// (Re)creates the schemas of `participants` and seeds each with its part of `seed`.
async fn create_schemas(
    pool: &Pool,
    names: &Names,
    seed: &Seed,
    participants: &[Service],
) -> Result<(), ServiceError> {
    let mut client = pool.get().await?;
    for participant in participants {
        let s = names.schema(*participant);
        client
            .batch_execute(&format!(
                "SET client_min_messages TO warning;
                 DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};
                 CREATE TABLE {s}.records (key text PRIMARY KEY, value text NOT NULL);
                 CREATE TABLE {s}.inbox (command_id text PRIMARY KEY,
                     reply text, applied_at timestamptz);"
            ))
            .await?;
    }
    let tx = client.transaction().await?;
    for participant in participants {
        let schema = names.schema(*participant);
        match participant {
            Service::Inventory => {
                for (sku, count) in &seed.stock {
                    put(&tx, &schema, &format!("stock:{sku}"), count).await?;
                }
            }
            Service::Payments => {
                for (customer, cents) in &seed.balances {
                    put(&tx, &schema, &format!("balance:{customer}"), cents).await?;
                }
            }
            Service::Shipping => {
                put(&tx, &schema, "destinations", &seed.destinations).await?
            }
            Service::Orders => {}
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Creates what a shop deployed for good needs and does not have yet, and keeps what it has: a
/// participant's tables that exist are left as they are, data included; a seeded record already
/// there is not reset; the queues are declared (which creates only missing ones). What a
/// deployment runs before its services (the `shop setup` command), where [`setup`] would wipe
/// the data. Each participant's schema, tables and seed commit together, so a setup killed
/// halfway leaves either nothing of a participant or all of it, and a second run completes it;
/// two setups at once take turns on an advisory lock.
pub async fn ensure(
    url: &str,
    amqp: &str,
    names: &Names,
    seed: &Seed,
) -> Result<(), ServiceError> {
    let pool = crate::pool(url, 1)?;
    let mut client = pool.get().await?;
    for participant in PARTICIPANTS {
        let s = names.schema(participant);
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL client_min_messages TO warning;
             SELECT pg_advisory_xact_lock(hashtextextended('orchestration.ensure', 0));
             CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.records (key text PRIMARY KEY, value text NOT NULL);
             CREATE TABLE IF NOT EXISTS {s}.inbox (command_id text PRIMARY KEY,
                 reply text, applied_at timestamptz);"
        ))
        .await?;
        for (key, value) in seed_records(participant, seed)? {
            let sql = format!(
                "INSERT INTO {s}.records (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING"
            );
            tx.execute(&sql, &[&key, &value]).await?;
        }
        tx.commit().await?;
    }
    drop(client);
    queues(amqp, names).await
}

/// The records `participant` starts with, as (key, JSON value).
fn seed_records(
    participant: Service,
    seed: &Seed,
) -> Result<Vec<(String, String)>, ServiceError> {
    match participant {
        Service::Inventory => seed
            .stock
            .iter()
            .map(|(sku, count)| seed_record(format!("stock:{sku}"), count))
            .collect(),
        Service::Payments => seed
            .balances
            .iter()
            .map(|(customer, cents)| {
                seed_record(format!("balance:{customer}"), cents)
            })
            .collect(),
        Service::Shipping => {
            Ok(vec![seed_record("destinations".to_owned(), &seed.destinations)?])
        }
        Service::Orders => Ok(vec![]),
    }
}

/// A record's key and its value as the records table keeps it (JSON text).
fn seed_record<T: serde::Serialize>(
    key: String,
    value: &T,
) -> Result<(String, String), ServiceError> {
    let text = serde_json::to_string(value)
        .map_err(|e| ServiceError::Encode(key.clone(), e))?;
    Ok((key, text))
}

/// Creates (or recreates) each participant's schema and the dead-letter queue, and seeds them.
pub async fn setup(
    url: &str,
    amqp: &str,
    names: &Names,
    seed: &Seed,
) -> Result<(), ServiceError> {
    setup_schemas(url, names, seed).await?;
    queues(amqp, names).await
}

/// Declares the dead-letter queue and each participant's work queue (a declare creates only
/// what is missing).
async fn queues(amqp: &str, names: &Names) -> Result<(), ServiceError> {
    let connection =
        Connection::connect(amqp, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    dead_letters(&channel, &names.dead_letter_exchange(), &names.dead_letters())
        .await?;
    for participant in PARTICIPANTS {
        work_queue(
            &channel,
            &names.queue(participant),
            &names.dead_letter_exchange(),
        )
        .await?;
    }
    connection.close(200, "set up".into()).await?;
    Ok(())
}

/// Removes the participants' schemas: [`teardown`] without the log and the queues.
pub async fn teardown_schemas(url: &str, names: &Names) -> Result<(), ServiceError> {
    drop_schemas(url, PARTICIPANTS.map(|p| names.schema(p))).await
}

async fn drop_schemas(
    url: &str,
    schemas: impl IntoIterator<Item = String>,
) -> Result<(), ServiceError> {
    let pool = crate::pool(url, 1)?;
    let db = pool.get().await?;
    for s in schemas {
        let sql = format!(
            "SET client_min_messages TO warning; DROP SCHEMA IF EXISTS {s} CASCADE"
        );
        db.batch_execute(&sql).await?;
    }
    Ok(())
}

/// Removes what [`setup`] and the orchestrators named in `orchestrators` created:
/// the schemas (the log's included) and the queues. It stops at the first
/// failure and returns it: a leftover is harmless, but the caller says so.
pub async fn teardown(
    url: &str,
    amqp: &str,
    names: &Names,
    orchestrators: &[&str],
) -> Result<(), ServiceError> {
    let schemas = PARTICIPANTS.map(|p| names.schema(p));
    drop_schemas(url, schemas.into_iter().chain([names.log_schema()])).await?;
    let connection =
        Connection::connect(amqp, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let mut queues: Vec<String> =
        PARTICIPANTS.iter().map(|p| names.queue(p)).collect();
    queues.extend(orchestrators.iter().map(|o| names.replies(o)));
    queues.push(names.dead_letters());
    for queue in queues {
        let options = lapin::options::QueueDeleteOptions::default();
        channel.queue_delete(queue.as_str().into(), options).await?;
    }
    let exchange = names.dead_letter_exchange();
    let options = lapin::options::ExchangeDeleteOptions::default();
    channel.exchange_delete(exchange.as_str().into(), options).await?;
    connection.close(200, "torn down".into()).await?;
    Ok(())
}

/// How a participant misbehaves, on purpose.
#[derive(Clone, Debug, Default)]
pub struct Quirks {
    /// Holds back the reply to the first command it applies for this long
    /// (the effect is already committed): a timeout whose step succeeded.
    pub slow_first_reply: Option<Duration>,
}

/// Makes the span one command is handled in, from its delivery's properties: a seam for tracing
/// across processes, which this crate need not know how to do (the shop continues the saga's
/// trace from the `traceparent` header the orchestrator sent). Without it, a command is handled
/// in the participant's own span.
pub type CommandSpan = Arc<dyn Fn(&BasicProperties) -> tracing::Span + Send + Sync>;

/// A running participant.
pub struct Participant {
    /// The consume loop: ends with an error, or with `Ok` after a stop.
    pub task: JoinHandle<Result<(), ServiceError>>,
    /// What this loop did with the commands it received, counted as it goes.
    pub deliveries: Arc<Deliveries>,
    stop: Arc<Notify>,
}

/// What a participant's loop did with the commands RabbitMQ delivered.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Commands delivered.
    pub received: AtomicU64,
    /// Of those, deliveries RabbitMQ marked as redelivered: sent before to a consumer that did
    /// not acknowledge them (it crashed, lost its connection, or gave them back).
    pub redelivered: AtomicU64,
    /// Commands applied for the first time.
    pub applied: AtomicU64,
    /// Commands the inbox had seen: answered with the stored reply, no effect.
    pub duplicates: AtomicU64,
    /// Commands that could not be read, rejected to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Commands given back to the queue because they could not be applied now.
    pub requeued: AtomicU64,
    /// Replies the broker confirmed (publisher confirms): it took responsibility for them.
    pub replies_confirmed: AtomicU64,
    /// Replies it did not confirm (refused, returned, or the connection went before the
    /// confirm came): the command stays unacknowledged, the loop ends, and the command is
    /// delivered again.
    pub replies_unconfirmed: AtomicU64,
}

impl Participant {
    /// Stops taking commands (after the one in hand) and closes the connection.
    /// A task that panicked is an error, not a stop.
    pub async fn stop(self) -> Result<(), ServiceError> {
        self.stop.notify_one();
        self.task.await?
    }
}

/// Runs `participant` until its connection to RabbitMQ fails, its database
/// cannot be reached, or it is stopped. Its PostgreSQL connection comes from a
/// pool of one that the loop owns: a connection the server closed is replaced
/// when the next command takes one; when no connection can be had, or one
/// breaks mid-command, the command goes back on the queue and the loop ends
/// with that error ([`ServiceError::is_unreachable`]). When the loop ends, for
/// whatever reason, the pool goes with it and closes the connection.
pub fn serve(
    participant: Service,
    url: String,
    amqp: String,
    names: Names,
    quirks: Quirks,
) -> Participant {
    serve_with(participant, url, amqp, names, quirks, None)
}

/// [`serve`], each command handled in the span `command_span` makes for it.
pub fn serve_with(
    participant: Service,
    url: String,
    amqp: String,
    names: Names,
    quirks: Quirks,
    command_span: Option<CommandSpan>,
) -> Participant {
    let span = info_span!("participant", service = participant.name());
    let stop = Arc::new(Notify::new());
    let stopped = Arc::clone(&stop);
    let deliveries = Arc::new(Deliveries::default());
    let counted = Arc::clone(&deliveries);
    let task = tokio::spawn(
        async move {
            let pool = crate::pool(&url, 1)?;
            let amqp = Connection::connect(&amqp, ConnectionProperties::default()).await?;
            let channel = amqp.create_channel().await?;
            enable_confirms(&channel).await?;
            channel.basic_qos(1, BasicQosOptions::default()).await?;
            let (queue, schema) = (names.queue(participant), names.schema(participant));
            let mut commands = channel
                .basic_consume(
                    queue.as_str().into(),
                    participant.name().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let mut slow = quirks.slow_first_reply;
            loop {
                let delivery = tokio::select! {
                    delivery = commands.next() => match delivery {
                        Some(delivery) => delivery?,
                        None => break,
                    },
                    _ = stopped.notified() => break,
                };
                counted.received.fetch_add(1, Relaxed);
                if delivery.redelivered {
                    counted.redelivered.fetch_add(1, Relaxed);
                }
                let command = match serde_json::from_slice::<Command>(&delivery.data) {
                    Ok(command) => command,
                    Err(error) => {
                        counted.dead_lettered.fetch_add(1, Relaxed);
                        warn!(%error, "unreadable command: dead-lettered");
                        delivery.reject(BasicRejectOptions { requeue: false }).await?;
                        continue;
                    }
                };
                let span = match &command_span {
                    Some(make) => make(&delivery.properties),
                    None => tracing::Span::current(),
                };
                let applying = apply(&pool, &schema, participant, &command);
                let (reply, applied) =
                    match applying.instrument(span.clone()).await {
                        Ok(answer) => answer,
                        Err(error) => {
                            // No reply: the orchestrator's timeout decides.
                            counted.requeued.fetch_add(1, Relaxed);
                            warn!(parent: &span, %error, "could not apply {}", command.command_id);
                            let requeue = BasicNackOptions { requeue: true, ..Default::default() };
                            delivery.nack(requeue).await?;
                            if error.is_unreachable() {
                                // Taking the next command would fail the same way,
                                // at once: stop, and let the caller decide when to
                                // try again.
                                return Err(error);
                            }
                            continue;
                        }
                    };
                if applied {
                    counted.applied.fetch_add(1, Relaxed);
                    info!(parent: &span, command = %command.command_id, ?reply, "applied");
                } else {
                    counted.duplicates.fetch_add(1, Relaxed);
                    info!(
                        parent: &span,
                        command = %command.command_id,
                        "seen before: stored reply, no effect"
                    );
                }
                if let (true, Some(delay)) = (applied, slow.take()) {
                    warn!(parent: &span, "slow: the reply leaves in {} ms", delay.as_millis());
                    tokio::time::sleep(delay).await;
                }
                if let Some(reply_to) = delivery.properties.reply_to().clone() {
                    let body = serde_json::to_vec(&reply)
                        .map_err(|e| ServiceError::Encode(command.command_id.clone(), e))?;
                    let properties = persistent()
                        .with_correlation_id(command.command_id.as_str().into());
                    let published =
                        publish_confirmed(&channel, "", reply_to.as_str(), &body, properties)
                            .instrument(span.clone())
                            .await;
                    match published {
                        Ok(()) => counted.replies_confirmed.fetch_add(1, Relaxed),
                        Err(error) => {
                            counted.replies_unconfirmed.fetch_add(1, Relaxed);
                            return Err(error.into());
                        }
                    };
                }
                delivery.ack(BasicAckOptions::default()).await?;
            }
            amqp.close(200, "participant stopped".into()).await?;
            Ok(())
        }
        .instrument(span),
    );
    Participant { task, deliveries, stop }
}

/// Applies `command` on a connection from `pool`.
async fn apply(
    pool: &Pool,
    schema: &str,
    participant: Service,
    command: &Command,
) -> Result<(Reply, bool), ServiceError> {
    let mut db = pool.get().await?;
    Ok(apply_once(&mut db, schema, participant, command).await?)
}

/// Reads one record of a participant's schema (for tests and the example's
/// checks): `None` only when there is no such record. A database error or an
/// unreadable record is an error.
pub async fn record<T: for<'de> serde::Deserialize<'de>>(
    client: &tokio_postgres::Client,
    names: &Names,
    participant: Service,
    key: &str,
) -> Result<Option<T>, ServiceError> {
    let sql = format!(
        "SELECT value FROM {}.records WHERE key = $1",
        names.schema(participant)
    );
    let Some(row) = client.query_opt(&sql, &[&key]).await? else { return Ok(None) };
    serde_json::from_str(row.get(0))
        .map(Some)
        .map_err(|e| ServiceError::Corrupt(key.to_owned(), e))
}

/// Every command id a participant applied, in the order it applied them.
pub async fn applied(
    client: &tokio_postgres::Client,
    names: &Names,
    participant: Service,
) -> Result<Vec<(String, std::time::SystemTime)>, ServiceError> {
    let sql = format!(
        "SELECT command_id, applied_at FROM {}.inbox ORDER BY applied_at",
        names.schema(participant)
    );
    let rows = client.query(&sql, &[]).await?;
    let row = |r: &tokio_postgres::Row| Ok((r.try_get(0)?, r.try_get(1)?));
    rows.iter().map(row).collect()
}

/// The id of a reply property as a `BasicProperties`, for the orchestrator.
pub(crate) fn command_properties(
    command_id: &str,
    reply_to: &str,
) -> BasicProperties {
    persistent()
        .with_correlation_id(command_id.into())
        .with_reply_to(reply_to.into())
}
