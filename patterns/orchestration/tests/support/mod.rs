//! A whole shop for one test: fresh schemas and queues under a prefix of its own, the four
//! participants, and the log. Waits are bounded waits on conditions.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Client, Pool};
use lapin::options::BasicGetOptions;
use lapin::{Connection, ConnectionProperties};
use orchestration::faults::{Crash, CrashingLog};
use orchestration::log::{PgLog, SagaLog};
use orchestration::orchestrator::{Config, Orchestrator};
use orchestration::participant::{
    Names, PARTICIPANTS, Participant, Quirks, serve, setup,
};
use orchestration::saga::{Record, Terminal};
use shop_domain::{Line, OrderPlaced, Seed, Service};

/// A bound on any one wait; a healthy saga settles in well under a second.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Shop {
    pub names: Names,
    pub url: String,
    pub amqp: String,
    /// Connections for the test's own reads and writes.
    pub pool: Pool,
    pub log: Arc<PgLog>,
    pub services: Vec<(Service, Participant)>,
}

pub fn seed() -> Seed {
    Seed {
        stock: vec![("kettle".into(), 10)],
        balances: vec![("c-rich".into(), 100_000), ("c-poor".into(), 1_000)],
        destinations: vec!["NL".into(), "DE".into()],
    }
}

/// Two kettles at 14.50 for `customer`, to NL.
pub fn order(id: &str, customer: &str) -> OrderPlaced {
    OrderPlaced {
        order_id: id.into(),
        customer_id: customer.into(),
        lines: vec![Line { sku: "kettle".into(), quantity: 2 }],
        total_cents: 2900,
        ship_to: "NL".into(),
    }
}

/// A fresh shop with no participant running, or `None` after saying why.
pub async fn shop() -> Option<Shop> {
    let (url, amqp) = (infra::database_url(), infra::amqp_addr());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let names = Names::new(&format!("orch{}", &tag[..10]));
    let ready = async {
        setup(&url, &amqp, &names, &seed()).await.map_err(|e| e.to_string())?;
        let lease = Duration::from_secs(30);
        let log = PgLog::connect(&url, &names.log_schema(), lease).await;
        let log = log.map_err(|e| e.to_string())?;
        let pool = orchestration::pool(&url, 2).map_err(|e| e.to_string())?;
        Ok::<_, String>((log, pool))
    };
    match tokio::time::timeout(Duration::from_secs(30), ready).await {
        Ok(Ok((log, pool))) => {
            let log = Arc::new(log);
            Some(Shop { names, url, amqp, pool, log, services: vec![] })
        }
        Ok(Err(why)) => {
            infra::unavailable(
                "PostgreSQL and RabbitMQ",
                &format!("{url}, {amqp}"),
                why,
            );
            None
        }
        Err(_) => {
            infra::unavailable("PostgreSQL and RabbitMQ", &url, "no answer in 30 s");
            None
        }
    }
}

impl Shop {
    /// A connection from the test's pool.
    pub async fn db(&self) -> Client {
        self.pool.get().await.unwrap()
    }

    /// The `application_name` of `participant`'s connections in this shop, so
    /// a test can find them in `pg_stat_activity`.
    pub fn connection_name(&self, participant: Service) -> String {
        self.names.schema(participant)
    }

    pub fn start(&mut self, participant: Service, quirks: Quirks) {
        let name = self.connection_name(participant);
        // The URL in either of PostgreSQL's forms: a URI, or key=value pairs.
        let url = match (self.url.contains("://"), self.url.contains('?')) {
            (true, true) => format!("{}&application_name={name}", self.url),
            (true, false) => format!("{}?application_name={name}", self.url),
            (false, _) => format!("{} application_name={name}", self.url),
        };
        let (amqp, names) = (self.amqp.clone(), self.names.clone());
        let task = serve(participant, url, amqp, names, quirks);
        self.services.push((participant, task));
    }

    pub fn start_all(&mut self) {
        for participant in PARTICIPANTS {
            self.start(participant, Quirks::default());
        }
    }

    pub fn config(&self, name: &str) -> Config {
        Config {
            name: name.into(),
            amqp: self.amqp.clone(),
            names: self.names.clone(),
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            workers: 4,
        }
    }

    pub async fn orchestrator(&self, config: Config) -> Orchestrator {
        Orchestrator::start(config, Arc::clone(&self.log)).await.unwrap()
    }

    /// An orchestrator whose log follows the fault plan `crash`: it dies there.
    pub async fn crashing_orchestrator(
        &self,
        config: Config,
        crash: Crash,
    ) -> Orchestrator {
        let log = CrashingLog::new(Arc::clone(&self.log), crash);
        Orchestrator::start(config, Arc::new(log)).await.unwrap()
    }

    /// The order as the orders service has it after its customer cancelled it.
    pub async fn customer_cancels(&self, order: &OrderPlaced) {
        let mut orders = shop_domain::orders::Orders::default();
        orders.place(order.clone()).unwrap();
        orders.cancel(&order.order_id, "customer cancelled".into());
        let value = serde_json::to_string(&orders.orders[&order.order_id]).unwrap();
        let sql = format!(
            "INSERT INTO {}.records (key, value) VALUES ($1, $2)",
            self.names.schema(Service::Orders)
        );
        let key = format!("order:{}", order.order_id);
        self.db().await.execute(&sql, &[&key, &value]).await.unwrap();
    }

    pub async fn records(&self, saga: &str) -> Vec<Record> {
        self.log.load(saga).await.unwrap().map(|(_, r)| r).unwrap_or_default()
    }

    pub async fn record<T: for<'de> serde::Deserialize<'de>>(
        &self,
        participant: Service,
        key: &str,
    ) -> Option<T> {
        let db = self.db().await;
        orchestration::participant::record(&db, &self.names, participant, key)
            .await
            .unwrap()
    }

    /// Command ids each participant applied, all merged in the order applied.
    pub async fn applied(&self) -> Vec<String> {
        let (mut all, db) = (vec![], self.db().await);
        for participant in PARTICIPANTS {
            all.extend(
                orchestration::participant::applied(&db, &self.names, participant)
                    .await
                    .unwrap(),
            );
        }
        all.sort_by_key(|(_, at)| *at);
        all.into_iter().map(|(id, _)| id).collect()
    }

    /// The first `want` messages of the dead-letter queue: (correlation id, body).
    pub async fn dead_letters(&self, want: usize) -> Vec<(String, Vec<u8>)> {
        let conn = Connection::connect(&self.amqp, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let queue = self.names.dead_letters();
        let mut got = vec![];
        let waiting = async {
            while got.len() < want {
                let options = BasicGetOptions { no_ack: true };
                match channel
                    .basic_get(queue.as_str().into(), options)
                    .await
                    .unwrap()
                {
                    Some(message) => {
                        let delivery = message.delivery;
                        let id = delivery.properties.correlation_id().clone();
                        let id = id.map(|i| i.to_string()).unwrap_or_default();
                        got.push((id, delivery.data));
                    }
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        };
        tokio::time::timeout(WAIT, waiting).await.expect("dead letters in time");
        conn.close(200, "".into()).await.ok();
        got
    }

    /// Stops the participants and removes the shop's schemas and queues.
    pub async fn drop(self) {
        for (name, service) in self.services {
            if let Err(error) = service.stop().await {
                panic!("{name} stopped with an error: {error}");
            }
        }
        let orchestrators = ["o", "a", "b"];
        orchestration::participant::teardown(
            &self.url,
            &self.amqp,
            &self.names,
            &orchestrators,
        )
        .await
        .unwrap();
    }
}

/// Waits (bounded) until `check` returns `Some`.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let waiting = async {
        loop {
            if let Some(found) = check().await {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(WAIT, waiting).await {
        Ok(found) => found,
        Err(_) => panic!("waited {WAIT:?} for {what}"),
    }
}

/// Waits (bounded) for `orchestrator` to finish `saga`.
pub async fn finished(orchestrator: &mut Orchestrator, saga: &str) -> Terminal {
    let waiting = async {
        while let Some((id, terminal)) = orchestrator.next_finished().await {
            if id == saga {
                return terminal;
            }
        }
        panic!("the orchestrator stopped before {saga} finished");
    };
    tokio::time::timeout(WAIT, waiting).await.expect("saga did not finish in time")
}
