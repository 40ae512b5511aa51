//! What the capstone's tests share: a shop of real processes per test (its own prefix, its own
//! free ports), and a TCP proxy that cuts a broker off for a while.
#![allow(dead_code)] // each test binary uses its own part of it

pub mod proxy;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use orchestration::participant::Names;
use shop::config::{Env, Role, Style, Tls, encode_hex};
use shop::roles::intake::CheckoutView;
use shop::scenario::{self, Client, Planned};
use shop::supervisor::{Output, Supervisor};
use shop::telemetry::LogFormat;

/// A service's `/metrics` at `base`, as Prometheus would read it, within 10 s.
pub async fn scrape(base: &str) -> String {
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let answer = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert!(answer.status().is_success(), "{base}/metrics: {}", answer.status());
    answer.text().await.unwrap()
}

/// The value of `series` (name and labels, as the scrape spells them) in a scrape, if it has it.
pub fn sample<T: std::str::FromStr>(text: &str, series: &str) -> Option<T>
where
    T::Err: std::fmt::Debug,
{
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))?;
    Some(value.trim().parse().unwrap())
}

/// A shop of real processes for one test.
pub struct Shop {
    pub supervisor: Supervisor,
    pub client: Client,
    pub key: Vec<u8>,
    pub placed: Vec<(Planned, CheckoutView)>,
}

/// A port on 127.0.0.1 for a process a test starts: free when chosen, never given twice by one
/// test binary, and below the kernel's ephemeral range, so that neither another test's `bind` to
/// port 0 nor an outgoing connection takes it between now and the child's `bind`. (A port chosen
/// by binding port 0 and letting go could be handed to another test's child in that gap, and a
/// probe would then be answered by the wrong shop.)
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let ephemeral =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
    // Up to 12,000 ports just under the range, none under 1024.
    let low = ephemeral.saturating_sub(12_000).max(1024);
    let span = ephemeral.saturating_sub(low);
    assert!(
        span >= 1000,
        "the ephemeral port range starts at {ephemeral}: too little room below it for test ports"
    );
    // Binaries that run side by side start at different places.
    let start = (std::process::id() % 40) as u16 * (span / 40);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + (start + n % span) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {low} and {}", low + span)
}

/// A free port for each role, `replicas` of them for a role `replicated` names (one for the
/// others), listed as `SHOP_<ROLE>_ADDR` lists them; see [`free_port`].
fn free_addrs(replicated: &[Role], replicas: usize) -> BTreeMap<Role, String> {
    let addrs = |role: &Role| {
        let n = if replicated.contains(role) { replicas } else { 1 };
        let each: Vec<String> =
            (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        each.join(",")
    };
    Role::ALL.into_iter().map(|role| (role, addrs(&role))).collect()
}

/// Where a shop's services reach their brokers.
#[derive(Clone, Debug)]
pub struct Brokers {
    /// PostgreSQL (`DATABASE_URL`).
    pub database_url: String,
    /// RabbitMQ (`AMQP_ADDR`).
    pub amqp: String,
    /// The Kafka-API broker (`KAFKA_BROKERS`).
    pub kafka: String,
}

impl Brokers {
    /// The brokers every test shares, from the environment or the local defaults.
    pub fn shared() -> Brokers {
        Brokers {
            database_url: infra::database_url(),
            amqp: infra::amqp_addr(),
            kafka: infra::kafka_brokers(),
        }
    }
}

/// A shop of its own, every service ready; `None` (with the reason printed) when the brokers
/// are not there and not required.
pub async fn start(test: &str) -> Option<Shop> {
    start_with(test, Style::Orchestration, Brokers::shared()).await
}

/// [`start`], a shop of the given style.
pub async fn start_styled(test: &str, style: Style) -> Option<Shop> {
    start_with(test, style, Brokers::shared()).await
}

/// [`start`], with the services reaching their brokers at these addresses (a proxy in front
/// of one, say).
pub async fn start_with(test: &str, style: Style, brokers: Brokers) -> Option<Shop> {
    start_logging(test, style, brokers, LogFormat::Human, &[], false).await
}

/// [`start`], every service logging one JSON object per line.
pub async fn start_json(test: &str, style: Style) -> Option<Shop> {
    start_logging(test, style, Brokers::shared(), LogFormat::Json, &[], false).await
}

/// [`start`], with two replicas of each role in `replicated`.
pub async fn start_replicated(
    test: &str,
    style: Style,
    replicated: &[Role],
) -> Option<Shop> {
    let brokers = Brokers::shared();
    start_logging(test, style, brokers, LogFormat::Human, replicated, false).await
}

/// [`start`], payments serving its gRPC reads over mutual TLS (certificates made for the test, in
/// its own directory).
pub async fn start_secured(test: &str, style: Style) -> Option<Shop> {
    start_logging(test, style, Brokers::shared(), LogFormat::Human, &[], true).await
}

async fn start_logging(
    test: &str,
    style: Style,
    brokers: Brokers,
    log_format: LogFormat,
    replicated: &[Role],
    mutual_tls: bool,
) -> Option<Shop> {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let names = Names::new(&format!("t{}_{}", &tag[..8], test));
    let tls = mutual_tls.then(|| {
        let dir = std::env::temp_dir().join(format!("{}-tls", names.prefix));
        shop::identity::issue(&dir).unwrap();
        Tls { dir, payments: format!("127.0.0.1:{}", free_port()) }
    });
    let env = Env {
        style,
        kafka: brokers.kafka,
        names,
        database_url: brokers.database_url,
        amqp: brokers.amqp,
        addrs: free_addrs(replicated, 2),
        listen: None,
        replica: 1,
        tls,
        log_format,
    };
    let seed = shop::shop::seed();
    if let Err(error) = shop::cli::preflight(&env, &seed).await {
        let brokers = match style {
            Style::Orchestration => "PostgreSQL and RabbitMQ",
            Style::Choreography => "PostgreSQL and the Kafka-API broker",
        };
        let addr = match style {
            Style::Orchestration => &env.amqp,
            Style::Choreography => &env.kafka,
        };
        let at = format!("{} and {addr}", env.database_url);
        infra::unavailable(brokers, &at, format!("{error:#}"));
        return None;
    }
    let logs = std::env::temp_dir().join(&env.names.prefix);
    eprintln!("{test}: the services' logs are in {}", logs.display());
    let key = gateway::Secret::random().expose().to_vec();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_shop"));
    let supervisor =
        Supervisor::start(exe, &env, &encode_hex(&key), &Output::Files(logs))
            .unwrap();
    supervisor.wait_all_ready(Duration::from_secs(60)).await.unwrap();
    let client = Client::new(env.url(Role::Gateway), &key).unwrap();
    Some(Shop { supervisor, client, key, placed: vec![] })
}

impl Shop {
    pub fn env(&self) -> &Env {
        self.supervisor.env()
    }

    /// Places `batch` and follows every checkout to its end; `fault` runs alongside.
    pub async fn run_batch(
        &self,
        batch: Vec<Planned>,
        fault: impl Future<Output = anyhow::Result<()>>,
    ) -> Vec<(Planned, CheckoutView)> {
        let client = &self.client;
        let traffic = async {
            for placed in futures::future::join_all(
                batch.iter().map(|p| client.place(p, Duration::from_secs(60))),
            )
            .await
            {
                placed?;
            }
            let following = batch.iter().map(|p| async move {
                let view = client.follow(p, Duration::from_secs(120)).await?;
                anyhow::Ok((p.clone(), view))
            });
            futures::future::try_join_all(following).await
        };
        let (placed, faulted) = tokio::join!(traffic, fault);
        faulted.unwrap();
        placed.unwrap()
    }

    /// Every promise, from every service's own records, over all checkouts so far.
    pub async fn assert_promises_kept(&self) {
        let findings =
            scenario::check(self.env(), &shop::shop::seed(), &self.placed)
                .await
                .unwrap();
        assert!(
            findings.broken.is_empty(),
            "broken promises: {:#?}",
            findings.broken
        );
    }

    pub async fn applied(&self) -> usize {
        let pool = orchestration::pool(&self.env().database_url, 1).unwrap();
        scenario::applied_total(&pool.get().await.unwrap(), self.env())
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        let env = self.env().clone();
        let ended = self.supervisor.stop().await.unwrap();
        for end in &ended {
            assert!(
                end.status.success() && !end.killed_after_grace,
                "{} did not stop cleanly on SIGTERM: {} (killed after grace: {})",
                end.role,
                end.status,
                end.killed_after_grace
            );
        }
        shop::cli::teardown(&env).await.unwrap();
    }
}
