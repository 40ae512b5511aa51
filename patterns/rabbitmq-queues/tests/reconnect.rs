//! Reconnection: the broker drops every connection while a publisher publishes and a consumer
//! holds unacknowledged messages. Both recover; the test checks that the connections really were
//! replaced, that the publisher really resent, and that every message arrived exactly as often as
//! the design promises.
//!
//! In a file of its own because `rabbitmqctl close_all_connections` closes *every* connection on
//! the broker: test files run one after another, so no other test is disturbed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::collections::BTreeMap;
use std::future::ready;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Event};
use rabbitmq_queues::admin;
use rabbitmq_queues::publish::persistent;
use rabbitmq_queues::reconnect::{
    Confirmed, connect_recovering, publish_until_confirmed,
};
use rabbitmq_queues::topology;
use support::wait_until;
use tokio::task::spawn_blocking;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(60);
/// Unacknowledged messages the consumer may hold: it holds exactly this many at the drop.
const PREFETCH: u16 = 10;
/// Messages published before the drop, and again after it.
const BEFORE: usize = 50;
const AFTER: usize = 50;

/// Counts the times lapin re-establishes `connection`. lapin reports `Event::Connected` to
/// listeners registered before a (re)connection, so one registered now sees reconnections only.
fn count_reconnections(connection: &Connection) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let mut events = connection.events_listener();
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if matches!(event, Event::Connected) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    count
}

/// The broker's view: the client ports of the connections called `name`.
async fn ports(name: &str) -> Result<Vec<u16>, String> {
    let name = name.to_owned();
    spawn_blocking(move || admin::connection_ports(&name)).await.unwrap()
}

// ANCHOR: reconnect_test
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_recovered_and_every_message_arrives_as_promised() {
    let uri = infra::amqp_addr();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (publisher_name, consumer_name) =
        (format!("publisher-{run}"), format!("consumer-{run}"));
    let (publisher, channel) =
        match timeout(STEP, connect_recovering(&uri, &publisher_name)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return infra::unavailable("RabbitMQ", &uri, e),
            Err(_) => return infra::unavailable("RabbitMQ", &uri, "no answer"),
        };
    let queue = format!("captures.{run}");
    topology::work_queue(&channel, &queue, "unused-dlx").await.unwrap();
    let (consumer, consumer_channel) =
        connect_recovering(&uri, &consumer_name).await.unwrap();
    let reconnected =
        [count_reconnections(&publisher), count_reconnections(&consumer)];
    let ports_before =
        match (ports(&publisher_name).await, ports(&consumer_name).await) {
            (Ok(publisher), Ok(consumer)) => [publisher, consumer],
            (Err(why), _) | (_, Err(why)) => {
                return infra::unavailable("RabbitMQ (rabbitmqctl)", &uri, why);
            }
        };
    assert!(ports_before.iter().all(|p| p.len() == 1), "{ports_before:?}");

    // Before the drop: every publish is confirmed at the first attempt.
    let mut published: Vec<(String, Confirmed)> = Vec::new();
    for i in 0..BEFORE {
        let payload = format!("capture-{i:05}");
        let confirmed = publish(&channel, &queue, &payload).await;
        assert_eq!(confirmed, Confirmed { attempts: 1, unconfirmed: 0 });
        published.push((payload, confirmed));
    }

    // The consumer holds PREFETCH messages unacknowledged when the drop comes.
    let consumed = consume(consumer_channel, &queue).await;
    wait_until(STEP, "the consumer to hold PREFETCH messages", || {
        ready(consumed.held.lock().unwrap().len() == usize::from(PREFETCH))
    })
    .await;
    let held: Vec<String> =
        consumed.held.lock().unwrap().iter().map(payload_of).collect();
    // The prefetch is full, so nothing more is delivered until the drop.
    consumed.hold.store(false, Ordering::SeqCst);

    // The drop, while the publisher keeps publishing: some publish is hit by it.
    let dropping = spawn_blocking(|| {
        admin::close_all_connections("test: the broker drops every connection")
    });
    let limit = tokio::time::Instant::now() + STEP;
    loop {
        assert!(tokio::time::Instant::now() < limit, "no publish met the drop");
        let payload = format!("capture-{:05}", published.len());
        let confirmed = publish(&channel, &queue, &payload).await;
        published.push((payload, confirmed));
        if confirmed.attempts > 1 {
            break;
        }
    }
    let hit = published.len() - 1;
    dropping.await.unwrap().expect("rabbitmqctl closes the connections");
    // After recovery: first-attempt confirms again.
    for _ in 0..AFTER {
        let payload = format!("capture-{:05}", published.len());
        let confirmed = publish(&channel, &queue, &payload).await;
        assert_eq!(confirmed, Confirmed { attempts: 1, unconfirmed: 0 });
        published.push((payload, confirmed));
    }

    // The connections were really dropped and replaced: lapin reconnected each once,
    // and the broker sees each name on a new TCP connection (a new client port).
    for (count, who) in reconnected.iter().zip(["publisher", "consumer"]) {
        assert_eq!(count.load(Ordering::SeqCst), 1, "{who} reconnected once");
    }
    let ports_after = [
        ports(&publisher_name).await.unwrap(),
        ports(&consumer_name).await.unwrap(),
    ];
    for (before, after) in ports_before.iter().zip(&ports_after) {
        assert_eq!(after.len(), 1, "one connection per name: {after:?}");
        assert_ne!(before, after, "a new TCP connection");
    }

    // The publisher really resent: the message the drop hit took a second attempt,
    // and it is the only one that did.
    let resends: u32 = published.iter().map(|(_, c)| c.attempts - 1).sum();
    let (hit, hit_by_drop) = published[hit].clone();
    assert_eq!(hit_by_drop.attempts, 2, "{hit}: {hit_by_drop:?}");
    assert_eq!(resends, 1);

    // One consumer and no requeue after the recovery: once the last message is in,
    // every copy queued before it is in too.
    let last = published.last().unwrap().0.clone();
    wait_until(STEP, "the last message to arrive", || {
        ready(consumed.seen.lock().unwrap().iter().any(|(p, _)| *p == last))
    })
    .await;
    let seen = consumed.seen.lock().unwrap().clone();
    assert_delivered_as_promised(&published, &seen, &held);
    println!(
        "{} published, {hit} resent ({hit_by_drop:?}), {} deliveries",
        published.len(),
        seen.len()
    );
    publisher.close(200, "done".into()).await.expect("close the publisher");
    consumer.close(200, "done".into()).await.expect("close the consumer");
}
// ANCHOR_END: reconnect_test

// ANCHOR: assert_delivered_as_promised
/// Each message is queued once, or, if an attempt was lost in flight, possibly once
/// more; and the broker redelivers exactly the messages the consumer held.
fn assert_delivered_as_promised(
    published: &[(String, Confirmed)],
    seen: &[(String, bool)],
    held: &[String],
) {
    // Per payload: first deliveries (one per copy queued), then redeliveries.
    let mut copies: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for (payload, redelivered) in seen {
        let entry = copies.entry(payload.as_str()).or_default();
        if *redelivered { entry.1 += 1 } else { entry.0 += 1 }
    }
    for (payload, confirmed) in published {
        let (new, again) = copies.get(payload.as_str()).copied().unwrap_or_default();
        assert!(
            (1..=1 + confirmed.unconfirmed).contains(&new),
            "{payload} queued {new} times after {confirmed:?}"
        );
        let was_held = u32::from(held.contains(payload));
        assert_eq!(again, was_held, "{payload} redelivered {again} times");
    }
}
// ANCHOR_END: assert_delivered_as_promised

/// What the consumer saw, and what it holds unacknowledged.
struct Consumed {
    /// Every delivery: the payload and the broker's `redelivered` flag.
    seen: Arc<Mutex<Vec<(String, bool)>>>,
    /// While set, deliveries are held, not acknowledged.
    hold: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<Delivery>>>,
}

/// Consumes `queue` with a prefetch of PREFETCH, recording every delivery. While
/// `hold` is set it acknowledges nothing, so it ends up holding PREFETCH messages.
async fn consume(channel: Channel, queue: &str) -> Consumed {
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.unwrap();
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumed = Consumed {
        seen: Arc::default(),
        hold: Arc::new(AtomicBool::new(true)),
        held: Arc::default(),
    };
    let (seen, hold, held) =
        (consumed.seen.clone(), consumed.hold.clone(), consumed.held.clone());
    tokio::spawn(async move {
        while let Some(delivery) = deliveries.next().await {
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(error) => {
                    channel.wait_for_recovery(error).await.unwrap();
                    continue;
                }
            };
            seen.lock().unwrap().push((payload_of(&delivery), delivery.redelivered));
            if hold.load(Ordering::SeqCst) {
                held.lock().unwrap().push(delivery);
            } else {
                delivery.ack(BasicAckOptions::default()).await.unwrap();
            }
        }
    });
    consumed
}

async fn publish(channel: &lapin::Channel, queue: &str, payload: &str) -> Confirmed {
    let publish = publish_until_confirmed(
        channel,
        "",
        queue,
        payload.as_bytes(),
        persistent(),
    );
    timeout(STEP, publish).await.expect("confirmed in time").expect("confirmed")
}

fn payload_of(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.data).into_owned()
}
