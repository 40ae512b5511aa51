//! The Kafka chapter's guarantees, against the real broker at `KAFKA_BROKERS` (and PostgreSQL at
//! `DATABASE_URL` for the idempotent consumer). Fresh topics, groups and schemas per test;
//! consumers are dropped, which closes them and leaves their group cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kafka_events::client::{consumer, create_topics, producer};
use kafka_events::consume::{DeadLetters, Handled, StepError, handle_next};
use kafka_events::envelope::{
    self, DecodeError, Event, Metadata, OrderPlaced, header, header_str,
};
use kafka_events::idempotent::{CustomerTotals, Store, StoreError, add_to_totals};
use kafka_events::produce::publish;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset};
use tokio::time::timeout;
use uuid::Uuid;

/// A bound on any single wait; a healthy broker answers in milliseconds, a rebalance in seconds.
const STEP: Duration = Duration::from_secs(60);

struct Fixture {
    brokers: String,
    topic: String,
    dlq: String,
    producer: FutureProducer,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

/// Fresh topics, or `None` (after printing why, or panicking under REQUIRE_BROKERS) when Kafka is down.
async fn fixture(partitions: i32) -> Option<Fixture> {
    let brokers = infra::kafka_brokers();
    let (topic, dlq) = (unique("orders"), unique("orders-dlq"));
    match timeout(STEP, create_topics(&brokers, &[(&topic, partitions), (&dlq, 1)]))
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            infra::unavailable("Kafka", &brokers, e);
            return None;
        }
        Err(_) => {
            infra::unavailable("Kafka", &brokers, "no answer to CreateTopics");
            return None;
        }
    }
    let producer = producer(&brokers).expect("producer config");
    Some(Fixture { brokers, topic, dlq, producer })
}

fn order(order_id: &str, customer_id: &str, total_cents: u64) -> OrderPlaced {
    OrderPlaced {
        order_id: order_id.into(),
        customer_id: customer_id.into(),
        total_cents,
        currency: "EUR".into(),
    }
}

fn metadata() -> Metadata {
    Metadata::order_placed("test-corr", "2026-11-22T10:00:00Z")
}

async fn next_event(
    consumer: &StreamConsumer,
    dead_letters: &DeadLetters,
) -> Handled {
    timeout(
        STEP,
        handle_next(consumer, dead_letters, |event| async {
            Ok::<_, String>(event)
        }),
    )
    .await
    .expect("no message within the step bound")
    .expect("consumer step")
}

fn processed(handled: Handled) -> Event {
    match handled {
        Handled::Processed(event) => event,
        other => panic!("expected a processed event, got {other:?}"),
    }
}

#[tokio::test]
async fn events_of_one_order_stay_in_order_in_one_partition() {
    let Some(f) = fixture(3).await else { return };
    let mut partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for step in 1..=5 {
        for id in ["o-1", "o-2", "o-3", "o-4"] {
            let (partition, _) =
                publish(&f.producer, &f.topic, &metadata(), &order(id, "c-1", step))
                    .await
                    .expect("publish");
            partitions.entry(id.to_owned()).or_default().insert(partition);
        }
    }
    assert!(
        partitions.values().all(|p| p.len() == 1),
        "each key maps to one partition: {partitions:?}"
    );

    let consumer = consumer(&f.brokers, &unique("ordering")).unwrap();
    consumer.subscribe(&[&f.topic]).unwrap();
    let dead_letters =
        DeadLetters { producer: f.producer.clone(), topic: f.dlq.clone() };
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..20 {
        let event = processed(next_event(&consumer, &dead_letters).await);
        seen.entry(event.order.order_id).or_default().push(event.order.total_cents);
    }
    // Within a key, the consumer sees the produce order. Across keys, nothing is promised.
    for (id, steps) in seen {
        assert_eq!(steps, [1, 2, 3, 4, 5], "events of {id} out of order");
    }
}

#[tokio::test]
async fn the_store_replaces_a_connection_the_server_closed() {
    let url = infra::database_url();
    // The store's session carries a name, so the test can find and end it.
    let name = unique("totals").replace('-', "_");
    let joiner = if url.contains('?') { '&' } else { '?' };
    let named = format!("{url}{joiner}application_name={name}");
    let schema = format!("t_{}", Uuid::new_v4().simple());
    let mut store = match Store::connect(&named, &schema, "totals").await {
        Ok(store) => store,
        Err(e) => return infra::unavailable("PostgreSQL", &url, e),
    };
    // A restart, a failover or an administrator ends the store's session; the
    // call returns once the server process is gone (5 s at most).
    let (admin, connection) =
        tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let end = "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
               WHERE application_name = $1";
    assert_eq!(admin.query(end, &[&name]).await.unwrap().len(), 1, "one session");

    // An event that meets the closed connection before the store has seen it
    // close fails, and comes again (as an unstored offset would bring it); the
    // next attempt runs on a new connection.
    let event = Event { metadata: metadata(), order: order("o-1", "c-42", 2899) };
    let applied = match store.apply_once(&event).await {
        Ok(applied) => applied,
        Err(StoreError::Postgres(error)) => {
            eprintln!("one attempt failed on the closed connection: {error}");
            store.apply_once(&event).await.unwrap()
        }
        Err(other) => panic!("not a PostgreSQL error: {other}"),
    };
    assert!(applied, "applied on a new connection");
    assert_eq!(
        store.totals().await.unwrap(),
        CustomerTotals::from([("c-42".to_owned(), (1, 2899))])
    );
    store.drop_schema().await.unwrap();
}

// ANCHOR: crash_test
#[tokio::test]
async fn a_crash_before_the_commit_redelivers_and_the_idempotent_store_applies_once()
{
    let Some(f) = fixture(1).await else { return };
    let url = infra::database_url();
    let schema = format!("t_{}", Uuid::new_v4().simple());
    let mut store = match Store::connect(&url, &schema, "totals").await {
        Ok(store) => store,
        Err(e) => return infra::unavailable("PostgreSQL", &url, e),
    };
    publish(&f.producer, &f.topic, &metadata(), &order("o-1", "c-42", 2899))
        .await
        .expect("publish");
    let group = unique("totals");

    // The first consumer applies the effect, then "crashes" before committing its
    // offset.
    let first = consumer(&f.brokers, &group).unwrap();
    first.subscribe(&[&f.topic]).unwrap();
    let message =
        timeout(STEP, first.recv()).await.expect("first delivery").expect("recv");
    let event = envelope::decode(&message).expect("decodes");
    assert!(store.apply_once(&event).await.unwrap(), "first delivery: applied");
    drop(message);
    drop(first); // leaves the group without committing

    // Its replacement in the same group starts from the last committed offset: the
    // same event.
    let second = consumer(&f.brokers, &group).unwrap();
    second.subscribe(&[&f.topic]).unwrap();
    let dead_letters =
        DeadLetters { producer: f.producer.clone(), topic: f.dlq.clone() };
    let again = timeout(
        STEP,
        handle_next(&second, &dead_letters, |event| async {
            let applied = store.apply_once(&event).await?;
            assert!(!applied, "the redelivered event must not be applied twice");
            Ok::<_, kafka_events::idempotent::StoreError>(event)
        }),
    )
    .await
    .expect("redelivery")
    .expect("step");
    assert_eq!(
        processed(again).metadata.event_id,
        event.metadata.event_id,
        "the same event, delivered again"
    );
    assert_eq!(
        store.totals().await.unwrap(),
        CustomerTotals::from([("c-42".to_owned(), (1, 2899))]),
        "exactly one effect"
    );
    store.drop_schema().await.unwrap();
}
// ANCHOR_END: crash_test

/// Commits what the consumer has stored and reads the group's committed offset
/// of partition 0 back from the broker (blocking calls, off the async worker).
fn committed_offset(consumer: &StreamConsumer, topic: &str) -> Option<i64> {
    tokio::task::block_in_place(|| {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored yet: nothing to commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => panic!("commit: {e}"),
        }
        let committed = consumer.committed(STEP).expect("committed offsets");
        match committed.find_partition(topic, 0).expect("partition 0").offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    })
}

// ANCHOR: retry_in_place_test
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_is_redelivered_in_place_and_no_commit_passes_it() {
    let Some(f) = fixture(1).await else { return };
    let ids: Vec<String> = (0..6).map(|i| format!("o-{i}")).collect();
    for id in &ids {
        publish(&f.producer, &f.topic, &metadata(), &order(id, "c-1", 100))
            .await
            .expect("publish");
    }
    let consumer = consumer(&f.brokers, &unique("retry")).unwrap();
    consumer.subscribe(&[&f.topic]).unwrap();
    let dead_letters =
        DeadLetters { producer: f.producer.clone(), topic: f.dlq.clone() };

    // The handler fails once, on o-2 (offset 2); every other call succeeds.
    let mut failed_once = false;
    let mut processed_ids = Vec::new();
    let mut failures = 0;
    while processed_ids.len() < ids.len() {
        let step = handle_next(&consumer, &dead_letters, |event| async {
            if event.order.order_id == "o-2" && !failed_once {
                failed_once = true;
                return Err("payments is down");
            }
            Ok(event)
        });
        match timeout(STEP, step).await.expect("a message within the bound") {
            Ok(handled) => processed_ids.push(processed(handled).order.order_id),
            Err(StepError::Handler { offset, .. }) => {
                failures += 1;
                assert_eq!(offset, 2, "the failure was o-2's");
            }
            Err(e) => panic!("step: {e}"),
        }
        // The group's committed offset is the next message to process: never
        // beyond the first message not processed yet.
        let done = |id: &String| processed_ids.contains(id);
        let first_unprocessed =
            ids.iter().position(|id| !done(id)).unwrap_or(6) as i64;
        let committed = committed_offset(&consumer, &f.topic);
        assert!(
            committed.unwrap_or(0) <= first_unprocessed,
            "committed {committed:?} passes unprocessed offset {first_unprocessed}"
        );
    }
    assert_eq!(failures, 1);
    assert_eq!(processed_ids, ids, "o-2 processed, once, before o-3, in order");
    assert_eq!(committed_offset(&consumer, &f.topic), Some(6), "all six done");
}
// ANCHOR_END: retry_in_place_test

#[tokio::test]
async fn a_poison_event_is_dead_lettered_with_its_payload_headers_and_error_and_the_consumer_goes_on()
 {
    let Some(f) = fixture(1).await else { return };
    let poison_meta = metadata();
    publish(&f.producer, &f.topic, &metadata(), &order("o-1", "c-1", 100))
        .await
        .unwrap();
    let poison = FutureRecord::to(&f.topic)
        .key("o-2")
        .payload("{not json")
        .headers(poison_meta.to_headers());
    f.producer.send(poison, STEP).await.map_err(|(e, _)| e).unwrap();
    let no_headers = FutureRecord::to(&f.topic)
        .key("o-3")
        .payload(r#"{"order_id":"o-3"}"#)
        .headers(OwnedHeaders::new().insert(Header { key: "x", value: Some("y") }));
    f.producer.send(no_headers, STEP).await.map_err(|(e, _)| e).unwrap();
    publish(&f.producer, &f.topic, &metadata(), &order("o-4", "c-1", 400))
        .await
        .unwrap();

    let consumer = consumer(&f.brokers, &unique("dlq")).unwrap();
    consumer.subscribe(&[&f.topic]).unwrap();
    let dead_letters =
        DeadLetters { producer: f.producer.clone(), topic: f.dlq.clone() };
    assert_eq!(
        processed(next_event(&consumer, &dead_letters).await).order.order_id,
        "o-1"
    );
    assert!(matches!(
        next_event(&consumer, &dead_letters).await,
        Handled::DeadLettered(DecodeError::BadPayload(_))
    ));
    assert_eq!(
        next_event(&consumer, &dead_letters).await,
        Handled::DeadLettered(DecodeError::MissingHeader(header::EVENT_TYPE))
    );
    assert_eq!(
        processed(next_event(&consumer, &dead_letters).await).order.order_id,
        "o-4",
        "the consumer kept going"
    );

    let inspector =
        kafka_events::client::consumer(&f.brokers, &unique("dlq-reader")).unwrap();
    inspector.subscribe(&[&f.dlq]).unwrap();
    let dead =
        timeout(STEP, inspector.recv()).await.expect("a dead letter").unwrap();
    assert_eq!(
        dead.payload(),
        Some(&b"{not json"[..]),
        "the original payload, untouched"
    );
    assert_eq!(dead.key(), Some(&b"o-2"[..]));
    assert_eq!(
        header_str(&dead, header::EVENT_ID),
        Some(poison_meta.event_id.to_string().as_str()),
        "original headers kept"
    );
    assert!(
        header_str(&dead, header::DLQ_ERROR)
            .unwrap()
            .contains("not a valid OrderPlaced")
    );
    assert!(
        header_str(&dead, header::DLQ_ORIGIN)
            .unwrap()
            .starts_with(&format!("{}/0/", f.topic))
    );
}

#[tokio::test]
async fn a_dead_letter_that_cannot_be_sent_is_not_skipped() {
    let Some(f) = fixture(1).await else { return };
    publish(&f.producer, &f.topic, &metadata(), &order("o-1", "c-1", 100))
        .await
        .unwrap();
    let poison = FutureRecord::to(&f.topic).key("o-2").payload("{not json");
    f.producer.send(poison, STEP).await.map_err(|(e, _)| e).unwrap();
    publish(&f.producer, &f.topic, &metadata(), &order("o-3", "c-1", 300))
        .await
        .unwrap();

    let consumer = consumer(&f.brokers, &unique("dlq-down")).unwrap();
    consumer.subscribe(&[&f.topic]).unwrap();
    // A dead-letter producer whose broker is gone (a port that was just closed), and
    // which gives up after a second. It fails on any broker, whether or not that
    // broker would have created a missing topic.
    let closed_port =
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let impatient = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", closed_port.to_string())
        .set("message.timeout.ms", "1000")
        .create()
        .unwrap();
    let unreachable = DeadLetters { producer: impatient, topic: f.dlq.clone() };
    let working = DeadLetters { producer: f.producer.clone(), topic: f.dlq.clone() };

    assert_eq!(
        processed(next_event(&consumer, &working).await).order.order_id,
        "o-1"
    );
    let step =
        handle_next(&consumer, &unreachable, |e| async { Ok::<_, String>(e) });
    let failed = timeout(STEP, step).await.expect("an answer within the bound");
    assert!(matches!(failed, Err(StepError::Kafka(_))), "{failed:?}");
    // The poison message comes again, before o-3, and is dead-lettered this time.
    assert!(matches!(
        next_event(&consumer, &working).await,
        Handled::DeadLettered(
            DecodeError::MissingHeader(_) | DecodeError::BadPayload(_)
        )
    ));
    assert_eq!(
        processed(next_event(&consumer, &working).await).order.order_id,
        "o-3"
    );
}

#[tokio::test]
async fn a_new_group_replaying_from_the_start_rebuilds_the_same_projection() {
    let Some(f) = fixture(2).await else { return };
    for (i, customer) in
        ["c-1", "c-2", "c-3", "c-1", "c-2", "c-1"].into_iter().enumerate()
    {
        publish(
            &f.producer,
            &f.topic,
            &metadata(),
            &order(&format!("o-{i}"), customer, 100 * (i as u64 + 1)),
        )
        .await
        .unwrap();
    }
    let dead_letters =
        DeadLetters { producer: f.producer.clone(), topic: f.dlq.clone() };
    let mut projections = Vec::new();
    for group in [unique("live"), unique("replay")] {
        let consumer = consumer(&f.brokers, &group).unwrap();
        consumer.subscribe(&[&f.topic]).unwrap();
        let mut totals = CustomerTotals::new();
        for _ in 0..6 {
            add_to_totals(
                &mut totals,
                &processed(next_event(&consumer, &dead_letters).await).order,
            );
        }
        projections.push(totals);
    }
    assert_eq!(projections[0], projections[1]);
    assert_eq!(projections[0]["c-1"], (3, 100 + 400 + 600));
}

#[tokio::test]
async fn two_consumers_share_the_partitions_and_the_survivor_takes_over() {
    let Some(f) = fixture(2).await else { return };
    let group = unique("shared");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Uuid)>();
    let mut consumers: Vec<Arc<StreamConsumer>> =
        (0..2).map(|_| Arc::new(consumer(&f.brokers, &group).unwrap())).collect();
    let mut tasks = Vec::new();
    for (n, consumer) in consumers.iter().enumerate() {
        consumer.subscribe(&[&f.topic]).unwrap();
        let (consumer, tx) = (Arc::clone(consumer), tx.clone());
        let dead_letters =
            DeadLetters { producer: f.producer.clone(), topic: f.dlq.clone() };
        tasks.push(tokio::spawn(async move {
            loop {
                let step = handle_next(&consumer, &dead_letters, |e| async {
                    Ok::<_, String>(e)
                });
                match step.await {
                    Ok(Handled::Processed(event)) => {
                        if tx.send((n, event.metadata.event_id)).is_err() {
                            return; // the test has ended
                        }
                    }
                    Ok(other) => {
                        panic!("consumer {n}: only valid events: {other:?}")
                    }
                    // A step that fails rewinds; the next one tries again.
                    Err(e) => eprintln!("consumer {n}: {e}"),
                }
            }
        }));
    }
    // Both consumers own a partition before any event is sent.
    timeout(STEP, async {
        while consumers
            .iter()
            .any(|c| c.assignment().map(|a| a.count()).unwrap_or(0) == 0)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("both consumers get a partition");

    let mut sent = BTreeSet::new();
    let mut received = BTreeSet::new();
    let mut by_consumer = [0, 0];
    for round in 0..2 {
        for i in 0..10 {
            let meta = metadata();
            sent.insert(meta.event_id);
            publish(
                &f.producer,
                &f.topic,
                &meta,
                &order(&format!("o-{round}-{i}"), "c-1", 1),
            )
            .await
            .unwrap();
        }
        while received.len() < sent.len() {
            let Ok(got) = timeout(STEP, rx.recv()).await else {
                panic!(
                    "round {round}: {} of {} events after {STEP:?}; assignments {:?}",
                    received.len(),
                    sent.len(),
                    consumers
                        .iter()
                        .map(|c| c.assignment().map(|a| a.count()))
                        .collect::<Vec<_>>()
                );
            };
            let (n, id) = got.unwrap();
            received.insert(id);
            by_consumer[n] += 1;
        }
        if round == 0 {
            assert!(
                by_consumer.iter().all(|n| *n > 0),
                "both consumers had work: {by_consumer:?}"
            );
            // The second consumer leaves: stop its task, then drop it, which closes it and leaves
            // the group. Its partition moves to the first.
            let task = tasks.pop().unwrap();
            task.abort();
            assert!(
                task.await.is_err_and(|e| e.is_cancelled()),
                "stopped by the abort"
            );
            drop(consumers.pop());
        }
    }
    assert_eq!(received, sent, "no event lost across the takeover");
    assert_eq!(
        consumers[0].assignment().unwrap().count(),
        2,
        "the survivor owns both partitions"
    );
    tasks.pop().unwrap().abort();
}

#[tokio::test]
async fn v1_and_v2_events_coexist_on_one_topic() {
    let Some(f) = fixture(1).await else { return };
    let mut v1 = metadata();
    v1.schema_version = 1;
    let old_payload = br#"{"order_id":"o-1","customer_id":"c-1","total_cents":700}"#;
    let record = FutureRecord::to(&f.topic)
        .key("o-1")
        .payload(&old_payload[..])
        .headers(v1.to_headers());
    f.producer.send(record, STEP).await.map_err(|(e, _)| e).unwrap();
    publish(
        &f.producer,
        &f.topic,
        &metadata(),
        &OrderPlaced { currency: "CHF".into(), ..order("o-2", "c-1", 800) },
    )
    .await
    .unwrap();

    let consumer = consumer(&f.brokers, &unique("versions")).unwrap();
    consumer.subscribe(&[&f.topic]).unwrap();
    let dead_letters =
        DeadLetters { producer: f.producer.clone(), topic: f.dlq.clone() };
    let old = processed(next_event(&consumer, &dead_letters).await);
    assert_eq!(
        (old.metadata.schema_version, old.order.currency.as_str()),
        (1, "EUR"),
        "a v2 reader defaults what v1 lacks"
    );
    let new = processed(next_event(&consumer, &dead_letters).await);
    assert_eq!(
        (new.metadata.schema_version, new.order.currency.as_str()),
        (2, "CHF")
    );
    // A v1 reader reads the v2 payload, skipping the field it does not know.
    let as_v1: envelope::OrderPlacedV1 =
        serde_json::to_value(&new.order).and_then(serde_json::from_value).unwrap();
    assert_eq!(as_v1.total_cents, 800);
}
