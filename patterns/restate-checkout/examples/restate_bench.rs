//! `cargo run --release --example restate_bench [-- SAGAS IN_FLIGHT]`
//!
//! The same checkouts three ways, on one machine: the orchestration chapter's orchestrator with
//! its saga log in PostgreSQL, the same with the log in memory (both with their participants over
//! RabbitMQ), and the Restate workflow of this crate (its service process applying the steps at
//! the participants' databases). Prints sagas completed per second and the latency of a saga
//! (start to completion), p50 and p99, for each; then the time from a crash to the end of the
//! saga it interrupted, for the book's orchestrator and for Restate. One run on one machine: a
//! figure to compare, not a capacity plan.
//!
//! Needs PostgreSQL, RabbitMQ and the Restate server: `cargo xtask brokers up`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use orchestration::faults::{Crash as OrchestratorCrash, CrashingLog};
use orchestration::log::{MemLog, PgLog, SagaLog};
use orchestration::orchestrator::{Config, Orchestrator};
use orchestration::participant::{self, Names, PARTICIPANTS, Quirks, serve};
use orchestration::saga::Terminal;
use restate_checkout::engine::Engine;
use restate_checkout::faults::{Crash, PAUSED};
use restate_checkout::participants::{setup, teardown};
use restate_checkout::service::{self, Launch, Options, ServiceProcess};
use shop_domain::{Line, OrderPlaced, Seed};
use tracing::info;

/// Throughput and latency of one run.
struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn figures(label: &str, mut latencies: Vec<Duration>, elapsed: Duration) -> Figures {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[i]
    };
    let figures = Figures {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    };
    info!(
        "{label}: {} sagas in {:.2} s: {:.0} sagas/s, p50 {:.1} ms, p99 {:.1} ms",
        latencies.len(),
        elapsed.as_secs_f64(),
        figures.per_second,
        figures.p50.as_secs_f64() * 1000.0,
        figures.p99.as_secs_f64() * 1000.0
    );
    figures
}

fn order(i: usize) -> OrderPlaced {
    OrderPlaced {
        order_id: format!("b-{i}"),
        customer_id: format!("c-{}", i % 16),
        lines: vec![Line { sku: "kettle".into(), quantity: 1 }],
        total_cents: 100,
        ship_to: "NL".into(),
    }
}

fn seed() -> Seed {
    Seed {
        stock: vec![("kettle".into(), 1_000_000)],
        balances: (0..16).map(|c| (format!("c-{c}"), 1_000_000_000)).collect(),
        destinations: vec!["NL".into()],
    }
}

fn config(names: &Names, amqp: &str) -> Config {
    Config {
        name: "bench".into(),
        amqp: amqp.to_owned(),
        names: names.clone(),
        timeout: Duration::from_secs(30),
        lease: Duration::from_secs(60),
        workers: 8,
    }
}

/// The book's orchestrator: `sagas` checkouts, `in_flight` at a time.
async fn orchestrator<L: SagaLog>(
    label: &str,
    names: &Names,
    log: L,
    sagas: usize,
    in_flight: usize,
) -> anyhow::Result<Figures> {
    let (url, amqp) = (infra::database_url(), infra::amqp_addr());
    let mut services = vec![];
    for p in PARTICIPANTS {
        services.push(serve(
            p,
            url.clone(),
            amqp.clone(),
            names.clone(),
            Quirks::default(),
        ));
    }
    let mut orchestrator =
        Orchestrator::start(config(names, &amqp), Arc::new(log)).await?;
    let mut started: HashMap<String, Instant> = HashMap::new();
    let mut latencies = vec![];
    let (begin, mut next) = (Instant::now(), 0);
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
    Ok(figures(label, latencies, elapsed))
}

/// The Restate workflow: `sagas` checkouts, `in_flight` at a time, each one
/// request to the ingress that returns when the workflow has ended.
async fn restate(
    engine: &Engine,
    names: &Names,
    sagas: usize,
    in_flight: usize,
) -> anyhow::Result<Figures> {
    let mut calls = FuturesUnordered::new();
    let mut latencies = vec![];
    let (begin, mut next) = (Instant::now(), 0);
    while latencies.len() < sagas {
        while next < sagas && calls.len() < in_flight {
            let (order, engine) = (order(next), engine.clone());
            let key = format!("{}-{}", names.prefix, order.order_id);
            calls.push(async move {
                let at = Instant::now();
                let end = engine.checkout(&key, &order).await;
                (key, end, at.elapsed())
            });
            next += 1;
        }
        let Some((key, end, took)) = calls.next().await else {
            bail!("no call in flight")
        };
        match end? {
            Terminal::Completed => latencies.push(took),
            other => bail!("{key} ended {other:?}"),
        }
    }
    Ok(figures("Restate workflow", latencies, begin.elapsed()))
}

/// From the moment the book's orchestrator dies (payments replied, the reply
/// not logged) to the end of the saga, with a new orchestrator started at once.
async fn orchestrator_resume(
    names: &Names,
    log: Arc<PgLog>,
    i: usize,
) -> anyhow::Result<Duration> {
    let (url, amqp) = (infra::database_url(), infra::amqp_addr());
    let mut services = vec![];
    for p in PARTICIPANTS {
        services.push(serve(
            p,
            url.clone(),
            amqp.clone(),
            names.clone(),
            Quirks::default(),
        ));
    }
    let crashing =
        CrashingLog::new(Arc::clone(&log), OrchestratorCrash::BeforeOutcome(1));
    let first =
        Orchestrator::start(config(names, &amqp), Arc::new(crashing)).await?;
    let saga = first.checkout(order(i)).await?;
    let died = tokio::time::timeout(Duration::from_secs(60), first.task).await;
    let crashed = Instant::now();
    if !matches!(died, Ok(Ok(Err(_)))) {
        bail!("the orchestrator was to crash and did not");
    }
    let mut second = Orchestrator::start(config(names, &amqp), log).await?;
    loop {
        let next =
            tokio::time::timeout(Duration::from_secs(60), second.next_finished());
        match next.await.context("the saga did not finish within 60 s")? {
            Some((id, Terminal::Completed)) if id == saga => break,
            Some((id, end)) if id == saga => bail!("{id} ended {end:?}"),
            Some(_) => continue,
            None => bail!("the orchestrator stopped"),
        }
    }
    let took = crashed.elapsed();
    second.stop().await?;
    for task in services {
        task.stop().await?;
    }
    Ok(took)
}

/// From the SIGKILL of the service process (payments applied, not journaled)
/// to the end of the saga, with the process started again at once.
async fn restate_resume(
    engine: &Engine,
    names: &Names,
    service: &mut ServiceProcess,
    i: usize,
) -> anyhow::Result<Duration> {
    // A process with the crash planned, on the port the server knows.
    service.kill().await?;
    let mut launch = launch(names)?;
    (launch.options.port, launch.options.crash) =
        (service.addr.port(), Some(Crash::AfterEffect(1)));
    *service = ServiceProcess::start(&launch).await?;
    let order = order(i);
    let key = format!("{}-{}", names.prefix, order.order_id);
    engine.start(&key, &order).await?;
    service.wait_for(PAUSED, Duration::from_secs(60)).await?;
    let killed = Instant::now();
    service.kill().await?;
    service.restart().await?;
    match engine.outcome(&key).await? {
        Terminal::Completed => Ok(killed.elapsed()),
        other => bail!("{key} ended {other:?}"),
    }
}

fn launch(names: &Names) -> anyhow::Result<Launch> {
    Ok(Launch {
        program: std::env::current_exe().context("where is this program?")?,
        leading: vec!["--serve".into()],
        options: Options {
            prefix: names.prefix.clone(),
            port: 0,
            crash: None,
            patience_ms: 30_000,
        },
        echo: false,
        quiet: true,
    })
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--serve") {
        return service::main(1);
    }
    // The per-step narration would cost more than what is measured: only the
    // figures (and warnings) are printed.
    // The book's orchestrator warns when it crashes on purpose; here that is
    // the plan, and its lines would bury the figures.
    let quiet = "warn,restate_bench=info,orchestration::faults=error,\
                 orchestration::orchestrator=error";
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| quiet.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .init();
    let result = tokio::runtime::Runtime::new()
        .context("no tokio runtime")
        .and_then(|runtime| runtime.block_on(run()));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("restate_bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().with_context(|| format!("{a:?} is not a count")))
        .collect::<anyhow::Result<_>>()?;
    let sagas = args.first().copied().unwrap_or(400);
    let in_flight = args.get(1).copied().unwrap_or(32);
    let (url, amqp) = (infra::database_url(), infra::amqp_addr());
    let engine = Engine::from_env()?;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let [durable, memory, engined, crashes] = ["bpg", "bmem", "brs", "bkill"]
        .map(|p| Names::new(&format!("{p}{}", &tag[..8])));
    let ready = async {
        engine.version().await?;
        for names in [&durable, &memory, &crashes] {
            participant::setup(&url, &amqp, names, &seed()).await?;
        }
        setup(&url, &engined, &seed()).await?;
        anyhow::Ok(())
    };
    if let Err(e) = ready.await {
        eprintln!(
            "restate_bench needs PostgreSQL at {url}, RabbitMQ at {amqp} and the Restate server \
             at {} ({e:#}): start them with `cargo xtask brokers up`",
            engine.admin()
        );
        return Ok(ExitCode::from(2));
    }
    info!("{sagas} checkouts of 4 steps each, {in_flight} in flight");
    let log =
        PgLog::connect(&url, &durable.log_schema(), Duration::from_secs(60)).await?;
    let pg = orchestrator(
        "orchestrator, PostgreSQL log",
        &durable,
        log,
        sagas,
        in_flight,
    )
    .await?;
    let mem = orchestrator(
        "orchestrator, in-memory log",
        &memory,
        MemLog::default(),
        sagas,
        in_flight,
    )
    .await?;
    let mut service = ServiceProcess::start(&launch(&engined)?).await?;
    let deployment = engine.register(&service.uri()).await?;
    let rs = restate(&engine, &engined, sagas, in_flight).await?;
    info!(
        "Restate: {:.2}x the throughput of the orchestrator with its PostgreSQL log \
         ({:.2}x of the in-memory one), {:.2}x its p50 latency",
        rs.per_second / pg.per_second,
        rs.per_second / mem.per_second,
        rs.p50.as_secs_f64() / pg.p50.as_secs_f64()
    );
    const KILLS: usize = 5;
    let log = Arc::new(
        PgLog::connect(&url, &crashes.log_schema(), Duration::from_secs(60)).await?,
    );
    let mut theirs = vec![];
    let mut ours = vec![];
    for i in 0..KILLS {
        ours.push(orchestrator_resume(&crashes, Arc::clone(&log), sagas + i).await?);
        theirs
            .push(restate_resume(&engine, &engined, &mut service, sagas + i).await?);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (ours_max, theirs_max) =
        (ours.iter().max().copied(), theirs.iter().max().copied());
    info!(
        "from a crash to the end of its saga ({KILLS} kills each, median and max): \
         orchestrator {:.0} ms, {:.0} ms; Restate {:.0} ms, {:.0} ms",
        ms(median(ours)),
        ms(ours_max.unwrap_or_default()),
        ms(median(theirs)),
        ms(theirs_max.unwrap_or_default())
    );
    service.stop().await?;
    engine.unregister(&deployment).await?;
    for names in [&durable, &memory, &crashes] {
        participant::teardown(&url, &amqp, names, &["bench"]).await?;
    }
    teardown(&url, &engined).await?;
    Ok(ExitCode::SUCCESS)
}
