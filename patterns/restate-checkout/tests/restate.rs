//! The workflow's promises against a real Restate server (`RESTATE_ADMIN_URL`,
//! `RESTATE_INGRESS_URL`) and PostgreSQL (`DATABASE_URL`): the orchestration chapter's crash
//! matrix (each step, before and after its effect, on the completing and the compensating path)
//! with the service process killed by SIGKILL and started again, every branch's end state, and a
//! second start of the same workflow that starts nothing. The invariants are read from the
//! participants' own databases.
//!
//! The tests run one at a time: each registers its own service process as the deployment that
//! serves `Checkout`, and the server sends a new workflow to the latest one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::time::Duration;

use orchestration::participant::{self, Names, PARTICIPANTS};
use orchestration::saga::Terminal;
use restate_checkout::engine::{Engine, EngineError, Started};
use restate_checkout::faults::{Crash, PAUSED};
use restate_checkout::participants::{setup, teardown};
use restate_checkout::service::{Launch, Options, ServiceProcess};
use shop_domain::orders::{Order, OrderStatus, Orders};
use shop_domain::shipping::{Shipment, ShipmentStatus};
use shop_domain::{Line, OrderPlaced, Seed, Service};
use tokio::sync::{Mutex, MutexGuard};

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const WAIT: Duration = Duration::from_secs(60);

fn seed() -> Seed {
    Seed {
        stock: vec![("kettle".into(), 10)],
        balances: vec![("c-rich".into(), 100_000), ("c-poor".into(), 1_000)],
        destinations: vec!["NL".into(), "DE".into()],
    }
}

/// Two kettles at 14.50 for `customer`, to NL.
fn order(id: &str, customer: &str) -> OrderPlaced {
    OrderPlaced {
        order_id: id.into(),
        customer_id: customer.into(),
        lines: vec![Line { sku: "kettle".into(), quantity: 2 }],
        total_cents: 2900,
        ship_to: "NL".into(),
    }
}

struct Shop {
    names: Names,
    url: String,
    engine: Engine,
    deployment: String,
    pool: deadpool_postgres::Pool,
    service: ServiceProcess,
    _turn: MutexGuard<'static, ()>,
}

/// A fresh shop whose service process runs with `crash` planned and is
/// registered with the server, or `None` after saying why not.
async fn shop(crash: Option<Crash>) -> Option<Shop> {
    let turn = ONE_AT_A_TIME.lock().await;
    let url = infra::database_url();
    let engine = Engine::from_env().unwrap();
    if let Err(e) = engine.version().await {
        infra::unavailable("the Restate server", engine.admin(), e);
        return None;
    }
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let names = Names::new(&format!("rs{}", &tag[..10]));
    let ready = tokio::time::timeout(WAIT, setup(&url, &names, &seed())).await;
    match ready {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            infra::unavailable("PostgreSQL", &url, e);
            return None;
        }
        Err(_) => {
            infra::unavailable("PostgreSQL", &url, "no answer in 60 s");
            return None;
        }
    }
    let options = Options {
        prefix: names.prefix.clone(),
        port: 0,
        crash,
        patience_ms: 30_000,
    };
    let launch = Launch {
        program: env!("CARGO_BIN_EXE_restate-checkout-service").into(),
        leading: vec![],
        options,
        echo: false,
        quiet: false,
    };
    let service = ServiceProcess::start(&launch).await.unwrap();
    let deployment = engine.register(&service.uri()).await.unwrap();
    let pool = orchestration::pool(&url, 2).unwrap();
    Some(Shop { names, url, engine, deployment, pool, service, _turn: turn })
}

impl Shop {
    /// The workflow's key for `order` in this shop.
    fn key(&self, order: &OrderPlaced) -> String {
        format!("{}-{}", self.names.prefix, order.order_id)
    }

    async fn record<T: for<'de> serde::Deserialize<'de>>(
        &self,
        participant: Service,
        key: &str,
    ) -> Option<T> {
        let db = self.pool.get().await.unwrap();
        participant::record(&db, &self.names, participant, key).await.unwrap()
    }

    /// The commands of `saga` (their ids without the saga's) that the
    /// participants applied, merged in the order they were applied.
    async fn applied(&self, saga: &str) -> Vec<String> {
        let (mut all, db) = (vec![], self.pool.get().await.unwrap());
        for p in PARTICIPANTS {
            all.extend(participant::applied(&db, &self.names, p).await.unwrap());
        }
        all.sort_by_key(|(_, at)| *at);
        let mine =
            |id: &String| id.strip_prefix(&format!("{saga}/")).map(str::to_owned);
        all.iter().filter_map(|(id, _)| mine(id)).collect()
    }

    /// The order as the orders service has it after its customer cancelled it.
    async fn customer_cancels(&self, order: &OrderPlaced) {
        let mut orders = Orders::default();
        orders.place(order.clone()).unwrap();
        orders.cancel(&order.order_id, "customer cancelled".into());
        let value = serde_json::to_string(&orders.orders[&order.order_id]).unwrap();
        let sql = format!(
            "INSERT INTO {}.records (key, value) VALUES ($1, $2)",
            self.names.schema(Service::Orders)
        );
        let key = format!("order:{}", order.order_id);
        let db = self.pool.get().await.unwrap();
        db.execute(&sql, &[&key, &value]).await.unwrap();
    }

    async fn drop(self) {
        self.service.stop().await.unwrap();
        self.engine.unregister(&self.deployment).await.unwrap();
        teardown(&self.url, &self.names).await.unwrap();
    }
}

/// Starts one checkout on a service process that stops at `crash`, kills it
/// with SIGKILL there, starts it again, and checks where everything ends up.
async fn crash_case(crash: Crash, fail_last: bool) {
    let Some(mut shop) = shop(Some(crash)).await else { return };
    let order = order("o-1", "c-rich");
    if fail_last {
        // The customer cancelled while the checkout ran: confirm is refused.
        shop.customer_cancels(&order).await;
    }
    let key = shop.key(&order);
    assert_eq!(shop.engine.start(&key, &order).await.unwrap(), Started::Now);
    shop.service.wait_for(PAUSED, WAIT).await.unwrap();
    shop.service.kill().await.unwrap();
    shop.service.restart().await.unwrap();
    let terminal = shop.engine.outcome(&key).await.unwrap();

    let applied = shop.applied(&key).await;
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
        let expected =
            ["0/do", "1/do", "2/do", "3/do", "2/undo", "1/undo", "0/undo"];
        assert_eq!(applied, expected, "each command applied once, in this order");
        assert_eq!((stock, balance), (10, 100_000), "all given back, once");
        assert!(matches!(shipment.status, ShipmentStatus::Cancelled { .. }));
        assert!(matches!(placed.status, OrderStatus::Cancelled { .. }));
    } else {
        assert_eq!(terminal, Terminal::Completed);
        assert_eq!(applied, ["0/do", "1/do", "2/do", "3/do"], "each once");
        assert_eq!((stock, balance), (8, 100_000 - 2900), "taken once");
        let ShipmentStatus::Scheduled { tracking } = &shipment.status else {
            panic!("not scheduled: {shipment:?}");
        };
        let confirmed = OrderStatus::Confirmed { tracking: tracking.clone() };
        assert_eq!(
            placed.status, confirmed,
            "the tracking number shipping reported"
        );
    }
    shop.drop().await;
}

// ANCHOR: crash_matrix
/// One named test per boundary, step and path: 4 steps x 2 boundaries x 2 paths,
/// each a SIGKILL of the service process at that point.
macro_rules! crash_matrix {
    ($($name:ident: $crash:expr, $fail_last:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crash_case($crash, $fail_last).await;
        }
    )*};
}

use Crash::{AfterEffect, BeforeEffect};
crash_matrix! {
    kill_before_reserve_then_complete: BeforeEffect(0), false;
    kill_after_reserve_then_complete: AfterEffect(0), false;
    kill_before_authorize_then_complete: BeforeEffect(1), false;
    kill_after_authorize_then_complete: AfterEffect(1), false;
    kill_before_schedule_then_complete: BeforeEffect(2), false;
    kill_after_schedule_then_complete: AfterEffect(2), false;
    kill_before_confirm_then_complete: BeforeEffect(3), false;
    kill_after_confirm_then_complete: AfterEffect(3), false;
    kill_before_reserve_then_compensate: BeforeEffect(0), true;
    kill_after_reserve_then_compensate: AfterEffect(0), true;
    kill_before_authorize_then_compensate: BeforeEffect(1), true;
    kill_after_authorize_then_compensate: AfterEffect(1), true;
    kill_before_schedule_then_compensate: BeforeEffect(2), true;
    kill_after_schedule_then_compensate: AfterEffect(2), true;
    kill_before_confirm_then_compensate: BeforeEffect(3), true;
    kill_after_confirm_then_compensate: AfterEffect(3), true;
}
// ANCHOR_END: crash_matrix

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_branch_ends_in_the_right_state() {
    let Some(shop) = shop(None).await else { return };
    let declined = order("o-poor", "c-poor");
    let mut far = order("o-far", "c-rich");
    far.ship_to = "AQ".into();
    let mut greedy = order("o-greedy", "c-rich");
    greedy.lines[0].quantity = 50;
    let happy = order("o-happy", "c-rich");
    let mut ends = vec![];
    for order in [&declined, &far, &greedy, &happy] {
        let key = shop.key(order);
        ends.push((
            order.order_id.clone(),
            shop.engine.checkout(&key, order).await.unwrap(),
        ));
    }
    let reason = |end: &Terminal| match end {
        Terminal::Compensated { reason } => reason.clone(),
        other => format!("{other:?}"),
    };
    assert!(reason(&ends[0].1).contains("insufficient funds"), "{ends:?}");
    assert!(reason(&ends[1].1).contains("AQ"), "{ends:?}");
    assert!(reason(&ends[2].1).contains("kettle"), "{ends:?}");
    assert_eq!(ends[3].1, Terminal::Completed);
    // Declined: the reservation given back. Undeliverable: refunded and given
    // back. Short of stock: nothing was done, so nothing is undone.
    assert_eq!(
        shop.applied(&shop.key(&declined)).await[..],
        ["0/do", "1/do", "0/undo"]
    );
    let far_applied = shop.applied(&shop.key(&far)).await;
    assert_eq!(far_applied, ["0/do", "1/do", "2/do", "1/undo", "0/undo"]);
    assert_eq!(shop.applied(&shop.key(&greedy)).await, ["0/do"]);
    let stock: u32 = shop.record(Service::Inventory, "stock:kettle").await.unwrap();
    let rich: u64 = shop.record(Service::Payments, "balance:c-rich").await.unwrap();
    let poor: u64 = shop.record(Service::Payments, "balance:c-poor").await.unwrap();
    assert_eq!(
        (stock, rich, poor),
        (8, 100_000 - 2900, 1_000),
        "only o-happy took anything"
    );
    shop.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_order_started_twice_is_checked_out_once() {
    let Some(shop) = shop(None).await else { return };
    let order = order("o-twice", "c-rich");
    let key = shop.key(&order);
    assert_eq!(shop.engine.start(&key, &order).await.unwrap(), Started::Now);
    assert_eq!(shop.engine.start(&key, &order).await.unwrap(), Started::Before);
    assert_eq!(shop.engine.outcome(&key).await.unwrap(), Terminal::Completed);
    // Even after it finished, the key still names the same workflow.
    assert_eq!(shop.engine.start(&key, &order).await.unwrap(), Started::Before);
    // A call that waits for the result is refused outright: 409 Conflict.
    let again = shop.engine.checkout(&key, &order).await;
    let refused = matches!(&again, Err(EngineError::Status(_, 409, body))
        if body.contains("already invoked"));
    assert!(refused, "{again:?}");
    assert_eq!(shop.applied(&key).await, ["0/do", "1/do", "2/do", "3/do"]);
    let balance: u64 =
        shop.record(Service::Payments, "balance:c-rich").await.unwrap();
    assert_eq!(balance, 100_000 - 2900, "charged once");
    shop.drop().await;
}
