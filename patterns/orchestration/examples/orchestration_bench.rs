//! `cargo run --release --example orchestration_bench [-- SAGAS IN_FLIGHT WORKERS]`
//!
//! What the durable log costs: the same checkouts through the same orchestrator, participants
//! and RabbitMQ, with the saga log in PostgreSQL and in memory, each with the orchestrator's
//! sagas spread over WORKERS workers (8 unless told); and first the PostgreSQL log with one
//! worker, which handles every input of every saga in turn. Prints sagas completed per second
//! and the latency of a saga (start to completion), p50 and p99, for each. One run on one
//! machine: a figure to compare the three, not a capacity plan.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use orchestration::log::{MemLog, PgLog, SagaLog};
use orchestration::orchestrator::{Config, Orchestrator};
use orchestration::participant::{Names, PARTICIPANTS, Quirks, serve, setup};
use orchestration::saga::Terminal;
use shop_domain::{Line, OrderPlaced, Seed};
use tracing::info;

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn run<L: SagaLog>(
    label: &str,
    names: &Names,
    log: L,
    sagas: usize,
    in_flight: usize,
    workers: usize,
) -> anyhow::Result<Figures> {
    let (url, amqp) = (infra::database_url(), infra::amqp_addr());
    let mut services = vec![];
    for participant in PARTICIPANTS {
        let task = serve(
            participant,
            url.clone(),
            amqp.clone(),
            names.clone(),
            Quirks::default(),
        );
        services.push(task);
    }
    let config = Config {
        name: "bench".into(),
        amqp,
        names: names.clone(),
        timeout: Duration::from_secs(30),
        lease: Duration::from_secs(60),
        workers,
    };
    let mut orchestrator = Orchestrator::start(config, Arc::new(log)).await?;
    let order = |i: usize| OrderPlaced {
        order_id: format!("b-{i}"),
        customer_id: format!("c-{}", i % 16),
        lines: vec![Line { sku: "kettle".into(), quantity: 1 }],
        total_cents: 100,
        ship_to: "NL".into(),
    };
    let mut started: HashMap<String, Instant> = HashMap::new();
    let mut latencies = vec![];
    let begin = Instant::now();
    let mut next = 0;
    while latencies.len() < sagas {
        while next < sagas && started.len() < in_flight {
            let id = orchestrator.checkout(order(next)).await?;
            started.insert(id, Instant::now());
            next += 1;
        }
        let wait = tokio::time::timeout(
            Duration::from_secs(60),
            orchestrator.next_finished(),
        );
        let Some((id, end)) = wait.await.context("no saga finished within 60 s")?
        else {
            bail!("the orchestrator stopped");
        };
        if end != Terminal::Completed {
            bail!("{id} ended {end:?}");
        }
        if let Some(at) = started.remove(&id) {
            latencies.push(at.elapsed());
        }
    }
    let elapsed = begin.elapsed();
    orchestrator.stop().await?;
    for task in services {
        task.stop().await?;
    }
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)]
    };
    let figures = Figures {
        per_second: sagas as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    };
    info!(
        "{label}: {sagas} sagas in {:.2} s: {:.0} sagas/s, p50 {:.1} ms, p99 {:.1} ms",
        elapsed.as_secs_f64(),
        figures.per_second,
        figures.p50.as_secs_f64() * 1000.0,
        figures.p99.as_secs_f64() * 1000.0
    );
    Ok(figures)
}

fn seed() -> Seed {
    Seed {
        stock: vec![("kettle".into(), 1_000_000)],
        balances: (0..16).map(|c| (format!("c-{c}"), 1_000_000_000)).collect(),
        destinations: vec!["NL".into()],
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The per-step narration would cost more than what is measured: only the
    // figures (and warnings) are printed.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,orchestration_bench=info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().with_context(|| format!("{a:?} is not a count")))
        .collect::<anyhow::Result<_>>()?;
    let sagas = args.first().copied().unwrap_or(400);
    let in_flight = args.get(1).copied().unwrap_or(32);
    let workers = args.get(2).copied().unwrap_or(8);
    let (url, amqp) = (infra::database_url(), infra::amqp_addr());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let shops =
        ["bone", "bpg", "bmem"].map(|s| Names::new(&format!("{s}{}", &tag[..8])));
    for names in &shops {
        if let Err(e) = setup(&url, &amqp, names, &seed()).await {
            eprintln!(
                "orchestration_bench needs PostgreSQL at {url} and RabbitMQ at {amqp} ({e}): \
                 start them with `cargo xtask brokers up` (or `docker compose up -d --wait`)"
            );
            std::process::exit(2);
        }
    }
    info!("{sagas} checkouts of 4 steps each, {in_flight} in flight");
    let [one, durable, memory] = &shops;
    let lease = Duration::from_secs(60);
    let log = PgLog::connect(&url, &one.log_schema(), lease).await?;
    let label = "durable log (PostgreSQL), 1 worker";
    let serial = run(label, one, log, sagas, in_flight, 1).await?;
    let log = PgLog::connect(&url, &durable.log_schema(), lease).await?;
    let label = format!("durable log (PostgreSQL), {workers} workers");
    let pg = run(&label, durable, log, sagas, in_flight, workers).await?;
    let label = format!("in-memory log, {workers} workers");
    let mem =
        run(&label, memory, MemLog::default(), sagas, in_flight, workers).await?;
    info!(
        "{workers} workers over 1: {:.2}x the throughput, {:.2}x the p50 latency",
        pg.per_second / serial.per_second,
        pg.p50.as_secs_f64() / serial.p50.as_secs_f64()
    );
    info!(
        "durability costs: {:.2}x the throughput, {:.2}x the p50 latency \
         (the durable log makes {:.0}% of the in-memory log's sagas/s)",
        mem.per_second / pg.per_second,
        pg.p50.as_secs_f64() / mem.p50.as_secs_f64(),
        100.0 * pg.per_second / mem.per_second
    );
    for names in &shops {
        orchestration::participant::teardown(&url, &amqp, names, &["bench"]).await?;
    }
    Ok(())
}
