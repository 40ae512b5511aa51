//! The notifications service: it tells each customer once how their checkout ended, and pushes
//! what it knows of every order to a live page over a WebSocket (the real-time chapter's hub and
//! channel, over the shop's own order ids and statuses in words).
//!
//! What it knows depends on the style. In the choreographed shop every step is an event on Kafka,
//! and it reads them all: the page shows each order's progress. In the orchestrated shop the steps
//! are commands only the saga and each participant see; the saga announces each checkout's end on
//! a durable RabbitMQ queue ([`crate::roles::endings`]), and the page shows the ends. There a
//! delivery is acknowledged after the customer's notice is in the table, so a crash before that
//! gets the ending delivered again, and the page of a new life starts from the table.
//!
//! In the choreographed shop, two things it does not do, on purpose:
//!
//! - **It joins no consumer group.** A group shares a topic's partitions out among its members
//!   so that each event is handled by one of them; this service wants every event in the one
//!   process that serves the page, so it assigns itself every partition of the four services'
//!   topics, and a restart needs no rebalance to wait for.
//! - **It keeps no offsets.** Each life of its consumer reads the topics from their start, so the
//!   page it serves after a crash is rebuilt from the events, which are the record. What must not
//!   happen twice, telling a customer, is guarded by its own table: a customer is told only by
//!   the call that inserts the order's row (`ON CONFLICT DO NOTHING` makes every later one a
//!   no-op). A real mail would be sent after that insert, from a row marked pending and then
//!   sent: the outbox chapter's relay again.
//!
//! The four topics are read side by side, so an order's events arrive in no single order: its
//! `paid` may be read before its `stock reserved`, the stock released after a cancellation before
//! or after the cancellation itself. An order's status on the page therefore only moves forward
//! through the checkout's stages ([`stage`]): an event of an earlier stage than the one shown is
//! read and not shown, and nothing follows the order's end (confirmed, or cancelled with the
//! reason), which is what its customer is told.
//!
//! What it keeps grows with the shop: the ids of the events read and each order's stage (for the
//! replay's sake), and the hub's current status of every order, which every new page receives as
//! its snapshot. Fine for a shop the size of this one; a large one would keep a window (orders of
//! the last day) and a snapshot of the view.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use choreography::wire::{self, Topics};
use deadpool_postgres::Pool;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use realtime::{Channel, ChannelConfig, Closer, Hub, HubConfig};
use shop_domain::{Event, Service};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{Env, Role, Style};
use crate::metrics::{Exporter, OutcomeLabels, Refresh, catch_up};
use crate::probe::{self, Check};
use crate::roles::endings::{self, Ended};
use crate::telemetry;

/// The hub of this service: order ids to statuses in words.
pub type StatusHub = Hub<String, String>;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the broker may take to say which partitions the topics have.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the live pages get to hear "going away" when the service stops: within the
/// supervisor's and the manifests' grace period, with the consumer's stop after it.
const DRAIN: Duration = Duration::from_secs(3);

/// The schema of this service's own table, `<prefix>_notifications`.
pub fn schema(env: &Env) -> String {
    format!("{}_notifications", env.names.prefix)
}

/// What the consumer has done since the process started, for readiness and metrics.
#[derive(Default)]
struct Progress {
    /// The current life of the consumer holds every partition (choreography) or consumes the
    /// endings queue (orchestration).
    consuming: AtomicBool,
    /// Events put on the page.
    shown: AtomicU64,
    /// Events read after a later stage of their order was shown: not shown.
    behind: AtomicU64,
    /// Messages that did not decode: left out, with a warning (their consumers dead-letter them).
    unreadable: AtomicU64,
    /// Customers told how their checkout ended.
    told: AtomicU64,
    /// Endings read again (a replay after a restart) whose customer had been told already.
    already_told: AtomicU64,
    /// Lives of the consumer that ended in an error.
    restarts: AtomicU64,
}

/// Runs the notifications service until SIGTERM.
pub async fn run(env: Env) -> anyhow::Result<()> {
    let listener = probe::listen(env.listen_addr(Role::Notifications)?).await?;
    let starting = probe::Starting::serve(listener, "waiting for PostgreSQL")?;
    let pool = orchestration::pool(&env.database_url, 2)?;
    let schema = schema(&env);
    let created = probe::until_connected("PostgreSQL for the notices table", || {
        migrate(&pool, &schema)
    });
    if created.await.is_none() {
        info!("notifications stopped before its table could be created");
        return Ok(());
    }
    let listener = starting.done().await?;
    // Numbered from the clock, in thousandths of a millisecond: a page that comes back after a
    // restart with a number of the last life is behind this one's history, and gets a resync
    // rather than other events, as long as the clock did not step back and the last life
    // published fewer events than microseconds went by. (Still exact in the page's JavaScript
    // numbers, under 2^53.)
    let first = match std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
    {
        Ok(since) => u64::try_from(since.as_micros()).unwrap_or(u64::MAX / 2),
        Err(error) => {
            warn!(%error, "the clock is before 1970: numbering from 1, so a page of the last life may resume wrongly");
            1
        }
    };
    let hub =
        StatusHub::starting_at(HubConfig { history: 4096, buffer: 256 }, first);
    let channel = Channel::new(hub.clone(), ChannelConfig::default());
    let progress = Arc::new(Progress::default());
    let (stop, stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    let consuming = tokio::spawn(consume(
        env.clone(),
        pool.clone(),
        schema,
        hub.clone(),
        Arc::clone(&progress),
        stopped,
    ));
    let watched = Arc::clone(&progress);
    let probe_pool = orchestration::pool(&env.database_url, 1)?;
    let ready: Check = Arc::new(move || {
        let (pool, progress) = (probe_pool.clone(), Arc::clone(&watched));
        Box::pin(async move {
            probe::pg_answers(&pool).await?;
            match progress.consuming.load(Relaxed) {
                true => Ok(()),
                false => Err("the consumer is not reading yet".to_owned()),
            }
        })
    });
    let page = realtime::page(false);
    let app = probe::routes(ready)
        .route("/", get(move || async move { Html(page) }))
        .merge(channel.clone().routes());
    let exporter =
        Exporter::new(|registry| Some(exported(registry, &channel, progress)));
    let app = telemetry::traced(exporter.measured(app), "notifications");
    let addr = listener.local_addr()?;
    let style = env.style.name();
    info!("notifications ({style}): the live page on http://{addr}/");
    // On SIGTERM the hub lets its subscribers go: each connection then says goodbye ("going
    // away"). The HTTP server's graceful stop does not wait for WebSocket connections (axum
    // serves each in a task of its own), so the channel is drained below, before the exit.
    let stop_consuming = Arc::clone(&stop);
    let pages = channel.clone();
    let stopping = async move {
        probe::terminated().await;
        hub.close();
        stop_consuming.send_replace(true);
    };
    let served = probe::serve(listener, app, stopping).await;
    // Also when the server failed: the pages are let go (again, if the stop did already) and
    // the consumer must stop for the process to end.
    pages.hub().close();
    stop.send_replace(true);
    if !pages.drained(DRAIN).await {
        warn!(
            "live pages still connected after {DRAIN:?}: they are dropped without a goodbye"
        );
    }
    match consuming.await {
        Ok(()) => {}
        Err(error) => warn!(%error, "the consumer task ended abnormally"),
    }
    served?;
    info!("notifications stopped");
    Ok(())
}

/// Creates the table of customers told, if it is not there.
async fn migrate(pool: &Pool, schema: &str) -> anyhow::Result<()> {
    let sql = format!(
        "SET client_min_messages TO warning;
         CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.notices (
             order_id text PRIMARY KEY,
             outcome text NOT NULL,
             reason text,
             told_at timestamptz NOT NULL DEFAULT now()
         )"
    );
    pool.get().await?.batch_execute(&sql).await?;
    Ok(())
}

/// Lives of the consumer, one after another, until the stop: a life that fails (the broker went
/// away, the database did not answer) is followed, after a pause, by one that reads from the
/// start again (choreography) or from what the broker still holds (orchestration).
async fn consume(
    env: Env,
    pool: Pool,
    schema: String,
    hub: StatusHub,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) {
    // Events already read, so that a later life's replay does not show them twice, and the
    // orders that have ended.
    let mut seen = Seen::default();
    let mut backoff = FIRST_BACKOFF;
    let again = match env.style {
        Style::Choreography => "reading the topics from their start",
        Style::Orchestration => "taking what the endings queue holds",
    };
    loop {
        let life = Life {
            env: &env,
            pool: &pool,
            schema: &schema,
            hub: &hub,
            progress: &progress,
        };
        // The life stops where it is when told to: a query to a database that hangs, or a
        // metadata request to a broker that does not answer, must not hold the process's stop.
        let lived = tokio::select! {
            lived = life.run(&mut seen) => lived,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match lived {
            Ok(()) => return,
            Err(error) => {
                progress.consuming.store(false, Relaxed);
                progress.restarts.fetch_add(1, Relaxed);
                warn!("the consumer stopped ({error:#}); {again} in {backoff:?}");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What earlier lives of the consumer in this process have read.
#[derive(Default)]
struct Seen {
    /// Events already read, by id.
    events: HashSet<uuid::Uuid>,
    /// The stage each order's shown status is at.
    stages: HashMap<String, u8>,
    /// The endings in the notices table are on the page (orchestration).
    told_shown: bool,
}

struct Life<'a> {
    env: &'a Env,
    pool: &'a Pool,
    schema: &'a str,
    hub: &'a StatusHub,
    progress: &'a Progress,
}

impl Life<'_> {
    /// One life of the consumer of this shop's style, until an error: the caller stops it by
    /// dropping it.
    async fn run(&self, seen: &mut Seen) -> anyhow::Result<()> {
        match self.env.style {
            Style::Choreography => self.read_topics(seen).await,
            Style::Orchestration => self.read_endings(seen).await,
        }
    }

    /// The saga's announcements, from the durable queue: each is acknowledged once its customer
    /// is told and the page shows it.
    async fn read_endings(&self, seen: &mut Seen) -> anyhow::Result<()> {
        // The page starts from the endings told in earlier lives of the service: the broker
        // forgot the ones it delivered. A table that cannot be read ends this life, like a
        // broker that cannot be reached, so the page is never ready without them.
        if !seen.told_shown {
            let shown = show_told(self.pool, self.schema, self.hub, seen).await?;
            seen.told_shown = true;
            if shown > 0 {
                info!("the page starts with the {shown} endings told before");
            }
        }
        let names = &self.env.names;
        let connection =
            Connection::connect(&self.env.amqp, ConnectionProperties::default())
                .await?;
        let channel = connection.create_channel().await?;
        channel.basic_qos(64, BasicQosOptions::default()).await?;
        endings::declare(&channel, names).await?;
        let queue = endings::queue(names);
        let mut deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                "notifications".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.progress.consuming.store(true, Relaxed);
        info!("reading checkout endings from {queue}");
        while let Some(delivery) = deliveries.next().await {
            let delivery = delivery?;
            let ended = match serde_json::from_slice::<Ended>(&delivery.data) {
                Ok(ended)
                    if ended.outcome == "confirmed" && ended.reason.is_none() =>
                {
                    ended
                }
                Ok(ended)
                    if ended.outcome == "cancelled" && ended.reason.is_some() =>
                {
                    ended
                }
                Ok(ended) => {
                    self.unreadable(&delivery, format!("no such ending: {ended:?}"))
                        .await?;
                    continue;
                }
                Err(error) => {
                    self.unreadable(&delivery, error.to_string()).await?;
                    continue;
                }
            };
            let order = &ended.order_id;
            self.tell(order, &ended.outcome, ended.reason.as_deref()).await?;
            if seen.stages.insert(order.clone(), ENDED) != Some(ENDED) {
                let words = ended_words(&ended.outcome, ended.reason.as_deref());
                self.hub.publish(order.clone(), words);
                self.progress.shown.fetch_add(1, Relaxed);
            }
            delivery.ack(BasicAckOptions::default()).await?;
        }
        anyhow::bail!("the broker ended the consumer of {queue}")
    }

    /// Sends a message that is no ending to the dead letters, where a person reads why.
    async fn unreadable(
        &self,
        delivery: &Delivery,
        why: String,
    ) -> anyhow::Result<()> {
        self.progress.unreadable.fetch_add(1, Relaxed);
        warn!(why, "a message on the endings queue is no ending: dead-lettered");
        delivery.reject(BasicRejectOptions { requeue: false }).await?;
        Ok(())
    }

    /// One consumer, from the start of every partition.
    async fn read_topics(&self, seen: &mut Seen) -> anyhow::Result<()> {
        let topics = Topics::new(&self.env.names.prefix.replace('_', "-"));
        let names: Vec<String> =
            Service::ALL.into_iter().map(|s| topics.of(s)).collect();
        // The group id is never used to join or commit: nothing subscribes, no offset is stored.
        let group =
            format!("{}-notifications", self.env.names.prefix.replace('_', "-"));
        let consumer = kafka_events::client::consumer(&self.env.kafka, &group)?;
        let (consumer, partitions) = every_partition(consumer, names).await?;
        consumer.assign(&partitions)?;
        self.progress.consuming.store(true, Relaxed);
        info!("reading {} partitions from their start", partitions.count());
        loop {
            let message = consumer.recv().await?;
            let incoming = match wire::decode(&message) {
                Ok(incoming) => incoming,
                Err(error) => {
                    self.progress.unreadable.fetch_add(1, Relaxed);
                    warn!(
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        %error,
                        "an event that does not decode: not shown (its consumers dead-letter it)"
                    );
                    continue;
                }
            };
            let (event, order) = (&incoming.event, incoming.event.order_id());
            let end = ending(event);
            // Told before shown: a life that ends between the two tells again (a no-op) in the
            // next, and shows it then.
            if let Some((outcome, reason)) = end {
                self.tell(order, outcome, reason).await?;
            }
            if !seen.events.insert(incoming.event_id) {
                continue;
            }
            let shown = seen.stages.get(order).copied();
            if shown.is_some_and(|shown| shown == ENDED || stage(event) < shown) {
                self.progress.behind.fetch_add(1, Relaxed);
                continue;
            }
            seen.stages.insert(order.to_owned(), stage(event));
            self.hub.publish(order.to_owned(), status(event));
            self.progress.shown.fetch_add(1, Relaxed);
        }
    }

    /// Tells the customer of `order_id` how the checkout ended, unless someone did already.
    async fn tell(
        &self,
        order_id: &str,
        outcome: &str,
        reason: Option<&str>,
    ) -> anyhow::Result<()> {
        let sql = format!(
            "INSERT INTO {}.notices (order_id, outcome, reason) VALUES ($1, $2, $3)
             ON CONFLICT (order_id) DO NOTHING",
            self.schema
        );
        let inserted = self
            .pool
            .get()
            .await?
            .execute(&sql, &[&order_id, &outcome, &reason])
            .await?;
        match inserted {
            0 => {
                self.progress.already_told.fetch_add(1, Relaxed);
            }
            _ => {
                self.progress.told.fetch_add(1, Relaxed);
                let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
                info!(order = %order_id, "told the customer: {outcome}{why}");
            }
        }
        Ok(())
    }
}

/// Puts every ending in the notices table on the page, oldest first, and marks its order ended;
/// returns how many.
async fn show_told(
    pool: &Pool,
    schema: &str,
    hub: &StatusHub,
    seen: &mut Seen,
) -> anyhow::Result<usize> {
    let sql = format!(
        "SELECT order_id, outcome, reason FROM {schema}.notices ORDER BY told_at"
    );
    let rows = pool.get().await?.query(&sql, &[]).await?;
    for row in &rows {
        let (order, outcome): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        let reason: Option<String> = row.try_get(2)?;
        let words = ended_words(&outcome, reason.as_deref());
        seen.stages.insert(order.clone(), ENDED);
        hub.publish(order, words);
    }
    Ok(rows.len())
}

/// Every partition of `topics`, each from its start; fails when a topic is missing.
async fn every_partition(
    consumer: StreamConsumer,
    topics: Vec<String>,
) -> anyhow::Result<(StreamConsumer, TopicPartitionList)> {
    // librdkafka's metadata call blocks its thread until the answer: one call, for every topic,
    // so a broker that does not answer costs one timeout.
    let asked = tokio::task::spawn_blocking(move || {
        let mut list = TopicPartitionList::new();
        let metadata = consumer.fetch_metadata(None, METADATA_TIMEOUT)?;
        for topic in &topics {
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                anyhow::bail!("the topic {topic} does not exist yet");
            }
            for partition in partitions {
                list.add_partition_offset(topic, partition, Offset::Beginning)?;
            }
        }
        Ok((consumer, list))
    });
    asked.await?
}

/// The stage of an order's end: nothing is shown after it.
const ENDED: u8 = 5;

/// How far through the checkout `event` is: the stock decided (1), the payment (2), the
/// shipment (3), an undoing after a failure (4), the order's end ([`ENDED`]). Each stage happens
/// after the one before (payments waits for the stock, shipping for the payment), so the page
/// never shows an event of an earlier stage than the one it shows.
pub fn stage(event: &Event) -> u8 {
    match event {
        Event::OrderPlaced(_) => 0,
        Event::StockReserved { .. } | Event::StockRejected { .. } => 1,
        Event::PaymentAuthorized { .. } | Event::PaymentDeclined { .. } => 2,
        Event::ShipmentScheduled { .. } | Event::ShipmentFailed { .. } => 3,
        Event::StockReleased { .. }
        | Event::PaymentRefunded { .. }
        | Event::ShipmentCancelled { .. } => 4,
        Event::OrderConfirmed { .. } | Event::OrderCancelled { .. } => ENDED,
    }
}

/// How the customer's checkout ended, when `event` is its end: the outcome and the reason.
fn ending(event: &Event) -> Option<(&'static str, Option<&str>)> {
    match event {
        Event::OrderConfirmed { .. } => Some(("confirmed", None)),
        Event::OrderCancelled { reason, .. } => Some(("cancelled", Some(reason))),
        _ => None,
    }
}

/// An order's end in the words the page shows: the outcome, then the reason if there is one.
fn ended_words(outcome: &str, reason: Option<&str>) -> String {
    match reason {
        Some(reason) => format!("{outcome}: {reason}"),
        None => outcome.to_owned(),
    }
}

/// The order's status after `event`, in the words the page shows.
pub fn status(event: &Event) -> String {
    match event {
        Event::OrderPlaced(_) => "placed".to_owned(),
        Event::StockReserved { .. } => "stock reserved".to_owned(),
        Event::StockRejected { .. } => "out of stock".to_owned(),
        Event::StockReleased { .. } => "stock released".to_owned(),
        Event::PaymentAuthorized { .. } => "paid".to_owned(),
        Event::PaymentDeclined { .. } => "payment declined".to_owned(),
        Event::PaymentRefunded { .. } => "refunded".to_owned(),
        Event::ShipmentScheduled { .. } => "shipment scheduled".to_owned(),
        Event::ShipmentFailed { .. } => "shipment failed".to_owned(),
        Event::ShipmentCancelled { .. } => "shipment cancelled".to_owned(),
        Event::OrderConfirmed { .. } => "confirmed".to_owned(),
        Event::OrderCancelled { reason, .. } => {
            ended_words("cancelled", Some(reason))
        }
    }
}

/// The labels of a count of WebSocket closes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    by: &'static str,
    code: String,
}

/// A close code as a label. A client may close with any code from 3000 to 4999; so that no
/// client can mint series at will, a client's code other than 1000 (normal), 1001 (going away),
/// 1005 (none given) and 1006 (no close frame) is `other`. The server's codes are its own few.
fn close_label(by: Closer, code: u16) -> String {
    match (by, code) {
        (Closer::Client, 1000 | 1001 | 1005 | 1006) | (Closer::Server, _) => {
            code.to_string()
        }
        (Closer::Client, _) => "other".to_owned(),
    }
}

/// The live page's clients and closes, and what the consumer did.
fn exported(
    registry: &mut Registry,
    channel: &Channel<String, String>,
    progress: Arc<Progress>,
) -> Refresh {
    let clients = Gauge::<i64>::default();
    registry.register(
        "shop_ws_clients",
        "WebSocket clients of the live page connected now",
        clients.clone(),
    );
    let closes = Family::<CloseLabels, Counter>::default();
    registry.register(
        "shop_ws_closes",
        "WebSocket connections of the live page ended, by who ended them (server, client) and the \
         code (the client's 1005: a close frame without a code; 1006: no close frame)",
        closes.clone(),
    );
    let events = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "shop_notification_events",
        "Events read, by outcome: shown on the page, behind (read after a later stage of their \
         order was shown: not shown), unreadable (left out)",
        events.clone(),
    );
    let notices = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "shop_notices",
        "Checkout endings read, by outcome: told (the customer was told), already_told (a replay)",
        notices.clone(),
    );
    let restarts = Counter::default();
    registry.register(
        "shop_consumer_restarts",
        "Times the consumer was started again inside this process",
        restarts.clone(),
    );
    let channel = channel.clone();
    // Two scrapes at once must not both add the same increase: one catches up at a time.
    let one_at_a_time = std::sync::Mutex::new(());
    Arc::new(move || {
        let _turn =
            one_at_a_time.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        clients.set(i64::try_from(channel.hub().subscribers()).unwrap_or(i64::MAX));
        for ((by, code), n) in channel.closes() {
            let labels =
                CloseLabels { by: by.as_str(), code: close_label(by, code) };
            catch_up(&closes.get_or_create(&labels), n);
        }
        let p = &progress;
        for (family, outcome, now) in [
            (&events, "shown", &p.shown),
            (&events, "behind", &p.behind),
            (&events, "unreadable", &p.unreadable),
            (&notices, "told", &p.told),
            (&notices, "already_told", &p.already_told),
        ] {
            catch_up(
                &family.get_or_create(&OutcomeLabels { outcome }),
                now.load(Relaxed),
            );
        }
        catch_up(&restarts, p.restarts.load(Relaxed));
        Box::pin(async { Ok(()) })
    })
}

/// Who was told what: order id to outcome and reason, from this service's own table, for the
/// orders in `ids`.
pub async fn told(
    db: &tokio_postgres::Client,
    env: &Env,
    ids: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, (String, Option<String>)>> {
    let sql = format!(
        "SELECT order_id, outcome, reason FROM {}.notices WHERE order_id = ANY($1)",
        schema(env)
    );
    let rows = db.query(&sql, &[&ids]).await?;
    let mut told = std::collections::BTreeMap::new();
    for row in rows {
        told.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
    }
    Ok(told)
}

/// Drops this service's schema: what a run's teardown removes.
pub async fn drop_schema(
    db: &tokio_postgres::Client,
    env: &Env,
) -> anyhow::Result<()> {
    let sql = format!(
        "SET client_min_messages TO warning; DROP SCHEMA IF EXISTS {} CASCADE",
        schema(env)
    );
    db.batch_execute(&sql).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_orders_last_event_is_an_ending_and_each_event_has_its_words() {
        let id = || "o-1".to_owned();
        let cancelled =
            Event::OrderCancelled { order_id: id(), reason: "out of mugs".into() };
        assert_eq!(ending(&cancelled), Some(("cancelled", Some("out of mugs"))));
        assert_eq!(status(&cancelled), "cancelled: out of mugs");
        let confirmed = Event::OrderConfirmed { order_id: id() };
        assert_eq!(ending(&confirmed), Some(("confirmed", None)));
        let paid = Event::PaymentAuthorized { order_id: id(), amount_cents: 100 };
        assert_eq!(ending(&paid), None);
        assert_eq!(status(&paid), "paid");
        // Each stage after the one it waits for; every undoing after every failure; the end
        // after everything.
        let reserved = Event::StockReserved { order_id: id() };
        let released =
            Event::StockReleased { order_id: id(), reason: "declined".into() };
        let failed =
            Event::ShipmentFailed { order_id: id(), reason: "nowhere".into() };
        assert!(stage(&reserved) < stage(&paid));
        assert!(stage(&paid) < stage(&failed));
        assert!(stage(&failed) < stage(&released));
        assert!(stage(&released) < stage(&cancelled));
        assert_eq!(stage(&confirmed), ENDED);
    }
}
