//! How the orchestrated shop's notifications service hears that a checkout ended: the saga
//! announces every ending on a durable RabbitMQ queue, from an outbox over its own log.
//!
//! In the choreographed shop every step is an event anyone may read; in the orchestrated one the
//! steps are commands and replies between the saga and each participant, and only the saga knows
//! how a checkout ended. It must say so without ever losing an ending and without making the
//! checkout wait for the notifications service, so it does not send at the moment the saga ends:
//! the transaction that appends a saga's ending to the log also sets the saga's row's status, and
//! a relay in the saga process sends, for every ended row not marked announced, one message,
//! waits for RabbitMQ's confirms, and then marks the rows ([`PgLog::announced`]). A crash between
//! the confirm and the mark sends the ending again after the restart; the notifications service
//! tells a customer only when it inserts the order's notice, so the second copy changes nothing.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use orchestration::log::{Ending, PgLog};
use orchestration::participant::Names;
use orchestration::saga::Terminal;
use rabbitmq_queues::publish::{enable_confirms, publish_batch};
use rabbitmq_queues::topology::{dead_letters, work_queue};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

/// Endings read from the log and sent in one batch, confirms awaited together.
const BATCH: i64 = 100;
/// How often the relay looks without being woken: for endings of an earlier life of the process.
const POLL: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One checkout's end, as the saga announces it. The JSON body of each message on the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// The order checked out.
    pub order_id: String,
    /// Whose order it is: whom to tell.
    pub customer_id: String,
    /// `confirmed` or `cancelled`, the words of the checkout's view.
    pub outcome: String,
    /// Why it was cancelled; none when confirmed.
    pub reason: Option<String>,
}

impl Ended {
    /// The announcement of `ending`; `None` for a stuck saga, which a person must end first.
    pub fn of(ending: &Ending) -> Option<Ended> {
        let (outcome, reason) = match &ending.terminal {
            Terminal::Completed => ("confirmed", None),
            Terminal::Compensated { reason } => ("cancelled", Some(reason.clone())),
            Terminal::Stuck { .. } => return None,
        };
        Some(Ended {
            order_id: ending.order.order_id.clone(),
            customer_id: ending.order.customer_id.clone(),
            outcome: outcome.to_owned(),
            reason,
        })
    }
}

/// The durable queue the endings go to, under the shop's prefix.
pub fn queue(names: &Names) -> String {
    format!("{}.endings", names.prefix)
}

/// Declares the endings queue, whose rejected messages go to the shop's dead letters: both sides
/// do, so either may start first.
pub async fn declare(channel: &lapin::Channel, names: &Names) -> lapin::Result<()> {
    let exchange = names.dead_letter_exchange();
    dead_letters(channel, &exchange, &names.dead_letters()).await?;
    work_queue(channel, &queue(names), &exchange).await
}

/// Deletes the endings queue, with what it holds: what a run's teardown removes.
pub async fn delete(amqp: &str, names: &Names) -> lapin::Result<()> {
    let connection =
        Connection::connect(amqp, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let options = lapin::options::QueueDeleteOptions::default();
    channel.queue_delete(queue(names).as_str().into(), options).await?;
    connection.close(200, "torn down".into()).await
}

/// What the relay has done, for the saga's metrics.
#[derive(Debug, Default)]
pub struct Announced {
    /// Endings the broker confirmed.
    pub sent: AtomicU64,
    /// Lives of the relay that ended in an error (the broker or the log went away).
    pub restarts: AtomicU64,
}

/// The relay: sends every unannounced ending in the saga log, when woken (the orchestrator
/// finished a saga) or every [`POLL`], until `stop`. A broker or database that goes away ends one
/// life of it; the next starts after a backoff and sends what is still unmarked.
pub async fn relay(
    amqp: String,
    names: Names,
    log: Arc<PgLog>,
    wake: Arc<Notify>,
    counts: Arc<Announced>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let life = announce(&amqp, &names, &log, &wake, &counts, &mut backoff);
        let error = tokio::select! {
            error = life => error,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        counts.restarts.fetch_add(1, Relaxed);
        warn!(
            "the endings relay stopped ({error:#}); starting it again in {backoff:?}"
        );
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One life of the relay, over one connection; returns why it ended.
async fn announce(
    amqp: &str,
    names: &Names,
    log: &PgLog,
    wake: &Notify,
    counts: &Announced,
    backoff: &mut Duration,
) -> anyhow::Error {
    let connected = async {
        let connection =
            Connection::connect(amqp, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        enable_confirms(&channel).await?;
        declare(&channel, names).await?;
        Ok::<_, lapin::Error>((connection, channel))
    };
    let (_connection, channel) = match connected.await {
        Ok(connected) => connected,
        Err(error) => return error.into(),
    };
    let queue = queue(names);
    info!("announcing checkout endings on {queue}");
    loop {
        let endings = match log.unannounced(BATCH).await {
            Ok(endings) => endings,
            Err(error) => return error.into(),
        };
        if endings.is_empty() {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            continue;
        }
        let mut bodies = Vec::with_capacity(endings.len());
        for ended in endings.iter().filter_map(Ended::of) {
            match serde_json::to_vec(&ended) {
                Ok(body) => bodies.push(body),
                Err(error) => return error.into(),
            }
        }
        if let Err(error) = publish_batch(&channel, "", &queue, &bodies).await {
            return error.into();
        }
        let ids: Vec<String> = endings.into_iter().map(|e| e.saga_id).collect();
        if let Err(error) = log.announced(&ids).await {
            return error.into();
        }
        counts.sent.fetch_add(bodies.len() as u64, Relaxed);
        *backoff = FIRST_BACKOFF;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop_domain::OrderPlaced;

    #[test]
    fn a_stuck_saga_is_not_announced_and_the_others_say_what_their_view_says() {
        let order = OrderPlaced {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            lines: vec![],
            total_cents: 500,
            ship_to: "PT".into(),
        };
        let ending = |terminal| Ending {
            saga_id: "checkout-o-1".into(),
            order: order.clone(),
            terminal,
        };
        let cancelled =
            Ended::of(&ending(Terminal::Compensated { reason: "no stock".into() }))
                .expect("announced");
        assert_eq!(cancelled.outcome, "cancelled");
        assert_eq!(cancelled.reason.as_deref(), Some("no stock"));
        assert_eq!(cancelled.customer_id, "c-1");
        let confirmed = Ended::of(&ending(Terminal::Completed)).expect("announced");
        assert_eq!(
            (confirmed.outcome.as_str(), confirmed.reason),
            ("confirmed", None)
        );
        let stuck = Terminal::Stuck { step: 1, reason: "refund refused".into() };
        assert_eq!(Ended::of(&ending(stuck)), None);
    }
}
