//! `cargo run --example checkout_restate [-- --kill-worker | --decline]`
//!
//! One checkout as a Restate workflow. The example starts the workflow's service process (itself,
//! re-executed with `--serve`), registers it with the Restate server, starts the workflow for one
//! order through the server's ingress, waits for its result, and checks the participants'
//! databases. Lines from the service process start with `[service]`.
//!
//! - `--kill-worker`: the service process is killed with SIGKILL right after payments applied
//!   the authorization and before the engine journaled it; it is started again on the same port,
//!   the server retries, the SDK replays the journal, and the checkout completes, charged once.
//! - `--decline`: the customer cannot pay; the reservation is given back.
//!
//! Needs the Restate server (`RESTATE_ADMIN_URL`, `RESTATE_INGRESS_URL`) and PostgreSQL
//! (`DATABASE_URL`): `cargo xtask brokers up` starts both.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use orchestration::participant::{self, Names, PARTICIPANTS};
use orchestration::saga::Terminal;
use restate_checkout::engine::Engine;
use restate_checkout::faults::{Crash, PAUSED};
use restate_checkout::participants::{setup, teardown};
use restate_checkout::service::{self, Launch, Options, ServiceProcess};
use shop_domain::{Line, OrderPlaced, Seed, Service};
use tracing::{info, warn};

fn main() -> ExitCode {
    // The service process: this same program, started again by the example.
    if std::env::args().nth(1).as_deref() == Some("--serve") {
        return service::main(1);
    }
    infra::example::init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("checkout_restate: no tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("checkout_restate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let flags = infra::example::Flags::parse(&["--kill-worker", "--decline"])
        .map_err(anyhow::Error::msg)?;
    let (kill, decline) = (flags.has("--kill-worker"), flags.has("--decline"));
    let engine = Engine::from_env()?;
    let version = match engine.version().await {
        Ok(version) => version,
        Err(e) => {
            eprintln!(
                "checkout_restate needs the Restate server at {} ({e}): start it with \
                 `cargo xtask brokers up`",
                engine.admin()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let url = infra::database_url();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let names = Names::new(&format!("rsdemo{}", &tag[..8]));
    let seed = Seed {
        stock: vec![("kettle".into(), 5)],
        balances: vec![("c-ada".into(), if decline { 1_000 } else { 10_000 })],
        destinations: vec!["NL".into()],
    };
    match tokio::time::timeout(Duration::from_secs(10), setup(&url, &names, &seed))
        .await
    {
        Ok(Ok(())) => {}
        why => {
            let why = match why {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer in 10 s".into(),
            };
            eprintln!(
                "checkout_restate needs PostgreSQL at {url} ({why}): start it with \
                 `cargo xtask brokers up`"
            );
            return Ok(ExitCode::from(2));
        }
    }
    info!("Restate {version} answers at {}", engine.admin());
    let launch = Launch {
        program: std::env::current_exe().context("where is this program?")?,
        leading: vec!["--serve".into()],
        options: Options {
            prefix: names.prefix.clone(),
            port: 0,
            // Payments (step 2) applied, its reply not yet in the journal.
            crash: kill.then_some(Crash::AfterEffect(1)),
            patience_ms: 30_000,
        },
        echo: true,
        quiet: false,
    };
    let mut service = ServiceProcess::start(&launch).await?;
    let deployment = engine.register(&service.uri()).await?;
    info!("registered {} with Restate as the deployment of Checkout", service.uri());
    let order = OrderPlaced {
        order_id: "o-1001".into(),
        customer_id: "c-ada".into(),
        lines: vec![Line { sku: "kettle".into(), quantity: 2 }],
        total_cents: 5_800,
        ship_to: "NL".into(),
    };
    // One workflow per order: the key is the order's id within this run's shop.
    let key = format!("{}-{}", names.prefix, order.order_id);
    engine.start(&key, &order).await?;
    info!("started workflow Checkout/{key} for order {}", order.order_id);
    let began = Instant::now();
    if kill {
        service.wait_for(PAUSED, Duration::from_secs(30)).await?;
        let pid = service.pid().context("the service process is gone already")?;
        service.kill().await?;
        warn!("killed the service process (pid {pid}) with SIGKILL mid-saga");
        service.restart().await?;
        let pid =
            service.pid().context("the new service process is gone already")?;
        info!(
            "started it again (pid {pid}) on {}: Restate retries the invocation",
            service.addr
        );
    }
    let end = engine.outcome(&key).await?;
    info!(
        "workflow Checkout/{key} ended {end:?} after {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let checked = check(&url, &names, &key, decline, &end).await;
    service.stop().await?;
    engine.unregister(&deployment).await?;
    teardown(&url, &names).await?;
    checked?;
    Ok(ExitCode::SUCCESS)
}

/// Checks the participants' databases against what this run should produce.
async fn check(
    url: &str,
    names: &Names,
    saga: &str,
    decline: bool,
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
    let prefix = format!("{saga}/");
    let applied: Vec<&str> = applied
        .iter()
        .map(|(id, _)| id.strip_prefix(&prefix).unwrap_or(id))
        .collect();
    info!("commands applied, in order: {}", applied.join(", "));
    let once = applied.len()
        == applied.iter().collect::<std::collections::HashSet<_>>().len();
    if decline {
        let reverse = applied.last() == Some(&"0/undo");
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
