//! Reconnection: the broker drops every connection mid-stream; the publisher and the consumer
//! recover, and every confirmed message reaches the consumer.
//!
//! In a file of its own because `rabbitmqctl close_all_connections` closes *every* connection on
//! the broker: test files run one after another, so no other test is disturbed.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use rabbitmq_queues::publish::persistent;
use rabbitmq_queues::reconnect::{connect_recovering, publish_until_confirmed};
use rabbitmq_queues::topology;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(60);

// ANCHOR: reconnect_test
#[tokio::test]
async fn publisher_and_consumer_recover_and_no_confirmed_message_is_lost() {
    let uri = infra::amqp_addr();
    let (publisher, channel) = match timeout(STEP, connect_recovering(&uri)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return infra::unavailable("RabbitMQ", &uri, e),
        Err(_) => return infra::unavailable("RabbitMQ", &uri, "no answer"),
    };
    let queue = format!("captures.{}", uuid::Uuid::new_v4().simple());
    topology::work_queue(&channel, &queue, "unused-dlx").await.unwrap();

    // The consumer, on a recovering connection of its own, collects what it receives.
    let (consumer_connection, consumer_channel) =
        connect_recovering(&uri).await.unwrap();
    consumer_channel.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut deliveries = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let collector = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        while seen.len() < 200 {
            match deliveries.next().await {
                Some(Ok(delivery)) => {
                    seen.insert(
                        String::from_utf8_lossy(&delivery.data).into_owned(),
                    );
                    // An ack lost in the drop only means a redelivery, which the set absorbs.
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Some(Err(error)) => consumer_channel
                    .wait_for_recovery(error)
                    .await
                    .expect("the consumer recovers"),
                None => break,
            }
        }
        seen
    });

    let mut confirmed = BTreeSet::new();
    let mut resent = 0;
    for i in 0..200 {
        if i == 50 {
            if let Err(why) = rabbitmq_queues::admin::close_all_connections(
                "test: the broker drops every connection",
            ) {
                return infra::unavailable("RabbitMQ (management)", &uri, why);
            }
        }
        let payload = format!("capture-{i:03}");
        let attempts = timeout(
            STEP,
            publish_until_confirmed(
                &channel,
                "",
                &queue,
                payload.as_bytes(),
                persistent(),
            ),
        )
        .await
        .expect("confirmed in time")
        .expect("confirmed");
        resent += attempts - 1;
        confirmed.insert(payload);
    }
    let seen = timeout(STEP, collector)
        .await
        .expect("the consumer received everything")
        .unwrap();
    assert_eq!(confirmed.len(), 200);
    assert!(
        confirmed.is_subset(&seen),
        "confirmed but never delivered: {:?}",
        confirmed.difference(&seen).collect::<Vec<_>>()
    );
    println!("resent after the drop: {resent}");
    let _ = publisher.close(200, "done".into()).await;
    let _ = consumer_connection.close(200, "done".into()).await;
}
// ANCHOR_END: reconnect_test
