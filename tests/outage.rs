//! Broker outages under load: the shop's services reach a broker through a proxy the test cuts
//! for a few seconds while checkouts are in flight. Every service must notice (its `/readyz` goes
//! false), reconnect by itself when the broker is back (its `/readyz` true again), and every
//! checkout must end with every promise kept, nothing applied twice.
//!
//! RabbitMQ and PostgreSQL are the shared ones, behind a proxy. Kafka cannot be cut that way: a
//! Kafka client connects wherever the broker's metadata says the broker is (its advertised
//! address), which is the broker's own, past any proxy. So the Kafka test starts a Nisshi of its
//! own that advertises the proxy's address, and every connection to it goes through the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use shop::config::{Role, Style};
use shop::scenario::{self, Planned};
use shop_domain::Line;
use shop_domain::Service;
use support::proxy::{Proxy, through, upstream};
use support::{Brokers, start_with};

/// How long a broker stays away: longer than a participant's first reconnect attempts, shorter
/// than the saga's 5-second timeout, so in-flight checkouts mostly ride it out.
const OUTAGE: Duration = Duration::from_secs(3);

/// Waits until `role`'s `/readyz` stops answering `200`: the process saw the outage. Returns
/// what it said instead.
async fn until_unready(shop: &support::Shop, role: Role) -> String {
    let url = format!("{}/readyz", shop.env().url(role));
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match http.get(&url).send().await {
            Ok(answer) if answer.status().is_success() => {}
            Ok(answer) => {
                let status = answer.status();
                let body = answer.text().await.unwrap_or_else(|e| e.to_string());
                return format!("{status}, {}", body.trim());
            }
            Err(error) => return format!("no answer: {error}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{role} stayed ready in the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn outage(broker: &str) {
    let (db, amqp) = (infra::database_url(), infra::amqp_addr());
    let pg = Proxy::start(upstream(&db)).await;
    let mq = Proxy::start(upstream(&amqp)).await;
    let brokers = Brokers {
        database_url: through(&db, pg.addr),
        amqp: through(&amqp, mq.addr),
        ..Brokers::shared()
    };
    let test = format!("out_{broker}");
    let Some(shop) = start_with(&test, Style::Orchestration, brokers).await else {
        return;
    };
    let proxy = if broker == "rabbitmq" { &mq } else { &pg };
    cut_mid_batch(shop, proxy, Role::Participant(Service::Inventory)).await;
}

/// Cuts `proxy` once the shop's services have applied five messages of a batch, until `watched`
/// reports unready and for [`OUTAGE`] more; then every service must be ready again in the life
/// it had, and every promise must hold.
async fn cut_mid_batch(mut shop: support::Shop, proxy: &Proxy, watched: Role) {
    let from = shop.applied().await;
    let env = shop.env().clone();
    let supervisor = &shop.supervisor;
    let placed_away = std::sync::Mutex::new(None);
    let fault = async {
        scenario::when_applied(&env, from + 5).await?;
        proxy.cut();
        let cut = std::time::Instant::now();
        let said = until_unready(&shop, watched).await;
        eprintln!("{watched} unready {:?} into the outage: {said}", cut.elapsed());
        if env.style == Style::Choreography {
            let away = placed_while_kafka_is_away(&shop).await;
            *placed_away.lock().unwrap() = Some(away);
        }
        // The outage itself lasts a fixed time: it is the fault, not a wait for something.
        tokio::time::sleep(OUTAGE).await;
        proxy.restore();
        let restored = std::time::Instant::now();
        for role in env.style.roles() {
            supervisor.wait_ready(role, Duration::from_secs(60)).await?;
        }
        eprintln!("every role ready {:?} after the restore", restored.elapsed());
        anyhow::Ok(())
    };
    let placed = shop.run_batch(scenario::batch("o"), fault).await;
    shop.placed.extend(placed);
    if let Some(away) = placed_away.into_inner().unwrap() {
        let view =
            shop.client.follow(&away, Duration::from_secs(120)).await.unwrap();
        shop.placed.push((away, view));
        let pending = outbox_pending(&shop).await;
        assert_eq!(pending, 0.0, "the orders outbox still owes {pending} events");
    }
    for role in env.style.roles() {
        assert_eq!(
            shop.supervisor.life(role).generation,
            1,
            "{role} had to be restarted: it should have reconnected by itself"
        );
    }
    shop.assert_promises_kept().await;
    shop.stop().await;
}

/// A checkout placed while Kafka is away: the orders service takes it (PostgreSQL answers) and
/// its outbox keeps the event it owes, which its `/metrics` shows as a pending row growing older.
async fn placed_while_kafka_is_away(shop: &support::Shop) -> Planned {
    let teapot = vec![Line { sku: "teapot".into(), quantity: 1 }];
    let away = Planned::new("o-away".into(), "c-cyd", teapot);
    shop.client.place(&away, Duration::from_secs(10)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while outbox_pending(shop).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox shows nothing owed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let age = metric(shop, "shop_outbox_oldest_pending_age_seconds").await;
    eprintln!(
        "while Kafka is away the orders outbox holds the new checkout's event ({age:.2} s old)"
    );
    assert!(age > 0.0, "a pending row of age {age}");
    away
}

/// The orders service's pending outbox rows, from its `/metrics`.
async fn outbox_pending(shop: &support::Shop) -> f64 {
    metric(shop, r#"shop_outbox_rows{status="pending"}"#).await
}

/// One sample of the orders service's `/metrics`, by its name and labels as written.
async fn metric(shop: &support::Shop, series: &str) -> f64 {
    let text =
        support::scrape(&shop.env().url(Role::Participant(Service::Orders))).await;
    support::sample(&text, series).unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_away_for_three_seconds_mid_checkout_and_every_checkout_converges()
{
    outage("rabbitmq").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_away_for_three_seconds_mid_checkout_and_every_checkout_converges()
 {
    outage("postgres").await;
}

/// The choreographed shop with its Kafka-API broker away: a Nisshi of this test's own, whose
/// every client connection runs through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_away_for_three_seconds_mid_checkout_and_every_choreographed_checkout_converges()
 {
    let Some(nisshi) = nisshi_binary() else {
        let why = "not installed; `cargo xtask brokers up` installs it";
        let (what, at) = ("nisshi (a Kafka-API broker)", "PATH or ~/.cargo/bin");
        infra::unavailable(what, at, why);
        return;
    };
    let listen = free_loopback_addr();
    let proxy = Proxy::start(listen).await;
    let broker = PrivateKafka::start(&nisshi, listen, proxy.addr).await;
    let brokers = Brokers { kafka: proxy.addr.to_string(), ..Brokers::shared() };
    let Some(shop) = start_with("out_kafka", Style::Choreography, brokers).await
    else {
        return;
    };
    cut_mid_batch(shop, &proxy, Role::Participant(Service::Inventory)).await;
    drop(broker); // only now: the shop needed it until it stopped
}

/// The `nisshi` binary as `cargo xtask brokers up` finds it: on `PATH`, else where
/// `cargo install` puts it.
fn nisshi_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_home =
        std::env::var_os("CARGO_HOME").map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo"))
        });
    std::env::split_paths(&path)
        .chain(cargo_home.map(|home| home.join("bin")))
        .map(|dir| dir.join("nisshi"))
        .find(|candidate| candidate.is_file())
}

/// A free port on loopback for the broker to bind (see `support::free_port`).
fn free_loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], support::free_port()))
}

/// A Nisshi process of one test's own, with its topics in memory: killed (by its pid) when this
/// is dropped, also when the test panics.
struct PrivateKafka {
    child: Child,
    log: PathBuf,
}

impl PrivateKafka {
    /// Starts `nisshi broker` listening on `listen` and telling its clients to connect to
    /// `advertised` (the proxy), and returns once a metadata request through `advertised`
    /// names the proxy as the only broker.
    async fn start(
        nisshi: &Path,
        listen: SocketAddr,
        advertised: SocketAddr,
    ) -> Self {
        let log = std::env::temp_dir().join(format!("nisshi-{}.log", listen.port()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(nisshi)
            .arg("broker")
            .args(["--listener-url", &format!("tcp://{listen}")])
            .args(["--advertised-listener-url", &format!("tcp://{advertised}")])
            .args(["--storage-engine", "memory://nisshi/"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nisshi.display()));
        let mut broker = PrivateKafka { child, log };
        eprintln!(
            "a private Nisshi (pid {}) logs to {}",
            broker.child.id(),
            broker.log.display()
        );
        broker.until_it_answers(advertised).await;
        broker
    }

    /// Asks for the cluster's metadata through `advertised` until it answers, for 30 s at most;
    /// fails at once if the broker exits.
    async fn until_it_answers(&mut self, advertised: SocketAddr) {
        let client: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", advertised.to_string())
            .create()
            .unwrap();
        let client = std::sync::Arc::new(client);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nisshi exited with {status}; see {}", self.log.display());
            }
            let asking = std::sync::Arc::clone(&client);
            let answer = tokio::task::spawn_blocking(move || {
                let metadata = asking
                    .client()
                    .fetch_metadata(None, Duration::from_millis(500))?;
                let brokers: Vec<(String, i32)> = metadata
                    .brokers()
                    .iter()
                    .map(|b| (b.host().to_owned(), b.port()))
                    .collect();
                Ok::<_, rdkafka::error::KafkaError>(brokers)
            })
            .await
            .unwrap();
            match answer {
                Ok(brokers) => {
                    // Every client connection must go through the proxy, or the cut misses it.
                    let proxy =
                        (advertised.ip().to_string(), i32::from(advertised.port()));
                    assert_eq!(
                        brokers,
                        [proxy],
                        "the broker must advertise the proxy only"
                    );
                    return;
                }
                Err(error) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "nisshi did not answer a metadata request in 30 s ({error}); see {}",
                    self.log.display()
                ),
            }
        }
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        // SIGKILL to this child's pid: its topics live in its memory, nothing to save.
        if let Err(error) = self.child.kill() {
            eprintln!("killing nisshi (pid {}): {error}", self.child.id());
        }
        if let Err(error) = self.child.wait() {
            eprintln!("waiting for nisshi (pid {}): {error}", self.child.id());
        }
    }
}
