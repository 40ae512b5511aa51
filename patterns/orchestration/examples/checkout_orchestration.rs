//! `cargo run --example checkout_orchestration [-- --decline | --crash-after-step N |
//! --slow-shipping]`
//!
//! One checkout driven by an orchestrator: inventory, payments, shipping and orders run as
//! services on RabbitMQ with their own PostgreSQL schemas, the orchestrator logs every decision in
//! PostgreSQL. It narrates each step and checks where everything ended.
//!
//! - `--decline`: the customer cannot pay; the reservation is given back.
//! - `--crash-after-step N` (1 to 4): the orchestrator dies when step N's reply arrives, before
//!   logging it; a new one resumes from the log, sends step N again, and finishes.
//! - `--slow-shipping`: shipping answers late, after the timeout; the step is after the pivot, so
//!   it is retried with the same command id, and the shipment is scheduled once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use orchestration::faults::{Crash, CrashingLog};
use orchestration::log::{LogError, PgLog};
use orchestration::orchestrator::{Config, Orchestrator, RunError};
use orchestration::participant::{self, Names, PARTICIPANTS, Quirks, serve, setup};
use orchestration::saga::Terminal;
use shop_domain::{Line, OrderPlaced, Seed, Service};
use tracing::{info, warn};

struct Options {
    decline: bool,
    crash: Option<usize>,
    slow_shipping: bool,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options { decline: false, crash: None, slow_shipping: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--decline" => options.decline = true,
            "--slow-shipping" => options.slow_shipping = true,
            "--crash-after-step" => {
                let usage = "--crash-after-step takes a step number from 1 to 4";
                let n: usize = args.next().context(usage)?.parse().context(usage)?;
                if !(1..=4).contains(&n) {
                    bail!(usage);
                }
                options.crash = Some(n);
            }
            other => bail!(
                "unknown argument {other:?}; this example knows --decline, \
                 --crash-after-step N, --slow-shipping"
            ),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let options = options()?;
    let (url, amqp) = (infra::database_url(), infra::amqp_addr());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let names = Names::new(&format!("demo{}", &tag[..8]));
    let seed = Seed {
        stock: vec![("kettle".into(), 5)],
        balances: vec![(
            "c-ada".into(),
            if options.decline { 1_000 } else { 10_000 },
        )],
        destinations: vec!["NL".into()],
    };
    let ready = async {
        setup(&url, &amqp, &names, &seed).await?;
        anyhow::Ok(
            PgLog::connect(&url, &names.log_schema(), Duration::from_secs(30))
                .await?,
        )
    };
    let log = match tokio::time::timeout(Duration::from_secs(10), ready).await {
        Ok(Ok(log)) => Arc::new(log),
        why => {
            let why = match why {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer in 10 s".into(),
            };
            eprintln!(
                "checkout_orchestration needs PostgreSQL at {url} and RabbitMQ at {amqp} \
                 ({why}): start them with `cargo xtask brokers up` (or `docker compose up -d --wait`)"
            );
            std::process::exit(2);
        }
    };
    let mut services = vec![];
    for participant in PARTICIPANTS {
        let quirks = match participant {
            Service::Shipping if options.slow_shipping => {
                Quirks { slow_first_reply: Some(Duration::from_millis(1200)) }
            }
            _ => Quirks::default(),
        };
        let (url, amqp, names) = (url.clone(), amqp.clone(), names.clone());
        services.push(serve(participant, url, amqp, names, quirks));
    }
    let config = Config {
        name: "orchestrator-1".into(),
        amqp: amqp.clone(),
        names: names.clone(),
        timeout: Duration::from_millis(if options.slow_shipping {
            500
        } else {
            5000
        }),
        lease: Duration::from_secs(30),
        workers: 4,
    };
    let order = OrderPlaced {
        order_id: "o-1001".into(),
        customer_id: "c-ada".into(),
        lines: vec![Line { sku: "kettle".into(), quantity: 2 }],
        total_cents: 5_800,
        ship_to: "NL".into(),
    };
    // The crash is planned in the log the first orchestrator writes to: it
    // dies when the log is asked to record step N's reply.
    let mut orchestrator = match options.crash {
        Some(n) => {
            let plan = Crash::BeforeOutcome(n - 1);
            let crashing = Arc::new(CrashingLog::new(Arc::clone(&log), plan));
            Orchestrator::start(config.clone(), crashing).await?
        }
        None => Orchestrator::start(config.clone(), Arc::clone(&log)).await?,
    };
    let saga = orchestrator.checkout(order.clone()).await?;
    if options.crash.is_some() {
        match orchestrator.task.await? {
            Err(RunError::Log(died @ LogError::Crashed(_))) => {
                warn!("orchestrator-1 is gone ({died}); starting it again");
            }
            other => bail!("orchestrator-1 was to crash, and ended with {other:?}"),
        }
        orchestrator = Orchestrator::start(config, Arc::clone(&log)).await?;
    }
    let end = loop {
        let next = tokio::time::timeout(
            Duration::from_secs(60),
            orchestrator.next_finished(),
        );
        match next.await.context("the saga did not finish within 60 s")? {
            Some((id, end)) if id == saga => break end,
            Some(_) => continue,
            None => bail!("the orchestrator stopped"),
        }
    };
    check(&url, &names, &options, &end).await?;
    orchestrator.stop().await?;
    for service in services {
        service.stop().await?;
    }
    participant::teardown(&url, &amqp, &names, &["orchestrator-1"]).await?;
    Ok(())
}

/// Checks the end state against what this run should produce.
async fn check(
    url: &str,
    names: &Names,
    options: &Options,
    end: &Terminal,
) -> anyhow::Result<()> {
    let pool = orchestration::pool(url, 1)?;
    let db = pool.get().await?;
    let stock: u32 =
        participant::record(&db, names, Service::Inventory, "stock:kettle")
            .await?
            .context("no stock record")?;
    let balance: u64 =
        participant::record(&db, names, Service::Payments, "balance:c-ada")
            .await?
            .context("no balance")?;
    let mut applied = vec![];
    for p in PARTICIPANTS {
        applied.extend(participant::applied(&db, names, p).await?);
    }
    applied.sort_by_key(|(_, at)| *at);
    let applied: Vec<String> = applied.into_iter().map(|(id, _)| id).collect();
    info!("commands applied, in order: {}", applied.join(", "));
    let once = applied.len()
        == applied.iter().collect::<std::collections::HashSet<_>>().len();
    if options.decline {
        let reverse = applied.last().is_some_and(|id| id.ends_with("/0/undo"));
        if *end == Terminal::Completed
            || stock != 5
            || balance != 1_000
            || !reverse
            || !once
        {
            bail!("unexpected end: {end:?}, stock {stock}, balance {balance}");
        }
        info!("done: payment declined, the reservation given back, nothing charged");
    } else {
        if *end != Terminal::Completed || stock != 3 || balance != 4_200 || !once {
            bail!("unexpected end: {end:?}, stock {stock}, balance {balance}");
        }
        info!("done: order confirmed; 2 kettles taken and 58.00 charged, each once");
    }
    Ok(())
}
