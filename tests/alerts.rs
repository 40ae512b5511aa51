//! The shop's telemetry, read by a real Prometheus: every process's `/metrics` is scraped and
//! parsed by Prometheus itself, the numbers it reads match what the shop did, and the committed
//! alert rules (`deploy/prometheus/alerts.yml`) fire when the shop breaks and resolve when it is
//! repaired.
//!
//! The break is a hung saga service (SIGSTOP: alive, holding its port, answering nothing). The
//! gateway's calls to it time out, its circuit breaker opens, and the breaker alert goes from
//! inactive to pending to firing; after SIGCONT the breaker's next probe succeeds, it closes, and
//! the alert resolves.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use shop::config::{Env, Role};
use shop::roles::edge::IN_FLIGHT;
use shop::scenario;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The rule that watches the gateway's breaker, as named in `deploy/prometheus/alerts.yml`.
const BREAKER_ALERT: &str = "ShopCircuitBreakerOpen";

/// A Prometheus of the test's own, scraping one shop every second; killed (by its pid) when
/// dropped, so a failing test stops it too.
struct Prometheus {
    url: String,
    http: reqwest::Client,
    _process: Child,
    _data: TempDir,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {error}", self.0.display());
        }
    }
}

fn rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml")
}

/// The scrape configuration: one target per role, labelled with its service name.
fn config(env: &Env) -> String {
    let mut targets = String::new();
    for role in env.style.roles() {
        targets.push_str(&format!(
            "      - targets: ['{}']\n        labels: {{ service: {} }}\n",
            env.addr(role),
            role.name()
        ));
    }
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files: ['{}']\n\
         scrape_configs:\n  - job_name: shop\n    static_configs:\n{targets}",
        rules().display()
    )
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port; `None` (with the reason printed) when it is
    /// not installed and not required.
    async fn start(env: &Env) -> Option<Prometheus> {
        let dir =
            std::env::temp_dir().join(format!("{}-prometheus", env.names.prefix));
        std::fs::create_dir_all(&dir).unwrap();
        let data = TempDir(dir.clone());
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config(env)).unwrap();
        let port = support::free_port();
        let listen = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let spawned = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn();
        let process = match spawned {
            Ok(process) => process,
            Err(error) => {
                let why = format!(
                    "{error}; `cargo xtask brokers up` installs it (Debian's prometheus)"
                );
                infra::unavailable("Prometheus", "PATH", why);
                return None;
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let prometheus = Prometheus {
            url: format!("http://{listen}"),
            http,
            _process: process,
            _data: data,
        };
        let ready = format!("{}/-/ready", prometheus.url);
        prometheus
            .until("Prometheus is ready", Duration::from_secs(30), || async {
                prometheus
                    .http
                    .get(&ready)
                    .send()
                    .await
                    .is_ok_and(|a| a.status().is_success())
            })
            .await;
        Some(prometheus)
    }

    /// GETs `path` of Prometheus's HTTP API with `query` and returns the JSON answer.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url = format!("{}/api/v1/{path}", self.url);
        let answer = self.http.get(url).query(query).send().await.unwrap();
        let answer: Value = answer.json().await.unwrap();
        assert_eq!(answer["status"], "success", "{path} {query:?}: {answer}");
        answer
    }

    /// Asks `query` and returns its one value; `None` when the result is empty.
    async fn value(&self, query: &str) -> Option<f64> {
        let answer = self.api("query", &[("query", query)]).await;
        let result = answer["data"]["result"].as_array().unwrap();
        assert!(result.len() <= 1, "{query} has {} series: {answer}", result.len());
        result
            .first()
            .map(|series| series["value"][1].as_str().unwrap().parse().unwrap())
    }

    /// Every active alert, pending or firing, as its name and state.
    async fn alerts(&self) -> Vec<(String, String)> {
        let answer = self.api("alerts", &[]).await;
        let alerts = answer["data"]["alerts"].as_array().unwrap();
        let text = |v: &Value| v.as_str().unwrap().to_owned();
        alerts
            .iter()
            .map(|a| (text(&a["labels"]["alertname"]), text(&a["state"])))
            .collect()
    }

    /// The state (`pending` or `firing`) of the alert `name`, if it is active.
    async fn alert(&self, name: &str) -> Option<String> {
        self.alerts()
            .await
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, state)| state)
    }

    /// Every target's health and last scrape error, by its `service` label.
    async fn targets(&self) -> Vec<(String, String, String)> {
        let answer = self.api("targets", &[]).await;
        let active = answer["data"]["activeTargets"].as_array().unwrap();
        active
            .iter()
            .map(|t| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (
                    text(&t["labels"]["service"]),
                    text(&t["health"]),
                    text(&t["lastError"]),
                )
            })
            .collect()
    }

    /// Waits until `condition` holds, asking every 250 ms, for at most `within`.
    async fn until<F, Fut>(
        &self,
        what: &str,
        within: Duration,
        condition: F,
    ) -> Duration
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let began = Instant::now();
        while !condition().await {
            assert!(began.elapsed() < within, "waited {within:?} for: {what}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        began.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_the_shop_and_the_breaker_alert_fires_on_a_hung_saga_and_resolves()
 {
    let Some(mut shop) = support::start("alerts").await else { return };
    let Some(prometheus) = Prometheus::start(shop.env()).await else {
        shop.stop().await;
        return;
    };
    let roles = shop.env().style.roles().len();

    // Every process is scraped and its text parsed by Prometheus, with no error.
    prometheus
        .until("every target scraped", Duration::from_secs(30), || async {
            let targets = prometheus.targets().await;
            targets.len() == roles
                && targets.iter().all(|(_, health, _)| health == "up")
        })
        .await;
    for (service, _, error) in prometheus.targets().await {
        assert!(error.is_empty(), "{service}: {error}");
    }
    let services: BTreeSet<String> = prometheus
        .targets()
        .await
        .into_iter()
        .map(|(service, ..)| service)
        .collect();
    assert_eq!(services.len(), roles, "{services:?}");

    // What the shop did is what Prometheus reads.
    let batch = scenario::batch("alerts");
    let placed = shop.run_batch(batch.clone(), async { Ok(()) }).await;
    let ended = placed.len() as f64;
    shop.placed.extend(placed);
    let finished = r#"sum(shop_sagas{status=~"completed|compensated"})"#;
    prometheus
        .until("every saga counted as finished", Duration::from_secs(30), || async {
            prometheus.value(finished).await == Some(ended)
        })
        .await;
    let accepted = r#"sum(shop_http_requests_total{service="gateway",route="/checkouts",method="POST",status="202"})"#;
    // Each target is scraped on its own clock: wait for the gateway's next scrape.
    let placed = batch.len() as f64;
    prometheus
        .until("every 202 counted", Duration::from_secs(10), || async {
            prometheus.value(accepted).await == Some(placed)
        })
        .await;
    // A path no route serves is counted under one label, whatever the path was.
    let nowhere = format!(
        "{}/nowhere/{}",
        shop.env().url(Role::Gateway),
        uuid::Uuid::new_v4()
    );
    let answer = reqwest::get(&nowhere).await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::NOT_FOUND);
    let unmatched = r#"sum(shop_http_requests_total{service="gateway",route="unmatched",status="404"})"#;
    prometheus
        .until("the 404 counted", Duration::from_secs(10), || async {
            prometheus.value(unmatched).await == Some(1.0)
        })
        .await;
    // Each participant counted, as it went, exactly the commands its own records say it applied.
    let applied = shop.applied().await as f64;
    let counted = r#"sum(shop_commands_total{outcome="applied"})"#;
    prometheus
        .until("every applied command counted", Duration::from_secs(10), || async {
            prometheus.value(counted).await == Some(applied)
        })
        .await;
    let commands = r#"sum(shop_amqp_deliveries_total{service!="saga"})"#;
    let delivered = prometheus.value(commands).await.unwrap_or(0.0);
    assert!(
        delivered >= applied,
        "{delivered} deliveries for {applied} commands applied"
    );
    // Both ends of RabbitMQ agree, with nothing killed: every command the broker confirmed to
    // the saga was delivered to a participant once, and every reply it confirmed to a
    // participant was delivered to the saga once.
    let sent =
        r#"sum(shop_amqp_confirms_total{service="saga",outcome="confirmed"})"#;
    let replied =
        r#"sum(shop_amqp_confirms_total{service!="saga",outcome="confirmed"})"#;
    let to_saga = r#"sum(shop_amqp_deliveries_total{service="saga"})"#;
    prometheus
        .until(
            "the saga's commands and replies counted",
            Duration::from_secs(10),
            || async {
                let (sent, delivered) =
                    (prometheus.value(sent).await, prometheus.value(commands).await);
                let (replied, to_saga) = (
                    prometheus.value(replied).await,
                    prometheus.value(to_saga).await,
                );
                sent.is_some_and(|n| n > 0.0)
                    && sent == delivered
                    && replied == to_saga
            },
        )
        .await;
    // Every read behind the gauges worked (the saga log's SQL, the queues).
    let failed = "sum(shop_metrics_refresh_failures_total)";
    assert_eq!(prometheus.value(failed).await, Some(0.0));
    let unfinished = r#"sum(shop_sagas{status=~"running|compensating"})"#;
    assert_eq!(prometheus.value(unfinished).await, Some(0.0));
    let running = "shop_saga_oldest_running_age_seconds";
    assert_eq!(prometheus.value(running).await, Some(0.0));
    assert_eq!(
        prometheus.value(r#"shop_circuit_breaker_state{backend="saga"}"#).await,
        Some(0.0)
    );
    assert_eq!(prometheus.value("shop_dead_letters").await, Some(0.0));
    let active = prometheus.alerts().await;
    assert!(active.is_empty(), "a healthy shop has active alerts: {active:?}");

    // Break: the saga hangs. Clients keep asking; the gateway's calls time out, and its breaker
    // opens, then lets a probe through now and then, which times out too.
    let (customer, order) = (batch[0].customer.clone(), batch[0].key.clone());
    let broken = Instant::now();
    shop.supervisor.pause(Role::Saga).unwrap();
    let asking = std::sync::atomic::AtomicBool::new(true);
    let client = &shop.client;
    let traffic = async {
        // A first wave at once: enough to fill the breaker's minimum of calls, and eight more
        // than the gateway's bulkhead holds while the first ones hang.
        let wave = (0..IN_FLIGHT + 8).map(|_| client.view(&customer, &order));
        futures::future::join_all(wave).await;
        while asking.load(std::sync::atomic::Ordering::Relaxed) {
            // Answers do not matter here: the breaker and the alert are under test.
            let _answer = client.view(&customer, &order).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let checks = async {
        prometheus
            .until("the breaker alert fires", Duration::from_secs(90), || async {
                prometheus.alert(BREAKER_ALERT).await.as_deref() == Some("firing")
            })
            .await;
        eprintln!(
            "alerts: {BREAKER_ALERT} fired {:.1} s after the saga hung",
            broken.elapsed().as_secs_f64()
        );
        let opened = r#"sum(shop_circuit_breaker_transitions_total{backend="saga",to="open"})"#;
        assert!(prometheus.value(opened).await.unwrap_or(0.0) >= 1.0);
        let errors =
            r#"sum(shop_http_requests_total{service="gateway",status=~"5.."})"#;
        assert!(
            prometheus.value(errors).await.unwrap_or(0.0) >= 12.0,
            "the failed calls were not counted"
        );
        // The calls past the bulkhead's places were turned away at once, not held.
        let turned_away = "sum(shop_bulkhead_rejections_total)";
        assert_eq!(prometheus.value(turned_away).await, Some(8.0));

        // Repair: the saga goes on; the breaker's next probe succeeds and it closes.
        let repaired = Instant::now();
        shop.supervisor.resume(Role::Saga).unwrap();
        prometheus
            .until("the breaker alert resolves", Duration::from_secs(60), || async {
                prometheus.alert(BREAKER_ALERT).await.is_none()
            })
            .await;
        eprintln!(
            "alerts: {BREAKER_ALERT} resolved {:.1} s after the saga went on",
            repaired.elapsed().as_secs_f64()
        );
        assert_eq!(
            prometheus.value(r#"shop_circuit_breaker_state{backend="saga"}"#).await,
            Some(0.0)
        );
        asking.store(false, std::sync::atomic::Ordering::Relaxed);
    };
    tokio::join!(traffic, checks);
    drop(prometheus);
    shop.assert_promises_kept().await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_choreographed_shop_shows_its_lag_and_outboxes_drain_and_a_poison_event_fires_the_dead_letter_alert()
 {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let style = shop::config::Style::Choreography;
    let Some(mut shop) = support::start_styled("alerts_dlq", style).await else {
        return;
    };
    let Some(prometheus) = Prometheus::start(shop.env()).await else {
        shop.stop().await;
        return;
    };
    let placed = shop.run_batch(scenario::batch("dlq"), async { Ok(()) }).await;
    shop.placed.extend(placed);
    shop.assert_promises_kept().await;
    // Each of the four services reports its outbox and its lag; once the batch is done, nothing
    // is owed and nothing is behind.
    let settled = || async {
        let outboxes = r#"count(shop_outbox_rows{status="pending"})"#;
        prometheus.value(outboxes).await == Some(4.0)
            && prometheus.value(r#"sum(shop_outbox_rows)"#).await == Some(0.0)
            && prometheus
                .value("count(shop_kafka_consumer_lag)")
                .await
                .unwrap_or(0.0)
                >= 3.0
            && prometheus.value("sum(shop_kafka_consumer_lag)").await == Some(0.0)
            && prometheus.value("sum(shop_dead_letters)").await == Some(0.0)
    };
    prometheus
        .until("outboxes drained and lag at zero", Duration::from_secs(60), settled)
        .await;
    assert_eq!(prometheus.alert("ShopDeadLetters").await, None);
    let applied = r#"sum(shop_events_total{outcome="applied"})"#;
    assert!(
        prometheus.value(applied).await.unwrap_or(0.0) > 0.0,
        "no event counted as applied"
    );
    let published = "sum(shop_outbox_published_total)";
    assert!(
        prometheus.value(published).await.unwrap_or(0.0) > 0.0,
        "no outbox row published"
    );

    // A record nobody can read, on the orders service's topic: its readers dead-letter it.
    // Topic names take the shop's prefix with `-` for `_`, as the choreographed shop names them.
    let prefix = shop.env().names.prefix.replace('_', "-");
    let topic =
        choreography::wire::Topics::new(&prefix).of(shop_domain::Service::Orders);
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &shop.env().kafka)
        .create()
        .unwrap();
    let poison = FutureRecord::to(&topic).key("poison").payload("{not an event");
    producer
        .send(poison, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let poisoned = Instant::now();
    prometheus
        .until("the dead-letter alert fires", Duration::from_secs(60), || async {
            prometheus.alert("ShopDeadLetters").await.as_deref() == Some("firing")
        })
        .await;
    eprintln!(
        "alerts: ShopDeadLetters fired {:.1} s after the poison event",
        poisoned.elapsed().as_secs_f64()
    );
    assert!(prometheus.value("sum(shop_dead_letters)").await.unwrap_or(0.0) >= 1.0);
    // Each consumer that dead-lettered it (every reader of the topic) counted it too: as many
    // as the dead-letter topics hold.
    let counted = r#"sum(shop_events_total{outcome="dead_lettered"})"#;
    prometheus
        .until("the dead letters counted", Duration::from_secs(10), || async {
            let (counted, held) = (
                prometheus.value(counted).await,
                prometheus.value("sum(shop_dead_letters)").await,
            );
            eprintln!("dead letters counted {counted:?}, held {held:?}");
            counted.is_some() && counted == held
        })
        .await;
    drop(prometheus);
    shop.stop().await;
}
