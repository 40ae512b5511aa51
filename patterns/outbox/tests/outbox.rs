//! The outbox's promises, against the real PostgreSQL at `DATABASE_URL` and the Kafka API broker at
//! `KAFKA_BROKERS`: nothing committed is lost (late commits included), nothing rolled back is sent,
//! each aggregate's events stay in order, two relays never send one row twice, a row that cannot be
//! published is marked failed and reported, and the inbox absorbs every redelivery, including the
//! one a relay crash produces. Fresh schema and topic per test; failures are injected by fault
//! plans, and every wait is bounded and waits for a condition.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use kafka_events::client::{consumer, create_topics, producer};
use kafka_events::consume::{DeadLetters, Handled, handle_next};
use kafka_events::envelope::{Event, Metadata, OrderPlaced, header};
use outbox::faults::{FaultPlan, FaultyPublisher};
use outbox::relay::{Publisher, Relay, RelayConfig, RelayError, RelayReport};
use outbox::{Counts, OutboxEvent, counts, enqueue, inbox, migrate};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::time::timeout;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// A bound on any single wait; a healthy broker answers in milliseconds.
const STEP: Duration = Duration::from_secs(30);
const PARTITIONS: i32 = 3;

struct Fixture {
    url: String,
    brokers: String,
    schema: String,
    topic: String,
    producer: FutureProducer,
    /// The writing service's connection.
    db: Client,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::new_v4().simple())
}

async fn connect(url: &str) -> Result<Client, String> {
    let connecting =
        timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls));
    let (client, connection) = match connecting.await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no answer within 10 s".into()),
    };
    tokio::spawn(connection);
    Ok(client)
}

/// A fresh schema (migrated) and topic, or `None` after `infra::unavailable` when a
/// broker is not there.
async fn fixture() -> Option<Fixture> {
    let url = infra::database_url();
    let db = match connect(&url).await {
        Ok(db) => db,
        Err(e) => {
            infra::unavailable("PostgreSQL", &url, e);
            return None;
        }
    };
    let brokers = infra::kafka_brokers();
    let topic = unique("outbox-orders").replace('_', "-");
    match timeout(STEP, create_topics(&brokers, &[(&topic, PARTITIONS)])).await {
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
    let schema = unique("outbox_t");
    migrate(&db, &schema).await.expect("migrate");
    let producer = producer(&brokers).expect("producer config");
    Some(Fixture { url, brokers, schema, topic, producer, db })
}

impl Fixture {
    async fn relay(&self) -> Relay {
        self.relay_with(self.producer.clone()).await
    }

    /// A relay that publishes through `publisher` (a fault plan's, say).
    async fn relay_with<P: Publisher>(&self, publisher: P) -> Relay<P> {
        Relay::connect(&self.url, &self.schema, publisher)
            .await
            .expect("relay connects")
    }

    /// A publisher whose first `n` publishes fail.
    fn failing_first(&self, n: u32) -> FaultyPublisher<FutureProducer> {
        let plan = FaultPlan { fail_first: n, ..FaultPlan::default() };
        FaultyPublisher::new(self.producer.clone(), plan)
    }

    /// An `OrderPlaced` event for `order_id`, with the envelope the Kafka chapter
    /// reads (so its consumer step, `handle_next`, decodes what the relay sends).
    fn order_placed(&self, order_id: &str, cents: u64) -> OutboxEvent {
        let metadata = Metadata::order_placed("corr-test", "2026-11-22T10:00:00Z");
        let order = OrderPlaced {
            order_id: order_id.into(),
            customer_id: "c-1".into(),
            total_cents: cents,
            currency: "EUR".into(),
        };
        let payload = serde_json::to_vec(&order).unwrap();
        OutboxEvent {
            id: metadata.event_id,
            aggregate_id: order_id.into(),
            topic: self.topic.clone(),
            event_type: metadata.event_type.clone(),
            payload,
            headers: vec![
                (header::SCHEMA_VERSION.into(), "2".into()),
                (header::OCCURRED_AT.into(), metadata.occurred_at.clone()),
                (header::CORRELATION_ID.into(), metadata.correlation_id.clone()),
            ],
        }
    }

    /// Commits one event in its own transaction (as a service would, with its
    /// state change).
    async fn commit(&mut self, event: &OutboxEvent) {
        let tx = self.db.transaction().await.unwrap();
        enqueue(&tx, &self.schema, event).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn counts(&self) -> Counts {
        counts(&self.db, &self.schema).await.unwrap()
    }

    async fn drop_schema(self) {
        let sql = format!("DROP SCHEMA {} CASCADE", self.schema);
        self.db.batch_execute(&sql).await.unwrap();
    }
}

/// A message as a consumer sees it.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    event_id: Uuid,
    event_type: String,
    headers: BTreeMap<String, String>,
    payload: Vec<u8>,
}

/// The key of the marker `read_all` appends to each partition.
const END: &str = "end-of-test";

/// Every message of the topic, checking that it holds exactly `n`. To know that it
/// has seen everything, it first appends an end marker to each partition, then
/// reads until it has met every marker. A marker needs nothing of the broker but
/// order within a partition; counting by high watermarks would also need them
/// reported right, which the project's earlier broker (Tansu 0.6) did not. Messages
/// of one key keep their order.
async fn read_all(f: &Fixture, n: usize) -> Vec<Seen> {
    for partition in 0..PARTITIONS {
        let marker =
            FutureRecord::<str, str>::to(&f.topic).key(END).partition(partition);
        f.producer.send(marker, STEP).await.map_err(|(e, _)| e).unwrap();
    }
    let consumer = subscribe(f, &unique("reader"));
    let (mut seen, mut markers) = (Vec::new(), 0);
    while markers < PARTITIONS {
        let message =
            timeout(STEP, consumer.recv()).await.expect("a message").unwrap();
        let key = String::from_utf8_lossy(message.key().unwrap()).into_owned();
        if key == END {
            markers += 1;
            continue;
        }
        let headers = message
            .headers()
            .map(|h| {
                use rdkafka::message::Headers;
                h.iter()
                    .map(|h| {
                        let value =
                            String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        seen.push(Seen {
            key,
            event_id: inbox::event_id(&message).expect("an event-id header"),
            event_type: outbox_header(&message, header::EVENT_TYPE),
            headers,
            payload: message.payload().unwrap_or_default().to_vec(),
        });
    }
    assert_eq!(seen.len(), n, "the topic holds exactly {n} messages: {seen:#?}");
    seen
}

fn outbox_header<M: Message>(message: &M, name: &'static str) -> String {
    kafka_events::envelope::header_str(message, name).unwrap_or_default().to_owned()
}

fn subscribe(f: &Fixture, group: &str) -> StreamConsumer {
    let consumer = consumer(&f.brokers, group).unwrap();
    consumer.subscribe(&[&f.topic]).unwrap();
    consumer
}

/// The event ids each key received, in the order a consumer saw them.
fn by_key(seen: &[Seen]) -> BTreeMap<String, Vec<Uuid>> {
    let mut keys: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for s in seen {
        keys.entry(s.key.clone()).or_default().push(s.event_id);
    }
    keys
}

fn published_ids(report: &RelayReport) -> Vec<Uuid> {
    report.published.iter().map(|p| p.id).collect()
}

#[tokio::test]
async fn an_event_commits_with_its_state_change_or_not_at_all() {
    let Some(mut f) = fixture().await else { return };
    let placed = f.order_placed("o-1", 2899);
    let abandoned = f.order_placed("o-2", 1500);
    let tx = f.db.transaction().await.unwrap();
    enqueue(&tx, &f.schema, &abandoned).await.unwrap();
    tx.rollback().await.unwrap(); // the state change failed: no event either
    f.commit(&placed).await;

    let report = f.relay().await.publish_batch().await.unwrap();
    assert_eq!(published_ids(&report), [placed.id], "only the committed event");
    let seen = read_all(&f, 1).await;
    assert_eq!(seen[0].event_id, placed.id);
    f.drop_schema().await;
}

#[tokio::test]
async fn the_relay_publishes_keyed_by_aggregate_with_id_and_type_and_marks_sent() {
    let Some(mut f) = fixture().await else { return };
    let events = [
        f.order_placed("o-1", 100),
        f.order_placed("o-2", 200),
        f.order_placed("o-1", 300),
    ];
    for event in &events {
        f.commit(event).await;
    }
    let mut relay = f.relay().await;
    let report = relay.publish_batch().await.unwrap();
    assert_eq!(report.published.len(), 3, "{report:?}");
    assert_eq!(f.counts().await, Counts { pending: 0, sent: 3, failed: 0 });
    let again = relay.publish_batch().await.unwrap();
    assert_eq!(again, RelayReport::default(), "a sent row is not sent again");

    let seen = read_all(&f, 3).await;
    let by_id: HashMap<Uuid, &Seen> = seen.iter().map(|s| (s.event_id, s)).collect();
    for event in &events {
        let s = by_id[&event.id];
        assert_eq!(s.key, event.aggregate_id, "key = aggregate id");
        assert_eq!(s.event_type, "OrderPlaced");
        assert_eq!(s.payload, event.payload);
        for (name, value) in &event.headers {
            assert_eq!(&s.headers[name], value, "header {name} travels");
        }
    }
    assert_eq!(
        by_key(&seen)["o-1"],
        [events[0].id, events[2].id],
        "o-1's events in the order they were committed"
    );
    f.drop_schema().await;
}

/// The server process behind the session named `application_name`, if any.
async fn backend_of(db: &Client, application_name: &str) -> Option<i32> {
    let sql = "SELECT pid FROM pg_stat_activity WHERE application_name = $1";
    db.query_opt(sql, &[&application_name]).await.unwrap().map(|row| row.get(0))
}

#[tokio::test]
async fn a_relay_replaces_a_connection_the_server_closed() {
    let Some(mut f) = fixture().await else { return };
    // The relay's session carries a name, so the test can find and end it.
    let name = unique("relay");
    let joiner = if f.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{joiner}application_name={name}", f.url);
    let mut relay =
        Relay::connect(&url, &f.schema, f.producer.clone()).await.unwrap();
    let first = f.order_placed("o-1", 100);
    f.commit(&first).await;
    assert_eq!(published_ids(&relay.publish_batch().await.unwrap()), [first.id]);

    // A restart, a failover or an administrator ends the relay's session; the
    // call returns once the server process is gone (5 s at most).
    let old = backend_of(&f.db, &name).await.expect("the relay's session");
    let sql = "SELECT pg_terminate_backend($1, 5000)";
    assert!(f.db.query_one(sql, &[&old]).await.unwrap().get::<_, bool>(0));
    let second = f.order_placed("o-2", 200);
    f.commit(&second).await;

    // A pass that meets the closed connection before the relay has seen it
    // close fails; the pass after it runs on a new connection, and so does a
    // pass that comes later.
    let report = match relay.publish_batch().await {
        Ok(report) => report,
        Err(RelayError::Postgres(error)) => {
            eprintln!("one pass failed on the closed connection: {error}");
            relay.publish_batch().await.unwrap()
        }
        Err(other) => panic!("not a PostgreSQL error: {other}"),
    };
    assert_eq!(published_ids(&report), [second.id]);
    let new = backend_of(&f.db, &name).await.expect("a new session");
    assert_ne!(new, old, "a new connection, not the closed one");
    f.drop_schema().await;
}

/// One pass of some relay: the ids it published.
trait Pass {
    async fn pass(&mut self) -> Vec<Uuid>;
}

impl Pass for Relay {
    async fn pass(&mut self) -> Vec<Uuid> {
        published_ids(&self.publish_batch().await.unwrap())
    }
}

// ANCHOR: watermark_relay
/// The relay many first versions are: remember the highest `seq` published, and
/// next time ask for the rows above it.
struct WatermarkRelay {
    db: Client,
    schema: String,
    producer: FutureProducer,
    high_water_mark: i64,
}

impl Pass for WatermarkRelay {
    async fn pass(&mut self) -> Vec<Uuid> {
        let sql = format!(
            "SELECT seq, id, aggregate_id, topic, payload FROM {}.outbox
             WHERE seq > $1 ORDER BY seq",
            self.schema
        );
        let rows = self.db.query(&sql, &[&self.high_water_mark]).await.unwrap();
        let mut published = Vec::new();
        for row in rows {
            let (seq, id, key, topic, payload): (
                i64,
                Uuid,
                String,
                String,
                Vec<u8>,
            ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            self.producer.send(record, STEP).await.map_err(|(e, _)| e).unwrap();
            self.high_water_mark = seq;
            published.push(id);
        }
        published
    }
}
// ANCHOR_END: watermark_relay

// ANCHOR: late_commit
/// Order o-1's transaction takes `seq` 1 first but commits last; o-2's takes `seq`
/// 2 and commits, and a relay pass runs in between. Every committed row must be
/// published.
async fn late_commit(f: &mut Fixture, relay: &mut impl Pass) -> Result<(), String> {
    let (slow, fast) = (f.order_placed("o-1", 100), f.order_placed("o-2", 200));
    let mut slow_db = connect(&f.url).await.unwrap();
    let slow_tx = slow_db.transaction().await.unwrap();
    enqueue(&slow_tx, &f.schema, &slow).await.unwrap(); // seq 1, not committed
    f.commit(&fast).await; // seq 2, committed

    let mut published = relay.pass().await; // sees seq 2 only
    slow_tx.commit().await.unwrap(); // seq 1 becomes visible, below the mark
    published.extend(relay.pass().await);

    let committed = [slow.id, fast.id];
    match committed.iter().filter(|id| !published.contains(id)).count() {
        0 => Ok(()),
        n => Err(format!("{n} committed row(s) never published")),
    }
}

#[tokio::test]
async fn a_row_that_commits_late_is_still_published() {
    let Some(mut f) = fixture().await else { return };
    let mut relay = f.relay().await;
    assert_eq!(late_commit(&mut f, &mut relay).await, Ok(()));
    read_all(&f, 2).await;
    f.drop_schema().await;
}

#[tokio::test]
async fn a_high_water_mark_relay_loses_a_row_that_commits_late() {
    let Some(mut f) = fixture().await else { return };
    let mut naive = WatermarkRelay {
        db: connect(&f.url).await.unwrap(),
        schema: f.schema.clone(),
        producer: f.producer.clone(),
        high_water_mark: 0,
    };
    let lost = late_commit(&mut f, &mut naive).await;
    assert_eq!(lost, Err("1 committed row(s) never published".into()));
    f.drop_schema().await;
}
// ANCHOR_END: late_commit

/// Waits, at most `STEP`, until `check` holds.
async fn wait_until<Fut: Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> Fut,
) {
    let waiting = async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    timeout(STEP, waiting).await.unwrap_or_else(|_| panic!("timed out: {what}"));
}

// ANCHOR: same_aggregate
#[tokio::test]
async fn writers_of_one_aggregate_commit_in_seq_order() {
    let Some(f) = fixture().await else { return };
    let (first, second) = (f.order_placed("o-1", 100), f.order_placed("o-1", 200));
    let mut first_db = connect(&f.url).await.unwrap();
    let first_tx = first_db.transaction().await.unwrap();
    enqueue(&first_tx, &f.schema, &first).await.unwrap(); // not committed yet

    // A second writer of o-1, on its own connection.
    let mut second_db = connect(&f.url).await.unwrap();
    let pid: i32 =
        second_db.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let (schema, event) = (f.schema.clone(), second.clone());
    let writer = tokio::spawn(async move {
        let tx = second_db.transaction().await.unwrap();
        enqueue(&tx, &schema, &event).await.unwrap();
        tx.commit().await.unwrap();
    });
    // Either it waits for the first writer's aggregate lock, or (without that
    // lock) it commits ahead of the first writer.
    let waiting = "SELECT count(*) FROM pg_stat_activity
                   WHERE pid = $1 AND wait_event_type = 'Lock'";
    wait_until("the second writer waits or commits", || async {
        let n: i64 = f.db.query_one(waiting, &[&pid]).await.unwrap().get(0);
        n > 0 || writer.is_finished()
    })
    .await;
    let mut relay = f.relay().await;
    let early = relay.publish_batch().await.unwrap();
    first_tx.commit().await.unwrap();
    timeout(STEP, writer).await.unwrap().unwrap();
    let late = relay.publish_batch().await.unwrap();

    assert!(
        early.published.is_empty(),
        "nothing of o-1 may go before its first event"
    );
    assert_eq!(published_ids(&late), [first.id, second.id]);
    assert_eq!(by_key(&read_all(&f, 2).await)["o-1"], [first.id, second.id]);
    f.drop_schema().await;
}
// ANCHOR_END: same_aggregate

// ANCHOR: two_relays
#[tokio::test]
async fn two_relays_never_send_the_same_row_nor_overtake_each_other() {
    let Some(mut f) = fixture().await else { return };
    let events = [
        f.order_placed("o-1", 1), // seq 1
        f.order_placed("o-2", 1), // seq 2
        f.order_placed("o-1", 2), // seq 3
        f.order_placed("o-3", 1), // seq 4
    ];
    for event in &events {
        f.commit(event).await;
    }
    let small = RelayConfig { batch_size: 2, ..RelayConfig::default() };
    let mut first = f.relay().await.with_config(small);
    let mut second = f.relay().await;

    // The first relay has claimed seq 1 and 2 and is still publishing them.
    let batch = first.claim().await.unwrap();
    assert_eq!(batch.ids(), [events[0].id, events[1].id]);
    // Meanwhile the second relay runs a whole pass. It must not wait for the
    // first relay's locks, nor send its rows, nor send o-1's second event ahead
    // of o-1's first.
    let meanwhile = timeout(STEP, second.publish_batch()).await;
    let meanwhile = meanwhile.expect("the second relay is not blocked").unwrap();
    assert_eq!(published_ids(&meanwhile), [events[3].id]);
    assert_eq!(meanwhile.held_back, 1, "o-1's second event waits for its first");

    let firsts = batch.finish().await.unwrap();
    assert_eq!(published_ids(&firsts), [events[0].id, events[1].id]);
    let rest = second.publish_batch().await.unwrap();
    assert_eq!(published_ids(&rest), [events[2].id]);

    let seen = read_all(&f, 4).await; // exactly four messages: no duplicate
    assert_eq!(by_key(&seen)["o-1"], [events[0].id, events[2].id]);
    f.drop_schema().await;
}
// ANCHOR_END: two_relays

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_running_relays_share_the_work_without_duplicates_or_reordering() {
    let Some(mut f) = fixture().await else { return };
    let mut expected: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for step in 0..200u64 {
        let order = format!("o-{}", step % 10);
        let event = f.order_placed(&order, step);
        f.commit(&event).await;
        expected.entry(order).or_default().push(event.id);
    }
    let config = RelayConfig { batch_size: 8, ..RelayConfig::default() };
    let stop = tokio::sync::watch::channel(false);
    let mut relays = Vec::new();
    for _ in 0..2 {
        let relay = f.relay().await.with_config(config.clone());
        let mut stopped = stop.1.clone();
        let until = async move {
            stopped.wait_for(|s| *s).await.expect("the sender outlives the relays");
        };
        relays.push(tokio::spawn(relay.run(until)));
    }
    wait_until("every row is sent", || async { f.counts().await.sent == 200 }).await;
    stop.0.send(true).unwrap();
    let mut shares = Vec::new();
    for relay in relays {
        let stats = timeout(STEP, relay).await.unwrap().unwrap().unwrap();
        assert!(stats.failed.is_empty());
        shares.push(stats.published);
    }
    println!("rows published by each relay: {shares:?}");
    assert_eq!(shares.iter().sum::<u64>(), 200, "each row published once");

    let seen = read_all(&f, 200).await;
    let unique: HashSet<Uuid> = seen.iter().map(|s| s.event_id).collect();
    assert_eq!(unique.len(), 200, "no event twice");
    assert_eq!(by_key(&seen), expected, "every order's events in commit order");
    f.drop_schema().await;
}

// ANCHOR: retried_in_order
#[tokio::test]
async fn a_failed_publish_is_retried_and_its_aggregate_keeps_its_order() {
    let Some(mut f) = fixture().await else { return };
    let events = [
        f.order_placed("o-1", 1),
        f.order_placed("o-1", 2),
        f.order_placed("o-2", 1),
    ];
    for event in &events {
        f.commit(event).await;
    }
    let mut relay = f.relay_with(f.failing_first(1)).await;

    let first = relay.publish_batch().await.unwrap();
    assert_eq!(first.retrying.len(), 1, "o-1's first event failed once: {first:?}");
    assert_eq!(first.retrying[0].id, events[0].id);
    assert_eq!(first.held_back, 1, "o-1's second event must not overtake it");
    assert_eq!(published_ids(&first), [events[2].id], "o-2 is not held up");

    let second = relay.publish_batch().await.unwrap();
    assert_eq!(published_ids(&second), [events[0].id, events[1].id]);
    assert_eq!(f.counts().await, Counts { pending: 0, sent: 3, failed: 0 });
    assert_eq!(by_key(&read_all(&f, 3).await)["o-1"], [events[0].id, events[1].id]);
    f.drop_schema().await;
}
// ANCHOR_END: retried_in_order

// ANCHOR: marked_failed
#[tokio::test]
async fn a_row_that_cannot_be_published_is_marked_failed_and_reported() {
    let Some(mut f) = fixture().await else { return };
    // Over the producer's message.max.bytes (1 MB by default): refused every time.
    let mut too_big = f.order_placed("o-1", 1);
    too_big.payload = vec![b'x'; 2_000_000];
    let behind = f.order_placed("o-1", 2);
    let other = f.order_placed("o-2", 1);
    for event in [&too_big, &behind, &other] {
        f.commit(event).await;
    }
    let config = RelayConfig { max_attempts: 3, ..RelayConfig::default() };
    let mut relay = f.relay().await.with_config(config);

    for attempt in 1..=2 {
        let report = relay.publish_batch().await.unwrap();
        assert_eq!(report.retrying.len(), 1, "{report:?}");
        assert_eq!(report.retrying[0].attempts, attempt);
    }
    let last = relay.publish_batch().await.unwrap();
    assert!(last.retrying.is_empty());
    assert_eq!(last.failed.len(), 1, "reported as failed: {last:?}");
    let failed = &last.failed[0];
    assert_eq!((failed.id, failed.attempts), (too_big.id, 3));
    assert!(failed.error.contains("MessageSizeTooLarge"), "{}", failed.error);

    // Still in the table with its reason; o-1's next event waits behind it.
    let after = relay.publish_batch().await.unwrap();
    assert_eq!((after.published.len(), after.held_back), (0, 1), "{after:?}");
    assert!(
        after.failed.is_empty() && after.retrying.is_empty(),
        "not retried alone"
    );
    assert_eq!(f.counts().await, Counts { pending: 1, sent: 1, failed: 1 });
    let sql = format!("SELECT last_error FROM {}.outbox WHERE id = $1", f.schema);
    let reason: String = f.db.query_one(&sql, &[&too_big.id]).await.unwrap().get(0);
    assert_eq!(reason, failed.error);
    assert_eq!(read_all(&f, 1).await[0].event_id, other.id);
    f.drop_schema().await;
}
// ANCHOR_END: marked_failed

/// After a human fixed the cause, `retry_failed` gives a failed row a fresh attempt
/// budget and forgets its error, so a pending row never shows a stale one.
#[tokio::test]
async fn retry_failed_requeues_a_failed_row_without_its_old_error() {
    let Some(mut f) = fixture().await else { return };
    let event = f.order_placed("o-1", 1);
    f.commit(&event).await;
    let config = RelayConfig { max_attempts: 1, ..RelayConfig::default() };
    let mut relay = f.relay_with(f.failing_first(1)).await.with_config(config);
    let failed = relay.publish_batch().await.unwrap();
    assert_eq!(failed.failed.len(), 1, "{failed:?}");
    assert_eq!(f.counts().await, Counts { pending: 0, sent: 0, failed: 1 });

    let requeued = outbox::retry_failed(&f.db, &f.schema).await.unwrap();
    assert_eq!(requeued, 1);
    let sql = format!(
        "SELECT status, attempts, last_error FROM {}.outbox WHERE id = $1",
        f.schema
    );
    let row = f.db.query_one(&sql, &[&event.id]).await.unwrap();
    let status: &str = row.get(0);
    let attempts: i32 = row.get(1);
    let last_error: Option<String> = row.get(2);
    assert_eq!((status, attempts, last_error), ("pending", 0, None));

    let published = relay.publish_batch().await.unwrap();
    assert_eq!(published.published.len(), 1, "{published:?}");
    assert_eq!(f.counts().await, Counts { pending: 0, sent: 1, failed: 0 });
    f.drop_schema().await;
}

/// The effect a consumer applies once per event: charging an order. Its table
/// lives next to the inbox, in the consumer's schema, so both commit together.
async fn charge_once(db: &mut Client, schema: &str, event: &Event) -> bool {
    let tx = db.transaction().await.unwrap();
    let first =
        inbox::first_delivery(&tx, schema, "billing", event.metadata.event_id)
            .await
            .unwrap();
    if first {
        let charge = format!("INSERT INTO {schema}.charges VALUES ($1, $2)");
        let cents = event.order.total_cents as i64;
        tx.execute(&charge, &[&event.order.order_id, &cents]).await.unwrap();
    }
    tx.commit().await.unwrap();
    first
}

async fn charges(db: &Client, schema: &str) -> BTreeMap<String, Vec<i64>> {
    let sql = format!("SELECT order_id, cents FROM {schema}.charges ORDER BY cents");
    let mut charges: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in db.query(&sql, &[]).await.unwrap() {
        charges.entry(row.get(0)).or_default().push(row.get(1));
    }
    charges
}

/// The billing consumer's database: an inbox and a charges table.
async fn billing(f: &Fixture) -> (Client, String) {
    let (db, schema) = (connect(&f.url).await.unwrap(), unique("billing_t"));
    migrate(&db, &schema).await.unwrap();
    let sql = format!("CREATE TABLE {schema}.charges (order_id TEXT, cents BIGINT)");
    db.batch_execute(&sql).await.unwrap();
    (db, schema)
}

#[tokio::test]
async fn the_inbox_absorbs_a_redelivery() {
    let Some(mut f) = fixture().await else { return };
    let event = f.order_placed("o-1", 2899);
    f.commit(&event).await;
    f.relay().await.publish_batch().await.unwrap();
    let (mut db, schema) = billing(&f).await;
    let group = unique("billing");
    let dead_letters =
        DeadLetters { producer: f.producer.clone(), topic: unique("dlq") };

    // The consumer charges, then dies before its offset is stored.
    let first = subscribe(&f, &group);
    let message = timeout(STEP, first.recv()).await.unwrap().unwrap();
    let decoded = kafka_events::envelope::decode(&message).unwrap();
    assert!(
        charge_once(&mut db, &schema, &decoded).await,
        "first delivery: charged"
    );
    drop(message);
    drop(first);

    // Its replacement gets the same event again: the inbox knows it.
    let second = subscribe(&f, &group);
    let mut again = true;
    let step = handle_next(&second, &dead_letters, |event| async {
        again = charge_once(&mut db, &schema, &event).await;
        Ok::<_, String>(event)
    });
    match timeout(STEP, step).await.unwrap().unwrap() {
        Handled::Processed(redelivered) => {
            assert_eq!(
                redelivered.metadata.event_id, event.id,
                "the same event again"
            )
        }
        Handled::DeadLettered(e) => panic!("dead-lettered: {e}"),
    }
    assert!(!again, "the redelivery must not charge again");
    assert_eq!(
        charges(&db, &schema).await,
        BTreeMap::from([("o-1".into(), vec![2899])])
    );
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    f.drop_schema().await;
}

// ANCHOR: crash_relay
#[tokio::test]
async fn a_relay_crash_between_publish_and_mark_is_absorbed_by_the_inbox() {
    let Some(mut f) = fixture().await else { return };
    let events = [
        f.order_placed("o-1", 100),
        f.order_placed("o-2", 200),
        f.order_placed("o-3", 300),
    ];
    for event in &events {
        f.commit(event).await;
    }
    // The relay dies after two acknowledged sends, before marking anything sent:
    // its process is dropped mid-pass, and its transaction rolls back.
    let plan = FaultPlan { die_after: Some(2), ..FaultPlan::default() };
    let publisher = FaultyPublisher::new(f.producer.clone(), plan);
    let mut relay = f.relay_with(publisher.clone()).await;
    tokio::select! {
        report = relay.publish_batch() => panic!("it was to die: {report:?}"),
        published = publisher.died() => assert_eq!(published, 2),
    }
    drop(relay);
    assert_eq!(f.counts().await, Counts { pending: 3, sent: 0, failed: 0 });

    // A new relay starts over from what is pending: two events go out twice.
    let restarted = f.relay().await.publish_batch().await.unwrap();
    assert_eq!(restarted.published.len(), 3);
    assert_eq!(f.counts().await, Counts { pending: 0, sent: 3, failed: 0 });

    // Billing consumes all five messages; the inbox turns them into three charges.
    let (mut db, schema) = billing(&f).await;
    let consumer = subscribe(&f, &unique("billing"));
    let dead_letters =
        DeadLetters { producer: f.producer.clone(), topic: unique("dlq") };
    let mut applied = 0;
    for _ in 0..5 {
        let step = handle_next(&consumer, &dead_letters, |event| async {
            applied += usize::from(charge_once(&mut db, &schema, &event).await);
            Ok::<_, String>(event)
        });
        let handled = timeout(STEP, step).await.unwrap().unwrap();
        assert!(matches!(handled, Handled::Processed(_)), "{handled:?}");
    }
    assert_eq!(applied, 3, "five deliveries, three effects");
    let expected = BTreeMap::from([
        ("o-1".into(), vec![100]),
        ("o-2".into(), vec![200]),
        ("o-3".into(), vec![300]),
    ]);
    assert_eq!(charges(&db, &schema).await, expected, "each order charged once");
    assert_eq!(read_all(&f, 5).await.len(), 5, "two of them were duplicates");
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    f.drop_schema().await;
}
// ANCHOR_END: crash_relay
