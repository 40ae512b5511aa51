//! The capstone's benchmark: checkouts per second and end-to-end latency through the gateway,
//! where the time of a checkout goes, and what `--chaos` costs, all measured in one run.
//!
//! A checkout's latency runs from just before the client's `POST /checkouts` to the moment the
//! saga log records its end (`finished_at`, PostgreSQL's clock on the same machine). Where the time
//! goes is read from the services' own records: the log's `created_at`, each participant's
//! `applied_at` for the command of each step, and `finished_at`. Each segment is the time from the
//! previous record to the next one, so it holds the hop (HTTP or RabbitMQ), the orchestrator's
//! decision and log write, and the participant's transaction.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use compare::stats::Sample;
use orchestration::participant::Names;
use shop_domain::{Kind, Line, Service};
use tracing::info;

use crate::config::{Env, Style};
use crate::roles::intake::CheckoutView;
use crate::scenario::{self, Client, Planned};
use crate::supervisor::Supervisor;

/// What one phase of the benchmark measured.
pub struct Phase {
    /// Checkouts placed (and ended).
    pub checkouts: usize,
    /// How many ended confirmed.
    pub confirmed: usize,
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// End-to-end latencies.
    pub latency: Sample,
    /// Median of each segment of a confirmed checkout, in order.
    pub segments: Vec<(&'static str, Duration)>,
}

impl Phase {
    /// Checkouts per second.
    pub fn rate(&self) -> f64 {
        self.checkouts as f64 / self.elapsed.as_secs_f64()
    }
}

/// The checkouts of a phase: Ada and Cyd buy a kettle each, in turn, so every one is confirmed
/// unless a fault turns one back.
pub fn checkouts(phase: &str, n: usize) -> Vec<Planned> {
    (0..n)
        .map(|i| {
            let customer = if i % 2 == 0 { "c-ada" } else { "c-cyd" };
            let kettle = vec![Line { sku: "kettle".into(), quantity: 1 }];
            Planned::new(format!("{phase}-{i}"), customer, kettle)
        })
        .collect()
}

/// Places `planned` with `concurrency` clients at a time, follows each to its end, and reads
/// where the time went; `fault` runs alongside.
pub async fn phase(
    supervisor: &Supervisor,
    client: &Client,
    planned: Vec<Planned>,
    concurrency: usize,
    fault: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<(Phase, Vec<(Planned, CheckoutView)>)> {
    let env = supervisor.env();
    let started = tokio::time::Instant::now();
    let work = async {
        use futures::StreamExt;
        // A closed loop: `concurrency` checkouts in flight, a new one as soon as one ends.
        let runs = futures::stream::iter(&planned)
            .map(|p| async move {
                let at = SystemTime::now();
                client.place(p, Duration::from_secs(60)).await?;
                let view = client.follow(p, Duration::from_secs(120)).await?;
                anyhow::Ok((at, p.clone(), view))
            })
            .buffer_unordered(concurrency);
        let mut runs = std::pin::pin!(runs);
        let (mut sent_at, mut ended) = (BTreeMap::new(), vec![]);
        while let Some(run) = runs.next().await {
            let (at, p, view) = run?;
            sent_at.insert(p.key.clone(), at);
            ended.push((p, view));
        }
        anyhow::Ok((sent_at, ended))
    };
    let (done, faulted) = tokio::join!(work, fault);
    faulted?;
    let (sent_at, ended) = done?;
    let elapsed = started.elapsed();
    let (latency, segments) = timings(env, &sent_at, &ended).await?;
    let confirmed = ended.iter().filter(|(_, v)| v.status == "confirmed").count();
    let phase =
        Phase { checkouts: ended.len(), confirmed, elapsed, latency, segments };
    Ok((phase, ended))
}

/// A confirmed checkout's marks, in order, for each style: the record that ends each segment.
const ORCHESTRATED: [&str; 6] = [
    "client -> gateway -> saga log",
    "-> inventory.reserve applied",
    "-> payments.authorize applied",
    "-> shipping.schedule applied",
    "-> orders.confirm applied",
    "-> saga finished",
];
const CHOREOGRAPHED: [(&str, Service, Kind); 5] = [
    ("client -> gateway -> OrderPlaced", Service::Orders, Kind::OrderPlaced),
    ("-> StockReserved", Service::Inventory, Kind::StockReserved),
    ("-> PaymentAuthorized", Service::Payments, Kind::PaymentAuthorized),
    ("-> ShipmentScheduled", Service::Shipping, Kind::ShipmentScheduled),
    ("-> OrderConfirmed", Service::Orders, Kind::OrderConfirmed),
];

/// When each checkout ended, and the marks of each confirmed one (`None` for a cancelled one),
/// read from the services' own records.
type Marks = BTreeMap<String, (SystemTime, Option<Vec<SystemTime>>)>;

async fn marks(
    env: &Env,
    ended: &[(Planned, CheckoutView)],
) -> anyhow::Result<Marks> {
    let pool = orchestration::pool(&env.database_url, 1)?;
    let db = pool.get().await?;
    let mut marks = Marks::new();
    match env.style {
        Style::Orchestration => {
            let names: &Names = &env.names;
            let sql = format!(
                "SELECT id, created_at, finished_at FROM {}.sagas \
                 WHERE finished_at IS NOT NULL",
                names.log_schema()
            );
            let mut sagas = BTreeMap::new();
            for row in db.query(&sql, &[]).await? {
                let id: String = row.try_get(0)?;
                let times: (SystemTime, SystemTime) =
                    (row.try_get(1)?, row.try_get(2)?);
                sagas.insert(id, times);
            }
            let mut applied: BTreeMap<String, SystemTime> = BTreeMap::new();
            for service in [
                Service::Inventory,
                Service::Payments,
                Service::Shipping,
                Service::Orders,
            ] {
                let sql = format!(
                    "SELECT command_id, applied_at FROM {}.inbox WHERE applied_at IS NOT NULL",
                    names.schema(service)
                );
                for row in db.query(&sql, &[]).await? {
                    applied.insert(row.try_get(0)?, row.try_get(1)?);
                }
            }
            for (planned, view) in ended {
                let id = orchestration::orchestrator::saga_id_of(&planned.key);
                let (created, finished) = *sagas
                    .get(&id)
                    .with_context(|| format!("{id} has no end in the log"))?;
                let steps = if view.status == "confirmed" {
                    let mut steps = vec![created];
                    for step in 0..4 {
                        let at =
                            applied.get(&format!("{id}/{step}/do")).with_context(
                                || format!("{id}: step {step} has no applied_at"),
                            )?;
                        steps.push(*at);
                    }
                    steps.push(finished);
                    Some(steps)
                } else {
                    None
                };
                marks.insert(planned.key.clone(), (finished, steps));
            }
        }
        Style::Choreography => {
            let schemas = choreography::Schemas::new(&env.names.prefix);
            let mut events: BTreeMap<(String, String), SystemTime> = BTreeMap::new();
            let mut last: BTreeMap<String, SystemTime> = BTreeMap::new();
            for service in Service::ALL {
                let sql = format!(
                    "SELECT aggregate_id, event_type, created_at FROM {}.outbox",
                    schemas.of(service)
                );
                for row in db.query(&sql, &[]).await? {
                    let (order, kind): (String, String) =
                        (row.try_get(0)?, row.try_get(1)?);
                    let at: SystemTime = row.try_get(2)?;
                    let latest = last.entry(order.clone()).or_insert(at);
                    *latest = (*latest).max(at);
                    events.insert((order, kind), at);
                }
            }
            for (planned, view) in ended {
                let end = *last
                    .get(&planned.key)
                    .with_context(|| format!("{} emitted nothing", planned.key))?;
                let steps = if view.status == "confirmed" {
                    let mut steps = vec![];
                    for (_, _, kind) in CHOREOGRAPHED {
                        let key = (planned.key.clone(), kind.as_str().to_owned());
                        let at = events.get(&key).with_context(|| {
                            format!("{}: no {}", planned.key, kind.as_str())
                        })?;
                        steps.push(*at);
                    }
                    Some(steps)
                } else {
                    None
                };
                marks.insert(planned.key.clone(), (end, steps));
            }
        }
    }
    Ok(marks)
}

async fn timings(
    env: &Env,
    sent_at: &BTreeMap<String, SystemTime>,
    ended: &[(Planned, CheckoutView)],
) -> anyhow::Result<(Sample, Vec<(&'static str, Duration)>)> {
    let names: Vec<&'static str> = match env.style {
        Style::Orchestration => ORCHESTRATED.to_vec(),
        Style::Choreography => {
            CHOREOGRAPHED.iter().map(|(name, _, _)| *name).collect()
        }
    };
    let marks = marks(env, ended).await?;
    let since = |later: SystemTime, earlier: SystemTime| {
        later.duration_since(earlier).unwrap_or(Duration::ZERO)
    };
    let mut latencies = vec![];
    let mut parts: Vec<Vec<Duration>> = vec![vec![]; names.len()];
    for (planned, _) in ended {
        let sent =
            *sent_at.get(&planned.key).context("a checkout was never sent")?;
        let (end, steps) =
            marks.get(&planned.key).context("a checkout has no marks")?;
        latencies.push(since(*end, sent));
        if let Some(steps) = steps {
            let mut previous = sent;
            for (i, at) in steps.iter().enumerate() {
                parts[i].push(since(*at, previous));
                previous = *at;
            }
        }
    }
    let latency = Sample::new(latencies).context("no checkout ended")?;
    let segments = names
        .into_iter()
        .zip(parts)
        .filter_map(|(name, part)| {
            Sample::new(part).map(|s| (name, s.percentile(50.0)))
        })
        .collect();
    Ok((latency, segments))
}

/// Prints a phase as the benchmark's table rows.
pub fn report(name: &str, phase: &Phase) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<8} {:>5} checkouts ({:>5} confirmed) {:>7.1} checkouts/s  p50 {:>7.1} ms  p99 {:>7.1} ms",
        phase.checkouts,
        phase.confirmed,
        phase.rate(),
        ms(phase.latency.percentile(50.0)),
        ms(phase.latency.percentile(99.0)),
    );
}

/// Prints where a confirmed checkout's time goes (medians of each segment).
pub fn report_segments(phase: &Phase) {
    let total: Duration = phase.segments.iter().map(|(_, d)| *d).sum();
    for (name, median) in &phase.segments {
        let share =
            median.as_secs_f64() / total.as_secs_f64().max(f64::EPSILON) * 100.0;
        println!(
            "  {name:<32} {:>7.1} ms  {share:>5.1}%",
            median.as_secs_f64() * 1000.0
        );
    }
}

/// Kills every role once, in a seeded order, spread over the phase's first `commands` commands.
pub async fn chaos(
    supervisor: &Supervisor,
    seed: u64,
    from: usize,
    commands: usize,
) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut roles = supervisor.env().style.roles();
    rng.shuffle(&mut roles);
    let mut points: Vec<usize> =
        roles.iter().map(|_| from + rng.usize(1..=commands)).collect();
    points.sort_unstable();
    for (role, point) in roles.iter().zip(points) {
        scenario::when_applied(supervisor.env(), point).await?;
        supervisor.kill(*role).await?;
        supervisor.wait_ready(*role, Duration::from_secs(60)).await?;
        info!("{role} killed after {point} commands and back");
    }
    Ok(())
}

/// `shop_bench [--checkouts N] [--concurrency C] [--chaos SEED]`: a clean phase and a chaos phase
/// of N checkouts each on one shop, after a warm-up, then every promise over all of them.
pub async fn main(args: Vec<String>) -> anyhow::Result<()> {
    let (mut n, mut concurrency, mut seed) = (200_usize, 16_usize, 7_u64);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a number must follow the flag");
        match arg.as_str() {
            "--checkouts" => n = value()?.parse()?,
            "--concurrency" => concurrency = value()?.parse()?,
            "--chaos" => seed = value()?.parse()?,
            other => bail!(
                "unknown argument {other:?}: --checkouts N, --concurrency C, --chaos SEED"
            ),
        }
    }
    anyhow::ensure!(n > 0 && concurrency > 0, "N and C must be positive");
    println!(
        "{n} checkouts per phase, {concurrency} at a time, through the gateway; \
         every service its own process"
    );
    for style in [Style::Orchestration, Style::Choreography] {
        one_style(style, n, concurrency, seed).await?;
    }
    Ok(())
}

async fn one_style(
    style: Style,
    n: usize,
    concurrency: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let logs = std::env::temp_dir().join(format!("shop_bench_{}", style.name()));
    let output = crate::supervisor::Output::Files(logs.clone());
    let (shop, client, env) = crate::cli::start_shop(Some(style), output).await?;
    println!("== {} (services' logs: {})", style.name(), logs.display());
    let outcome = async {
        let quiet = || async { Ok(()) };
        let warm = checkouts("warm", 32);
        let (_, mut all) = phase(&shop, &client, warm, concurrency, quiet()).await?;
        let clean = checkouts("clean", n);
        let (clean, placed) = phase(&shop, &client, clean, concurrency, quiet()).await?;
        all.extend(placed);
        let pool = orchestration::pool(&env.database_url, 1)?;
        let from = scenario::applied_total(&*pool.get().await?, &env).await?;
        // Kills spread over the first half of the phase's messages.
        let per_checkout = match style {
            Style::Orchestration => 4,
            Style::Choreography => 11,
        };
        let kills = chaos(&shop, seed, from, per_checkout * n / 2);
        let chaotic = checkouts("chaos", n);
        let (chaotic, placed) = phase(&shop, &client, chaotic, concurrency, kills).await?;
        all.extend(placed);
        report("clean", &clean);
        report("chaos", &chaotic);
        let roles = env.style.roles().len();
        println!(
            "chaos / clean: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x (seed {seed}: each of the \
             {roles} services SIGKILLed once)",
            chaotic.rate() / clean.rate(),
            ratio(chaotic.latency.percentile(50.0), clean.latency.percentile(50.0)),
            ratio(chaotic.latency.percentile(99.0), clean.latency.percentile(99.0)),
        );
        println!("where a confirmed checkout's time goes (clean phase, medians):");
        report_segments(&clean);
        let findings = scenario::check(&env, &crate::shop::seed(), &all).await?;
        if !findings.broken.is_empty() {
            bail!("promises broken: {:?}", findings.broken);
        }
        println!(
            "converged: all {} checkouts ended ({} confirmed), stock and money add up, \
             nothing dead-lettered",
            all.len(),
            all.iter().filter(|(_, v)| v.status == "confirmed").count()
        );
        anyhow::Ok(())
    }
    .await;
    crate::cli::stop_shop(shop, &env).await?;
    outcome
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(f64::EPSILON)
}
