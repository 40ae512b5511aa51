//! End-to-end checkout latency through the choreography: from the customer's request (the orders
//! service's commit) to the order's confirmation, across four services, four outbox relays and
//! four Kafka hops. Measured, never asserted: the numbers belong to the machine and the broker.
//!
//! Run it: `cargo run --release --example choreography_bench`
//!         (`-- --checkouts 100 --rate 20 --burst 400` to change the load)
//!
//! Two phases, on one shop: `--checkouts` checkouts at a steady `--rate` per second (latency with
//! little queueing: p50 and p99), then `--burst` checkouts placed at once (throughput, and the
//! latency a queue adds). Needs Kafka and PostgreSQL, like `checkout_choreography`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use choreography::shop::{Config, Shop, correlation_id};
use shop_domain::{Kind, Line, OrderPlaced, Seed, Service};
use tokio::sync::mpsc;
use tracing::info;

/// Reads `--name N` from the command line, or `default`.
fn arg(name: &str, default: u64) -> anyhow::Result<u64> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for (i, a) in args.iter().enumerate() {
        if !["--checkouts", "--rate", "--burst"].contains(&a.as_str())
            && a.starts_with("--")
        {
            bail!(
                "unknown argument {a:?}; this example knows --checkouts, --rate, --burst"
            );
        }
        if a == name {
            let value = args.get(i + 1).context("a number after {name}")?;
            return value.parse().with_context(|| format!("{name} {value}"));
        }
    }
    Ok(default)
}

fn order(i: u64) -> OrderPlaced {
    OrderPlaced {
        order_id: format!("o-{i}"),
        customer_id: "c-bench".into(),
        lines: vec![Line { sku: "kettle".into(), quantity: 1 }],
        total_cents: 2899,
        ship_to: "NL".into(),
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    // Only the results: the services' narration would be thousands of lines.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: no other thread exists yet that could read the environment.
        unsafe { std::env::set_var("RUST_LOG", "warn,choreography_bench=info") };
    }
    infra::example::init_logging();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let (checkouts, rate, burst) =
        (arg("--checkouts", 60)?, arg("--rate", 20)?.max(1), arg("--burst", 300)?);
    let (brokers, url) = (infra::kafka_brokers(), infra::database_url());
    let listening = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(infra::first_kafka_broker()),
    )
    .await;
    if !matches!(listening, Ok(Ok(_))) {
        bail!(
            "Kafka does not answer at {brokers}: start the brokers with `cargo xtask brokers up` \
             (or `docker compose up -d --wait`)"
        );
    }
    // One connection, to name the server; the shop's services own their pools.
    let pool = outbox::pool(&url, 1)?;
    let client = pool.get().await.with_context(|| {
        format!("PostgreSQL does not answer at {url}: run `cargo xtask brokers up`")
    })?;
    let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    drop((client, pool));
    info!("PostgreSQL {version}; Kafka API broker at {brokers}");

    let seed = Seed {
        stock: vec![("kettle".into(), 1_000_000)],
        balances: vec![("c-bench".into(), 1 << 40)],
        destinations: vec!["NL".into()],
    };
    let shop = Shop::start(Config::new(&brokers, &url, "bench", seed)).await?;
    // Confirmation times, as the orders service commits them.
    let (tx, mut confirmed) = mpsc::unbounded_channel();
    let mut notices = shop.notices();
    tokio::spawn(async move {
        while let Ok(notice) = notices.recv().await {
            let done = notice.service == Service::Orders
                && notice.emitted.contains(&Kind::OrderConfirmed);
            if done && tx.send((notice.order_id, Instant::now())).is_err() {
                return;
            }
        }
    });

    // Warm-up: the consumers join their groups and the producers learn the topics.
    shop.place(order(0), &correlation_id()).await?;
    shop.settle(&["o-0"], Duration::from_secs(60)).await?;
    while confirmed.try_recv().is_ok() {}

    let mut started = HashMap::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    for i in 1..=checkouts {
        ticks.tick().await;
        started.insert(format!("o-{i}"), Instant::now());
        shop.place(order(i), &correlation_id()).await?;
    }
    let mut paced = collect(&mut confirmed, &started).await?;
    paced.sort();
    info!(
        "paced, {checkouts} checkouts at {rate}/s: p50 {}, p99 {}, max {}",
        ms(percentile(&paced, 50.0)),
        ms(percentile(&paced, 99.0)),
        ms(percentile(&paced, 100.0)),
    );

    let mut started = HashMap::new();
    let began = Instant::now();
    for i in checkouts + 1..=checkouts + burst {
        started.insert(format!("o-{i}"), Instant::now());
        shop.place(order(i), &correlation_id()).await?;
    }
    let mut bursty = collect(&mut confirmed, &started).await?;
    let elapsed = began.elapsed();
    bursty.sort();
    info!(
        "burst, {burst} checkouts at once: {:.0} checkouts/s; p50 {}, p99 {}",
        burst as f64 / elapsed.as_secs_f64(),
        ms(percentile(&bursty, 50.0)),
        ms(percentile(&bursty, 99.0)),
    );
    let stats = shop.stats();
    let duplicates = stats.total(|c| &c.duplicates);
    info!(
        "done: {} checkouts confirmed, {duplicates} duplicates",
        checkouts + burst + 1
    );
    shop.shut_down().await?;
    Ok(())
}

/// Waits for every order in `started` to be confirmed; returns the latencies.
async fn collect(
    confirmed: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    started: &HashMap<String, Instant>,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    while latencies.len() < started.len() {
        let next = tokio::time::timeout(Duration::from_secs(120), confirmed.recv());
        let (order_id, at) = next.await?.context("the shop stopped")?;
        if let Some(t0) = started.get(&order_id) {
            latencies.push(at - *t0);
        }
    }
    Ok(latencies)
}
