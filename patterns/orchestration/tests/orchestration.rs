//! The orchestrator's promises against PostgreSQL (`DATABASE_URL`) and RabbitMQ (`AMQP_ADDR`):
//! recovery from a crash at each of the 2N step boundaries on both paths, a participant that is
//! down for a while, a timeout whose step succeeded, bad replies dead-lettered, two
//! orchestrators that never drive one saga at once, and participants whose database connections
//! break.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use orchestration::checkout::{Command, apply_once};
use orchestration::faults::Crash;
use orchestration::log::{LogError, PgLog, SagaLog};
use orchestration::orchestrator::{RunError, saga_id};
use orchestration::participant::{PARTICIPANTS, Quirks};
use orchestration::saga::{Input, Kind, Outcome, Record, Reply, Terminal};
use shop_domain::Service;
use shop_domain::inventory::Hold;
use shop_domain::orders::{Order, OrderStatus};
use shop_domain::payments::{Payment, PaymentStatus};
use shop_domain::shipping::{Shipment, ShipmentStatus};
use support::{WAIT, finished, order, shop, until};

/// Steps whose action the log says is done, and the steps whose compensation
/// the log says is done, in the order they were done.
fn done_and_undone(records: &[Record]) -> (Vec<usize>, Vec<usize>) {
    let (mut done, mut undone) = (vec![], vec![]);
    for record in records {
        if let Record::Outcome { step, kind, outcome: Outcome::Done { .. } } = record
        {
            match kind {
                Kind::Action => done.push(*step),
                Kind::Compensation => undone.push(*step),
            }
        }
    }
    (done, undone)
}

/// Runs one checkout with an orchestrator that dies at `crash`, starts a new
/// one under the same name, and checks where everything ends up.
async fn crash_case(crash: Crash, fail_last: bool) {
    let Some(mut shop) = shop().await else { return };
    shop.start_all();
    let order = order("o-1", "c-rich");
    if fail_last {
        // The customer cancelled while the checkout ran: confirm is refused.
        shop.customer_cancels(&order).await;
    }
    let first = shop.crashing_orchestrator(shop.config("o"), crash).await;
    let saga = first.checkout(order.clone()).await.unwrap();
    let died = tokio::time::timeout(WAIT, first.task).await.unwrap().unwrap();
    let planned =
        matches!(died, Err(RunError::Log(LogError::Crashed(c))) if c == crash);
    assert!(planned, "{died:?}");

    let mut second = shop.orchestrator(shop.config("o")).await;
    let terminal = finished(&mut second, &saga).await;
    let records = shop.records(&saga).await;
    let (done, undone) = done_and_undone(&records);
    let applied = shop.applied().await;
    let applied: Vec<&str> =
        applied.iter().map(|id| &id[saga.len() + 1..]).collect();
    let stock: u32 = shop.record(Service::Inventory, "stock:kettle").await.unwrap();
    let balance: u64 =
        shop.record(Service::Payments, "balance:c-rich").await.unwrap();
    let shipment: Shipment =
        shop.record(Service::Shipping, "shipment:o-1").await.unwrap();
    let placed: Order = shop.record(Service::Orders, "order:o-1").await.unwrap();
    if fail_last {
        assert_eq!(
            terminal,
            Terminal::Compensated { reason: "customer cancelled".into() }
        );
        assert_eq!(done, [0, 1, 2]);
        assert_eq!(undone, [2, 1, 0], "strict reverse of the completed steps");
        let expected =
            ["0/do", "1/do", "2/do", "3/do", "2/undo", "1/undo", "0/undo"];
        assert_eq!(applied, expected, "each command applied once, in this order");
        assert_eq!((stock, balance), (10, 100_000), "all given back, once");
        assert!(matches!(shipment.status, ShipmentStatus::Cancelled { .. }));
        assert!(matches!(placed.status, OrderStatus::Cancelled { .. }));
    } else {
        assert_eq!(terminal, Terminal::Completed);
        assert_eq!((done, undone), (vec![0, 1, 2, 3], vec![]));
        assert_eq!(applied, ["0/do", "1/do", "2/do", "3/do"], "each once");
        assert_eq!((stock, balance), (8, 100_000 - 2900), "taken once");
        // The order carries the tracking number shipping reported.
        let ShipmentStatus::Scheduled { tracking } = &shipment.status else {
            panic!("not scheduled: {shipment:?}");
        };
        let confirmed = OrderStatus::Confirmed { tracking: tracking.clone() };
        assert_eq!(placed.status, confirmed);
    }
    second.stop().await.unwrap();
    shop.drop().await;
}

// ANCHOR: crash_matrix
/// One named test per boundary, step and path: 4 steps x 2 boundaries x 2 paths.
macro_rules! crash_matrix {
    ($($name:ident: $crash:expr, $fail_last:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crash_case($crash, $fail_last).await;
        }
    )*};
}

use Crash::{AfterIntent, BeforeOutcome};
crash_matrix! {
    crash_after_intent_reserve_then_complete: AfterIntent(0), false;
    crash_before_outcome_reserve_then_complete: BeforeOutcome(0), false;
    crash_after_intent_authorize_then_complete: AfterIntent(1), false;
    crash_before_outcome_authorize_then_complete: BeforeOutcome(1), false;
    crash_after_intent_schedule_then_complete: AfterIntent(2), false;
    crash_before_outcome_schedule_then_complete: BeforeOutcome(2), false;
    crash_after_intent_confirm_then_complete: AfterIntent(3), false;
    crash_before_outcome_confirm_then_complete: BeforeOutcome(3), false;
    crash_after_intent_reserve_then_compensate: AfterIntent(0), true;
    crash_before_outcome_reserve_then_compensate: BeforeOutcome(0), true;
    crash_after_intent_authorize_then_compensate: AfterIntent(1), true;
    crash_before_outcome_authorize_then_compensate: BeforeOutcome(1), true;
    crash_after_intent_schedule_then_compensate: AfterIntent(2), true;
    crash_before_outcome_schedule_then_compensate: BeforeOutcome(2), true;
    crash_after_intent_confirm_then_compensate: AfterIntent(3), true;
    crash_before_outcome_confirm_then_compensate: BeforeOutcome(3), true;
}
// ANCHOR_END: crash_matrix

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_branch_ends_in_the_right_state() {
    let Some(mut shop) = shop().await else { return };
    shop.start_all();
    let mut o = shop.orchestrator(shop.config("o")).await;
    let declined = order("o-poor", "c-poor");
    let mut far = order("o-far", "c-rich");
    far.ship_to = "AQ".into();
    let mut greedy = order("o-greedy", "c-rich");
    greedy.lines[0].quantity = 50;
    for order in [&declined, &far, &greedy] {
        o.checkout(order.clone()).await.unwrap();
    }
    let mut ends = vec![];
    for _ in 0..3 {
        ends.push(
            tokio::time::timeout(WAIT, o.next_finished()).await.unwrap().unwrap(),
        );
    }
    ends.sort_by(|a, b| a.0.cmp(&b.0));
    let reason = |end: &(String, Terminal)| match &end.1 {
        Terminal::Compensated { reason } => reason.clone(),
        Terminal::Completed => "completed".into(),
        Terminal::Stuck { reason, .. } => format!("stuck: {reason}"),
    };
    assert_eq!(reason(&ends[0]), "no carrier delivers to AQ");
    assert!(reason(&ends[1]).starts_with("kettle: 50 wanted"), "{ends:?}");
    assert!(reason(&ends[2]).starts_with("insufficient funds"), "{ends:?}");
    // Declined at the pivot: only the reservation was undone.
    let (done, undone) = done_and_undone(&shop.records(&saga_id(&declined)).await);
    assert_eq!((done, undone), (vec![0], vec![0]));
    // Cannot ship: payment refunded, then stock released.
    let (done, undone) = done_and_undone(&shop.records(&saga_id(&far)).await);
    assert_eq!((done, undone), (vec![0, 1], vec![1, 0]));
    let payment: Payment =
        shop.record(Service::Payments, "payment:o-far").await.unwrap();
    assert!(matches!(payment.status, PaymentStatus::Refunded { .. }));
    let stock: u32 = shop.record(Service::Inventory, "stock:kettle").await.unwrap();
    assert_eq!(stock, 10, "every reservation given back");
    let hold: Hold = shop.record(Service::Inventory, "hold:o-greedy").await.unwrap();
    assert!(matches!(hold, Hold::Rejected { .. }), "nothing to undo");
    o.stop().await.unwrap();
    shop.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_down_for_a_while_delays_the_saga_without_duplicates() {
    let Some(mut shop) = shop().await else { return };
    for participant in [Service::Inventory, Service::Payments, Service::Orders] {
        shop.start(participant, Quirks::default());
    }
    // A timeout up to the pivot undoes the saga, so it must outlast the replies of
    // inventory and payments on a busy machine; after the pivot it paces the resends.
    let mut config = shop.config("o");
    config.timeout = Duration::from_secs(1);
    let mut o = shop.orchestrator(config).await;
    let saga = o.checkout(order("o-1", "c-rich")).await.unwrap();
    // Shipping is after the pivot: its command is sent again and again.
    until("a third attempt at scheduling", || async {
        let records = shop.records(&saga).await;
        let third = Record::Intent { step: 2, kind: Kind::Action, attempt: 3 };
        records.contains(&third).then_some(())
    })
    .await;
    shop.start(Service::Shipping, Quirks::default());
    assert_eq!(finished(&mut o, &saga).await, Terminal::Completed);
    let applied = shop.applied().await;
    let shipping = applied.iter().filter(|id| id.ends_with("/2/do")).count();
    assert_eq!(shipping, 1, "three copies queued, one applied: {applied:?}");
    let balance: u64 =
        shop.record(Service::Payments, "balance:c-rich").await.unwrap();
    assert_eq!(balance, 100_000 - 2900);
    o.stop().await.unwrap();
    shop.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_whose_step_succeeded_is_retried_and_applied_once() {
    let Some(mut shop) = shop().await else { return };
    for participant in [Service::Inventory, Service::Payments, Service::Orders] {
        shop.start(participant, Quirks::default());
    }
    let slow = Quirks { slow_first_reply: Some(Duration::from_millis(2500)) };
    shop.start(Service::Shipping, slow);
    // Long enough for the steps before the pivot (a timeout there undoes the
    // saga), short enough that shipping's slow first reply misses it.
    let mut config = shop.config("o");
    config.timeout = Duration::from_secs(1);
    let mut o = shop.orchestrator(config).await;
    let saga = o.checkout(order("o-1", "c-rich")).await.unwrap();
    assert_eq!(finished(&mut o, &saga).await, Terminal::Completed);
    let records = shop.records(&saga).await;
    let retry = Record::Intent { step: 2, kind: Kind::Action, attempt: 2 };
    assert!(records.contains(&retry), "the timeout led to a retry: {records:?}");
    let applied = shop.applied().await;
    assert_eq!(applied.iter().filter(|id| id.ends_with("/2/do")).count(), 1);
    let shipment: Shipment =
        shop.record(Service::Shipping, "shipment:o-1").await.unwrap();
    assert!(matches!(shipment.status, ShipmentStatus::Scheduled { .. }));
    o.stop().await.unwrap();
    shop.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_replies_are_dead_lettered_and_the_orchestrator_keeps_going() {
    let Some(mut shop) = shop().await else { return };
    shop.start_all();
    let mut o = shop.orchestrator(shop.config("o")).await;
    let conn = Connection::connect(&shop.amqp, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let good = serde_json::to_vec(&Reply::Done { detail: "?".into() }).unwrap();
    let bad: [(&str, &[u8]); 2] =
        [("checkout-o-1/0/do", b"{not json"), ("checkout-nobody/0/do", &good)];
    for (id, body) in bad {
        let properties = BasicProperties::default().with_correlation_id(id.into());
        let queue = shop.names.replies("o");
        let options = BasicPublishOptions::default();
        let publish = channel.basic_publish(
            "".into(),
            queue.as_str().into(),
            options,
            body,
            properties,
        );
        publish.await.unwrap().await.unwrap();
    }
    let saga = o.checkout(order("o-1", "c-rich")).await.unwrap();
    assert_eq!(finished(&mut o, &saga).await, Terminal::Completed);
    let dead = shop.dead_letters(2).await;
    let ids: HashSet<&str> = dead.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, HashSet::from(["checkout-o-1/0/do", "checkout-nobody/0/do"]));
    conn.close(200, "".into()).await.unwrap();
    o.stop().await.unwrap();
    shop.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_never_drive_the_same_saga() {
    let Some(shop) = shop().await else { return };
    let schema = shop.names.log_schema();
    let lease = Duration::from_secs(30);
    let a = PgLog::connect(&shop.url, &schema, lease).await.unwrap();
    let b = PgLog::connect(&shop.url, &schema, lease).await.unwrap();
    let ids: Vec<String> = (0..40).map(|i| format!("s-{i}")).collect();
    for id in &ids {
        assert!(a.create(id, &order(id, "c-rich"), "dead").await.unwrap());
    }
    // A live lease keeps everyone else out.
    assert!(b.claim("b", lease).await.unwrap().is_empty());
    for id in &ids {
        a.expire_lease(id).await.unwrap();
    }
    // Both race for the expired sagas: each is taken by exactly one.
    let (by_a, by_b) = tokio::join!(a.claim("a", lease), b.claim("b", lease));
    let (by_a, by_b) = (by_a.unwrap(), by_b.unwrap());
    let (set_a, set_b): (HashSet<_>, HashSet<_>) =
        (by_a.iter().collect(), by_b.iter().collect());
    assert!(set_a.is_disjoint(&set_b), "{by_a:?} / {by_b:?}");
    assert_eq!(set_a.len() + set_b.len(), ids.len());
    // The fence: once b holds a saga, a cannot write to it, nor can the old owner.
    let saga = orchestration::checkout::checkout();
    let taken = &by_b.first().or(by_a.first()).unwrap().to_string();
    let holder = if set_b.contains(taken) { "b" } else { "a" };
    for loser in ["dead", if holder == "a" { "b" } else { "a" }] {
        let refused = a.apply(taken, loser, &saga, &Input::Start).await;
        assert!(matches!(refused, Err(LogError::NotOwner { .. })), "{refused:?}");
    }
    let applied = a.apply(taken, holder, &saga, &Input::Start).await.unwrap();
    assert_eq!(applied.appended.len(), 1);
    assert_eq!(a.writers(taken).await.unwrap(), [holder]);
    shop.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orchestrator_takes_over_an_expired_lease_without_interleaving() {
    let Some(mut shop) = shop().await else { return };
    shop.start_all();
    let a = shop.crashing_orchestrator(shop.config("a"), AfterIntent(1)).await;
    let saga = a.checkout(order("o-1", "c-rich")).await.unwrap();
    let died = tokio::time::timeout(WAIT, a.task).await.unwrap().unwrap();
    assert!(matches!(died, Err(RunError::Log(LogError::Crashed(_)))), "{died:?}");
    let mut config = shop.config("b");
    config.lease = Duration::from_millis(300);
    let mut b = shop.orchestrator(config).await;
    // a's lease (30 s) still runs: b takes the saga only once it has run out.
    shop.log.expire_lease(&saga).await.unwrap();
    assert_eq!(finished(&mut b, &saga).await, Terminal::Completed);
    let writers = shop.log.writers(&saga).await.unwrap();
    let first_b = writers.iter().position(|w| w == "b").unwrap();
    assert!(writers[..first_b].iter().all(|w| w == "a"), "{writers:?}");
    assert!(writers[first_b..].iter().all(|w| w == "b"), "{writers:?}");
    assert_eq!(shop.applied().await.len(), 4, "each step applied once");
    b.stop().await.unwrap();
    shop.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_error_is_an_error_not_nothing() {
    let Some(shop) = shop().await else { return };
    let db = shop.db().await;
    // A schema that does not exist: the query fails, and the caller hears it.
    let missing = orchestration::participant::Names::new("nowhere");
    let read = orchestration::participant::record::<u32>(
        &db,
        &missing,
        Service::Inventory,
        "stock:kettle",
    )
    .await;
    assert!(read.is_err(), "{read:?}");
    let applied =
        orchestration::participant::applied(&db, &missing, Service::Inventory).await;
    assert!(applied.is_err(), "{applied:?}");
    // Where the table is there, an absent record is `None`, not an error.
    let none = orchestration::participant::record::<u32>(
        &db,
        &shop.names,
        Service::Inventory,
        "stock:teapot",
    )
    .await;
    assert!(matches!(none, Ok(None)), "{none:?}");
    shop.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_replaces_a_broken_connection_and_closes_it_when_stopped() {
    let Some(mut shop) = shop().await else { return };
    shop.start_all();
    let mut o = shop.orchestrator(shop.config("o")).await;
    let first = o.checkout(order("o-1", "c-rich")).await.unwrap();
    assert_eq!(finished(&mut o, &first).await, Terminal::Completed);
    let names: Vec<String> =
        PARTICIPANTS.iter().map(|p| shop.connection_name(*p)).collect();
    // The server ends every participant's connection, as its restart would.
    let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE application_name = ANY($1)";
    let ended: i64 = shop.db().await.query_one(sql, &[&names]).await.unwrap().get(0);
    assert_eq!(ended, 4, "one pooled connection per participant");
    let second = o.checkout(order("o-2", "c-rich")).await.unwrap();
    assert_eq!(finished(&mut o, &second).await, Terminal::Completed);
    assert_eq!(shop.applied().await.len(), 8, "each command applied once");
    o.stop().await.unwrap();
    // A participant's pool is its task's: stopped, it closes its connection.
    for (name, service) in shop.services.drain(..) {
        service.stop().await.unwrap_or_else(|e| panic!("{name} stopped: {e}"));
    }
    until("the stopped participants' connections to close", || async {
        let sql = "SELECT count(*) FROM pg_stat_activity
                   WHERE application_name = ANY($1)";
        let open: i64 =
            shop.db().await.query_one(sql, &[&names]).await.unwrap().get(0);
        (open == 0).then_some(())
    })
    .await;
    shop.drop().await;
}

/// `apply_once` prepares its statements on the connection it is given and keeps
/// them: the first command leaves prepared statements behind (a statement sent
/// as text is closed after its one use), and a second command on the same
/// connection prepares nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_prepares_each_statement_once_per_connection() {
    let Some(shop) = shop().await else { return };
    let mut db = shop.db().await;
    let schema = shop.names.schema(Service::Inventory);
    let count = "SELECT count(*) FROM pg_prepared_statements";
    let reserve = |order_id: &str| {
        let saga = saga_id(&order(order_id, "c-rich"));
        Command {
            command_id: format!("{saga}/0/do"),
            saga_id: saga,
            step: 0,
            kind: Kind::Action,
            order: order(order_id, "c-rich"),
            details: Default::default(),
        }
    };
    let before: i64 = db.query_one(count, &[]).await.unwrap().get(0);
    let (reply, applied) =
        apply_once(&mut db, &schema, Service::Inventory, &reserve("p-1"))
            .await
            .unwrap();
    assert!(applied && matches!(reply, Reply::Done { .. }), "{reply:?}");
    let after_one: i64 = db.query_one(count, &[]).await.unwrap().get(0);
    assert!(after_one > before, "nothing stayed prepared: {before} -> {after_one}");
    let (_, applied) =
        apply_once(&mut db, &schema, Service::Inventory, &reserve("p-2"))
            .await
            .unwrap();
    assert!(applied);
    let after_two: i64 = db.query_one(count, &[]).await.unwrap().get(0);
    assert_eq!(after_two, after_one, "the second command prepared again");
    shop.drop().await;
}

/// The lease tick renews a saga even while one of the orchestrator's own workers
/// holds the saga's row in an `apply`: it waits for that transaction to end
/// instead of skipping the row and leaving the lease to run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_tick_renews_a_saga_whose_row_a_worker_holds() {
    let Some(shop) = shop().await else { return };
    let placed = order("l-1", "c-rich");
    let id = saga_id(&placed);
    assert!(shop.log.create(&id, &placed, "o-1").await.unwrap());
    let schema = shop.names.log_schema();
    // What a worker's `apply` holds in the middle of its transaction.
    let mut worker = shop.db().await;
    let apply = worker.transaction().await.unwrap();
    let lock = format!("SELECT 1 FROM {schema}.sagas WHERE id = $1 FOR UPDATE");
    apply.execute(&lock, &[&id]).await.unwrap();
    let log = std::sync::Arc::clone(&shop.log);
    let tick =
        tokio::spawn(async move { log.claim("o-1", Duration::from_secs(30)).await });
    // A tick that skipped the row would have returned at once, never waiting.
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' AND query LIKE '%{schema}.sagas%'"
    );
    let db = shop.db().await;
    until("the lease tick to wait for the worker's row", || async {
        let n: i64 = db.query_one(&waiting, &[]).await.unwrap().get(0);
        (n > 0).then_some(())
    })
    .await;
    assert!(!tick.is_finished(), "the tick returned while the row was held");
    apply.commit().await.unwrap();
    let renewed = tick.await.unwrap().unwrap();
    assert_eq!(renewed, vec![id]);
    shop.drop().await;
}
