//! The RabbitMQ chapter's guarantees, against the real broker at `AMQP_ADDR`. Fresh queue and
//! exchange names per test; connections are closed at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::future::ready;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};
use rabbitmq_queues::publish::{
    PublishError, enable_confirms, persistent, publish_confirmed,
};
use rabbitmq_queues::rpc::{RpcClient, RpcError, declare_request_queue, serve};
use rabbitmq_queues::{connect, topology};
use support::wait_until;
use tokio::sync::Notify;
use tokio::time::timeout;
use uuid::Uuid;

const STEP: Duration = Duration::from_secs(30);

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", Uuid::new_v4().simple())
}

async fn broker() -> Option<(Connection, Channel)> {
    let uri = infra::amqp_addr();
    match timeout(STEP, connect(&uri)).await {
        Ok(Ok((connection, channel))) => {
            enable_confirms(&channel).await.expect("confirm mode");
            Some((connection, channel))
        }
        Ok(Err(e)) => {
            infra::unavailable("RabbitMQ", &uri, e);
            None
        }
        Err(_) => {
            infra::unavailable("RabbitMQ", &uri, "no answer within 30s");
            None
        }
    }
}

async fn consumer(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
) -> (Channel, lapin::Consumer) {
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(prefetch, BasicQosOptions::default()).await.unwrap();
    let consumer = channel
        .basic_consume(
            queue.into(),
            unique("c").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (channel, consumer)
}

async fn next(consumer: &mut lapin::Consumer) -> Delivery {
    timeout(STEP, consumer.next())
        .await
        .expect("a delivery within the step bound")
        .expect("consumer open")
        .expect("delivery")
}

fn death_reason(delivery: &Delivery) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return None;
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(reason) => Some(reason.to_string()),
        other => Some(format!("{other:?}")),
    }
}

// ANCHOR: fair_dispatch_test
#[tokio::test]
async fn prefetch_one_sends_work_to_the_free_worker() {
    let Some((connection, channel)) = broker().await else { return };
    let (queue, dlx) = (unique("captures"), unique("dlx"));
    topology::work_queue(&channel, &queue, &dlx).await.unwrap();
    let (_slow_channel, mut slow) = consumer(&connection, &queue, 1).await;
    let (_fast_channel, mut fast) = consumer(&connection, &queue, 1).await;
    for i in 0..10 {
        publish_confirmed(
            &channel,
            "",
            &queue,
            format!("capture-{i}").as_bytes(),
            persistent(),
        )
        .await
        .unwrap();
    }
    // The slow worker takes one task and sits on it: with a prefetch of 1 it gets
    // nothing more, and the fast worker does the other nine. Dealt out in turn, the
    // fast worker would get five, and wait in vain for a sixth.
    let held = next(&mut slow).await;
    for _ in 0..9 {
        next(&mut fast).await.ack(BasicAckOptions::default()).await.unwrap();
    }
    held.ack(BasicAckOptions::default()).await.unwrap();
    connection.close(200, "done".into()).await.unwrap();
}
// ANCHOR_END: fair_dispatch_test

#[tokio::test]
async fn a_worker_that_dies_before_acking_has_its_task_redelivered_to_another() {
    let Some((connection, channel)) = broker().await else { return };
    let (queue, dlx) = (unique("captures"), unique("dlx"));
    topology::work_queue(&channel, &queue, &dlx).await.unwrap();
    let (dying_channel, mut dying) = consumer(&connection, &queue, 1).await;
    publish_confirmed(&channel, "", &queue, b"capture pay_1", persistent())
        .await
        .unwrap();
    let first = next(&mut dying).await;
    assert!(!first.redelivered);
    let (_survivor_channel, mut survivor) = consumer(&connection, &queue, 1).await;
    dying_channel.close(200, "worker crashed".into()).await.unwrap(); // no ack was sent
    let again = next(&mut survivor).await;
    assert_eq!(again.data, b"capture pay_1");
    assert!(again.redelivered, "the broker marks it as delivered before");
    again.ack(BasicAckOptions::default()).await.unwrap();
    connection.close(200, "done".into()).await.unwrap();
}

// ANCHOR: order_test
#[tokio::test]
async fn a_consumer_sees_a_requeued_task_after_later_ones() {
    let Some((connection, channel)) = broker().await else { return };
    let (queue, dlx) = (unique("captures"), unique("dlx"));
    topology::work_queue(&channel, &queue, &dlx).await.unwrap();
    for payment in ["pay_1", "pay_2", "pay_3"] {
        publish_confirmed(&channel, "", &queue, payment.as_bytes(), persistent())
            .await
            .unwrap();
    }
    // Two competing workers, prefetch 1: the first takes pay_1, the second pay_2.
    let (first_channel, mut first) = consumer(&connection, &queue, 1).await;
    assert_eq!(next(&mut first).await.data, b"pay_1");
    let (_second_channel, mut second) = consumer(&connection, &queue, 1).await;
    let pay_2 = next(&mut second).await;
    assert_eq!(pay_2.data, b"pay_2");
    // The first worker dies: pay_1 goes back to its place at the head of the queue.
    first_channel.close(200, "worker crashed".into()).await.unwrap();
    pay_2.ack(BasicAckOptions::default()).await.unwrap();
    let mut seen = vec![pay_2.data];
    for _ in 0..2 {
        let task = next(&mut second).await;
        task.ack(BasicAckOptions::default()).await.unwrap();
        seen.push(task.data);
    }
    // The queue kept its order (pay_1 before pay_3); the consumer's view did not.
    assert_eq!(seen, [b"pay_2", b"pay_1", b"pay_3"]);
    connection.close(200, "done".into()).await.unwrap();
}
// ANCHOR_END: order_test

#[tokio::test]
async fn a_confirm_covers_routed_persistent_messages_and_unroutable_ones_come_back()
{
    let Some((connection, channel)) = broker().await else { return };
    let (queue, dlx) = (unique("captures"), unique("dlx"));
    topology::work_queue(&channel, &queue, &dlx).await.unwrap();
    publish_confirmed(&channel, "", &queue, b"kept", persistent())
        .await
        .expect("confirmed");
    let stored = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("in the queue once confirmed");
    assert_eq!(*stored.delivery.properties.delivery_mode(), Some(2), "persistent");
    let unroutable = publish_confirmed(
        &channel,
        "",
        &unique("nobody-listens"),
        b"lost",
        persistent(),
    )
    .await;
    assert!(
        matches!(unroutable, Err(PublishError::Unroutable(_))),
        "{unroutable:?}"
    );
    // Without confirm mode there is no confirm to wait for, and that is an error.
    let unconfirmed = connection.create_channel().await.unwrap();
    let result =
        publish_confirmed(&unconfirmed, "", &queue, b"kept?", persistent()).await;
    assert!(matches!(result, Err(PublishError::ConfirmsNotEnabled)), "{result:?}");
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn a_fanout_exchange_gives_every_subscriber_a_copy() {
    let Some((connection, channel)) = broker().await else { return };
    let exchange = unique("notifications");
    let (email, sms) = (unique("email"), unique("sms"));
    topology::exchange_with_queues(
        &channel,
        &exchange,
        ExchangeKind::Fanout,
        &[(&email, ""), (&sms, "")],
    )
    .await
    .unwrap();
    publish_confirmed(&channel, &exchange, "", b"order o-1 placed", persistent())
        .await
        .unwrap();
    for queue in [&email, &sms] {
        let copy = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        assert_eq!(
            copy.map(|m| m.delivery.data),
            Some(b"order o-1 placed".to_vec()),
            "{queue}"
        );
    }
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn a_topic_exchange_routes_by_pattern() {
    let Some((connection, channel)) = broker().await else { return };
    let exchange = unique("orders");
    let (eu, us, all) = (unique("eu"), unique("us"), unique("all"));
    let bindings = [
        (eu.as_str(), "orders.eu.*"),
        (us.as_str(), "orders.us.*"),
        (all.as_str(), "orders.#"),
    ];
    topology::exchange_with_queues(
        &channel,
        &exchange,
        ExchangeKind::Topic,
        &bindings,
    )
    .await
    .unwrap();
    publish_confirmed(&channel, &exchange, "orders.eu.placed", b"o-1", persistent())
        .await
        .unwrap();
    let got = |queue: String| {
        let channel = channel.clone();
        async move {
            channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .is_some()
        }
    };
    assert!(got(eu).await, "orders.eu.* matches orders.eu.placed");
    assert!(got(all).await, "orders.# matches everything under orders");
    assert!(!got(us).await, "orders.us.* does not match");
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn rejected_and_expired_messages_go_to_the_dead_letter_exchange() {
    let Some((connection, channel)) = broker().await else { return };
    let (queue, dlx, dead) = (unique("captures"), unique("dlx"), unique("dead"));
    topology::dead_letters(&channel, &dlx, &dead).await.unwrap();
    topology::work_queue(&channel, &queue, &dlx).await.unwrap();
    // Dead-lettering happens inside the broker, after the reject returns: wait for the
    // dead letters as a consumer does, by consuming them.
    let (_dead_channel, mut dead_letters) = consumer(&connection, &dead, 1).await;

    let (_worker_channel, mut worker) = consumer(&connection, &queue, 1).await;
    publish_confirmed(
        &channel,
        "",
        &queue,
        b"capture of an unknown payment",
        persistent(),
    )
    .await
    .unwrap();
    next(&mut worker)
        .await
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let rejected = next(&mut dead_letters).await;
    rejected.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(rejected.data, b"capture of an unknown payment");
    assert_eq!(death_reason(&rejected).as_deref(), Some("rejected"));

    let ttl_queue = unique("short-lived");
    topology::work_queue(&channel, &ttl_queue, &dlx).await.unwrap();
    publish_confirmed(
        &channel,
        "",
        &ttl_queue,
        b"too late",
        persistent().with_expiration("50".into()),
    )
    .await
    .unwrap();
    let expired = next(&mut dead_letters).await;
    expired.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(expired.data, b"too late");
    assert_eq!(death_reason(&expired).as_deref(), Some("expired"));
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn request_reply_times_out_and_discards_the_late_reply() {
    let Some((connection, channel)) = broker().await else { return };
    let queue = unique("stock-check");
    // Declared here as well as by the server (declarations are idempotent), so the
    // first call cannot race the server's start.
    declare_request_queue(&channel, &queue).await.unwrap();
    // The server answers "slow" only when the test lets it, after the call gave up.
    let release = Arc::new(Notify::new());
    let server_channel = connection.create_channel().await.unwrap();
    let (server_queue, released) = (queue.clone(), release.clone());
    let serving = server_channel.clone();
    let server = tokio::spawn(async move {
        serve(&serving, &server_queue, |request| {
            let released = released.clone();
            async move {
                if request == b"slow" {
                    released.notified().await;
                }
                [b"stock for ".as_slice(), &request].concat()
            }
        })
        .await
    });
    let client = RpcClient::new(&connection).await.unwrap();
    assert_eq!(client.call(&queue, b"mug", STEP).await.unwrap(), b"stock for mug");
    let late = client.call(&queue, b"slow", Duration::from_millis(100)).await;
    assert!(matches!(late, Err(RpcError::Timeout(_))), "{late:?}");
    release.notify_one();
    wait_until(STEP, "the slow reply to arrive, late", || {
        ready(client.late_replies() == 1)
    })
    .await;
    // The late reply went nowhere; the next call gets its own answer.
    assert_eq!(client.call(&queue, b"tea", STEP).await.unwrap(), b"stock for tea");
    assert_eq!(client.late_replies(), 1);
    // An orderly end: closing the server's channel ends its consumer, and `serve`
    // (aborting the task instead could leave the channel closing under the
    // connection's own close).
    server_channel.close(200, "done".into()).await.unwrap();
    timeout(STEP, server).await.unwrap().unwrap().unwrap();
    delete_queue(&channel, &queue).await;
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn a_request_still_queued_when_its_caller_gives_up_is_never_processed() {
    let Some((connection, channel)) = broker().await else { return };
    let queue = unique("stock-check");
    declare_request_queue(&channel, &queue).await.unwrap();
    // No server yet: the call times out, and its request expires in the queue.
    let client = RpcClient::new(&connection).await.unwrap();
    let gone = client.call(&queue, b"ghost", Duration::from_millis(50)).await;
    assert!(matches!(gone, Err(RpcError::Timeout(_))), "{gone:?}");
    wait_until(STEP, "the request to expire", || async {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap();
        queue.message_count() == 0
    })
    .await;
    // Now a server starts; it sees the next request and never the expired one.
    let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (server_channel, server_queue, log) =
        (connection.create_channel().await.unwrap(), queue.clone(), handled.clone());
    let serving = server_channel.clone();
    let server = tokio::spawn(async move {
        serve(&serving, &server_queue, |request| {
            log.lock().unwrap().push(request.clone());
            async move { request }
        })
        .await
    });
    assert_eq!(client.call(&queue, b"mug", STEP).await.unwrap(), b"mug");
    assert_eq!(*handled.lock().unwrap(), [b"mug"]);
    server_channel.close(200, "done".into()).await.unwrap();
    timeout(STEP, server).await.unwrap().unwrap().unwrap();
    delete_queue(&channel, &queue).await;
    connection.close(200, "done".into()).await.unwrap();
}

/// The server takes one request at a time, so a request sent while it is busy waits
/// in the queue, where its time to live can run out. With an unlimited prefetch the
/// broker would push it to the busy server at once, and the server would process it
/// after its caller had given up.
#[tokio::test]
async fn a_request_waiting_behind_a_busy_server_expires_unprocessed() {
    let Some((connection, channel)) = broker().await else { return };
    let queue = unique("stock-check");
    declare_request_queue(&channel, &queue).await.unwrap();
    let release = Arc::new(Notify::new());
    let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let server_channel = connection.create_channel().await.unwrap();
    let (server_queue, released, log) =
        (queue.clone(), release.clone(), handled.clone());
    let serving = server_channel.clone();
    let server = tokio::spawn(async move {
        serve(&serving, &server_queue, |request| {
            log.lock().unwrap().push(request.clone());
            let released = released.clone();
            async move {
                if request == b"slow" {
                    released.notified().await;
                }
                request
            }
        })
        .await
    });
    let client = RpcClient::new(&connection).await.unwrap();
    let slow = client.call(&queue, b"slow", STEP);
    let meanwhile = async {
        wait_until(STEP, "the server to work on the slow request", || {
            ready(handled.lock().unwrap().len() == 1)
        })
        .await;
        let gone = client.call(&queue, b"ghost", Duration::from_millis(100)).await;
        assert!(matches!(gone, Err(RpcError::Timeout(_))), "{gone:?}");
        release.notify_one();
    };
    let (slow, ()) = tokio::join!(slow, meanwhile);
    assert_eq!(slow.unwrap(), b"slow");
    assert_eq!(client.call(&queue, b"mug", STEP).await.unwrap(), b"mug");
    let handled = handled.lock().unwrap().clone();
    assert_eq!(
        handled,
        [b"slow".to_vec(), b"mug".to_vec()],
        "ghost never processed"
    );
    // An orderly end: closing the server's channel ends its consumer, and `serve`.
    server_channel.close(200, "done".into()).await.unwrap();
    timeout(STEP, server).await.unwrap().unwrap().unwrap();
    delete_queue(&channel, &queue).await;
    connection.close(200, "done".into()).await.unwrap();
}

/// Request queues are durable, so each test deletes its own.
async fn delete_queue(channel: &Channel, queue: &str) {
    let options = lapin::options::QueueDeleteOptions::default();
    channel.queue_delete(queue.into(), options).await.unwrap();
}
