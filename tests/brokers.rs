//! Broker smoke tests: the substrate the messaging chapters stand on.
//!
//! Each test completes one real round trip with one broker, through the client library the chapters
//! use: produce and consume through a consumer group with rdkafka, publish with a confirm and consume
//! with an ack through lapin, a SQL round trip through tokio-postgres. Names are fresh per run (topics,
//! groups, queues, tables), so reruns never see each other's data.
//!
//! When a broker does not answer, the test prints why and skips, unless `REQUIRE_BROKERS=1`
//! (`cargo xtask test`, CI), where it fails. Start brokers with `cargo xtask brokers up`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::time::Duration;

use futures::StreamExt;
use tokio::time::timeout;

/// Generous bound for any single broker operation: a healthy broker answers in milliseconds, so
/// hitting this means the broker is wedged, and the message says which step hung.
const STEP: Duration = Duration::from_secs(30);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn kafka_produce_then_consume_through_a_consumer_group() {
    use rdkafka::ClientConfig;
    use rdkafka::Message;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let brokers = infra::kafka_brokers();
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &brokers).set("socket.timeout.ms", "5000");

    // Topics are created explicitly: the broker may not auto-create them (compose's Kafka is
    // told not to, and production clusters usually forbid it).
    let admin: AdminClient<_> =
        config.create().expect("admin client config is valid");
    let topic = unique("smoke-orders");
    let options =
        AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let created = timeout(
        STEP,
        admin.create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &options,
        ),
    )
    .await;
    match created {
        Ok(Ok(results)) => {
            for result in results {
                result.unwrap_or_else(|(name, code)| {
                    panic!("creating topic {name} failed: {code}")
                });
            }
        }
        Ok(Err(e)) => return infra::unavailable("Kafka", &brokers, e),
        Err(_) => {
            return infra::unavailable(
                "Kafka",
                &brokers,
                "no answer to CreateTopics within 30s",
            );
        }
    }

    let producer: FutureProducer = config
        .clone()
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer config is valid");
    for (key, payload) in
        [("order-1", "placed"), ("order-1", "paid"), ("order-2", "placed")]
    {
        producer
            .send(
                FutureRecord::to(&topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| {
                panic!("producing {key}={payload} failed: {e}")
            });
    }

    let consumer: StreamConsumer = config
        .clone()
        .set("group.id", unique("smoke-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer config is valid");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut received = Vec::new();
    while received.len() < 3 {
        let message = timeout(STEP, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of 3 messages arrived within 30s: {received:?}",
                    received.len()
                )
            })
            .expect("consume");
        let key =
            String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let payload = String::from_utf8_lossy(message.payload().unwrap_or_default())
            .into_owned();
        received.push((key, payload));
        consumer.commit_message(&message, CommitMode::Sync).expect("commit offset");
    }
    // One partition: the log order is the produce order.
    let expected =
        [("order-1", "placed"), ("order-1", "paid"), ("order-2", "placed")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
    assert_eq!(received, expected);

    let committed =
        consumer.committed(Duration::from_secs(10)).expect("read committed offsets");
    let offsets: Vec<_> = committed.elements().iter().map(|e| e.offset()).collect();
    assert_eq!(
        offsets,
        [rdkafka::Offset::Offset(3)],
        "the group committed past all three messages"
    );
    consumer.unsubscribe();
}

#[tokio::test]
async fn rabbitmq_publish_with_confirm_then_consume_with_ack() {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let addr = infra::amqp_addr();
    let conn = match timeout(
        STEP,
        Connection::connect(&addr, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return infra::unavailable("RabbitMQ", &addr, e),
        Err(_) => {
            return infra::unavailable("RabbitMQ", &addr, "no answer within 30s");
        }
    };
    let channel = conn.create_channel().await.expect("open channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("enable publisher confirms");
    let queue = unique("smoke.orders");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");

    let confirm = channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            br#"{"order_id":"order-1"}"#,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("publisher confirm");
    assert!(
        confirm.is_ack(),
        "the broker must ack (not nack) a publish to a declared queue: {confirm:?}"
    );

    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "smoke".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let delivery = timeout(STEP, consumer.next())
        .await
        .expect("a delivery within 30s")
        .expect("consumer stream open")
        .expect("delivery");
    assert_eq!(delivery.data, br#"{"order_id":"order-1"}"#);
    delivery.ack(BasicAckOptions::default()).await.expect("ack");

    let deleted = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete queue");
    assert_eq!(deleted, 0, "the acked message must not still be in the queue");
    conn.close(200, "smoke test done".into()).await.expect("close connection");
}

#[tokio::test]
async fn postgres_sql_round_trip() {
    let url = infra::database_url();
    let (client, connection) =
        match timeout(STEP, tokio_postgres::connect(&url, tokio_postgres::NoTls))
            .await
        {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return infra::unavailable("PostgreSQL", &url, e),
            Err(_) => {
                return infra::unavailable(
                    "PostgreSQL",
                    &url,
                    "no answer within 30s",
                );
            }
        };
    let driver = tokio::spawn(connection);

    let table = unique("smoke_orders").replace('-', "_");
    client
        .batch_execute(&format!("CREATE TEMPORARY TABLE {table} (id TEXT PRIMARY KEY, total_cents BIGINT NOT NULL)"))
        .await
        .expect("create table");
    let inserted = client
        .execute(
            &format!(
                "INSERT INTO {table} (id, total_cents) VALUES ($1, $2), ($3, $4)"
            ),
            &[&"order-1", &1250i64, &"order-2", &399i64],
        )
        .await
        .expect("insert");
    assert_eq!(inserted, 2);
    let row = client
        .query_one(
            &format!("SELECT count(*), sum(total_cents)::BIGINT FROM {table}"),
            &[],
        )
        .await
        .expect("select");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 1649));

    drop(client);
    driver.await.expect("connection task").expect("connection closed cleanly");
}
