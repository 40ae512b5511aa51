//! The `shop` command: `shop role <name>` runs one service; `shop` alone runs the whole shop as
//! processes, places a batch of checkouts, breaks what it was asked to break, and checks the end.

use std::time::Duration;

use anyhow::{Context, bail};
use gateway::Secret;
use orchestration::participant;
use shop_domain::Service;
use tracing::{error, info, warn};

use crate::config::{Env, PREFIX_VAR, Role, Style, encode_hex};
use crate::probe;
use crate::roles::intake::CALLER;
use crate::roles::reads::PAYMENT_QUERIES;
use crate::scenario::{self, Client, OrderAnswer, Planned};
use crate::supervisor::{Output, Supervisor};

/// What the reader asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Keep the shop up and print what to try, until Ctrl-C.
    pub serve: bool,
    /// SIGKILL this role while checkouts are in flight, and let the supervisor start it again.
    pub kill: Option<Role>,
    /// SIGKILL every role in turn, in an order and at moments drawn from this seed.
    pub chaos: Option<u64>,
    /// How the checkout is coordinated; `None`: as `SHOP_STYLE` says (orchestration).
    pub style: Option<Style>,
    /// After the batch, print this role's `/metrics` as Prometheus would read it.
    pub metrics: Option<Role>,
    /// Payments serves its gRPC reads over mutual TLS, to the gateway only, with certificates
    /// made for this run (unless `SHOP_TLS_DIR` names some already).
    pub mtls: bool,
}

/// The roles, as `shop role ROLE` and `--kill ROLE` take them.
pub const ROLES: &str = "roles: inventory, payments, shipping, orders, saga (orchestration), \
                         notifications, gateway";
const USAGE: &str = "usage: shop [--style orchestration|choreography] [--mtls] \
                     [--serve | --kill ROLE | --chaos [SEED]] [--metrics ROLE] | shop role ROLE | \
                     shop setup | shop certs DIR";

/// Reads the options after the program name.
pub fn options(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options::default();
    let mut args = args.iter().peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--serve" => options.serve = true,
            "--mtls" => options.mtls = true,
            "--style" => {
                let name = args.next().context(USAGE)?;
                let style = Style::parse(name).with_context(|| {
                    format!("no style {name:?}: orchestration or choreography")
                })?;
                options.style = Some(style);
            }
            "--kill" => options.kill = Some(role_arg(args.next())?),
            "--metrics" => options.metrics = Some(role_arg(args.next())?),
            "--chaos" => {
                let seed = match args.peek().map(|a| a.parse::<u64>()) {
                    Some(Ok(seed)) => {
                        args.next();
                        seed
                    }
                    _ => fastrand::u64(..1_000_000),
                };
                options.chaos = Some(seed);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let faults =
        usize::from(options.kill.is_some()) + usize::from(options.chaos.is_some());
    if options.serve && options.metrics.is_some() {
        bail!(
            "--metrics prints after a batch; with --serve, curl any role's /metrics\n{USAGE}"
        );
    }
    if faults > 1 || (options.serve && faults > 0) {
        bail!("--serve, --kill and --chaos go one at a time\n{USAGE}");
    }
    Ok(options)
}

/// The role a flag names, or what the roles are.
fn role_arg(name: Option<&String>) -> anyhow::Result<Role> {
    let name = name.context(USAGE)?;
    Role::parse(name).with_context(|| format!("no role {name:?}; {ROLES}\n{USAGE}"))
}

/// The supervisor and its run (`shop` without `role`).
pub async fn main(args: Vec<String>) -> anyhow::Result<()> {
    let options = options(&args)?;
    let serve = options.serve;
    let (supervisor, client, env) =
        start_shop_as(serve, options.style, options.mtls, Output::Prefixed).await?;
    let outcome = if serve {
        serve_until_stopped(&env, &client).await
    } else {
        run_batch(&supervisor, &client, &options).await
    };
    let stopped = stop_shop_as(supervisor, &env, !serve).await;
    if let Some(tls) = env.tls.as_ref().filter(|_| made_for_this_run(&options))
        && let Err(error) = std::fs::remove_dir_all(&tls.dir)
    {
        warn!(%error, "cannot remove this run's certificates in {}", tls.dir.display());
    }
    outcome?;
    stopped
}

/// Whether `--mtls` made the certificates (rather than `SHOP_TLS_DIR` naming them).
fn made_for_this_run(options: &Options) -> bool {
    options.mtls && std::env::var(crate::config::TLS_DIR_VAR).is_err()
}

/// Starts a shop of its own (fresh names, removed by [`stop_shop`]): checks the brokers, creates
/// and seeds the queues and schemas, starts every role and waits until each is ready. Without
/// its brokers it says what to start, in one line, and exits.
pub async fn start_shop(
    style: Option<Style>,
    output: Output,
) -> anyhow::Result<(Supervisor, Client, Env)> {
    start_shop_as(false, style, false, output).await
}

async fn start_shop_as(
    serve: bool,
    style: Option<Style>,
    mtls: bool,
    output: Output,
) -> anyhow::Result<(Supervisor, Client, Env)> {
    let exe = std::env::current_exe()
        .context("cannot find this program to start its roles")?;
    let mut env = Env::from_env()?;
    env.style = style.unwrap_or(env.style);
    if mtls && env.tls.is_none() {
        env.tls = Some(certificates_for_this_run(&env)?);
    }
    if !serve && std::env::var(PREFIX_VAR).is_err() {
        // A run of its own: names nobody else uses, removed at the end.
        let tag = uuid::Uuid::new_v4().simple().to_string();
        env.names =
            orchestration::participant::Names::new(&format!("shop_{}", &tag[..8]));
    }
    let seed = crate::shop::seed();
    if let Err(why) = preflight(&env, &seed).await {
        let broker = match env.style {
            Style::Orchestration => format!("RabbitMQ at {}", env.amqp),
            Style::Choreography => format!("a Kafka-API broker at {}", env.kafka),
        };
        eprintln!(
            "the shop needs PostgreSQL at {} and {broker} ({why:#}): start them with \
             `cargo xtask brokers up` (or `docker compose up -d --wait`)",
            env.database_url
        );
        std::process::exit(2);
    }
    let key = Secret::random();
    let supervisor =
        Supervisor::start(&exe, &env, &encode_hex(key.expose()), &output)?;
    supervisor.wait_all_ready(Duration::from_secs(60)).await?;
    info!("every service is ready");
    let client = Client::new(env.url(Role::Gateway), key.expose())?;
    Ok((supervisor, client, env))
}

/// Stops every role with SIGTERM, removes the run's queues and schemas, and fails if a role did
/// not stop cleanly.
pub async fn stop_shop(supervisor: Supervisor, env: &Env) -> anyhow::Result<()> {
    stop_shop_as(supervisor, env, true).await
}

async fn stop_shop_as(
    supervisor: Supervisor,
    env: &Env,
    teardown: bool,
) -> anyhow::Result<()> {
    let ended = supervisor.stop().await?;
    for end in &ended {
        if !end.status.success() || end.killed_after_grace {
            warn!(
                "{} ended badly: {} (killed after grace: {})",
                end.role, end.status, end.killed_after_grace
            );
        }
    }
    if teardown && let Err(error) = self::teardown(env).await {
        warn!(%error, "removing this run's queues and schemas failed");
    }
    if ended.iter().any(|e| !e.status.success() || e.killed_after_grace) {
        bail!("a service did not stop cleanly on SIGTERM (see above)");
    }
    Ok(())
}

/// Checks the brokers of the shop's style answer, then creates its queues or topics and its
/// schemas and seeds them.
pub async fn preflight(env: &Env, seed: &shop_domain::Seed) -> anyhow::Result<()> {
    let setup = async {
        match env.style {
            Style::Orchestration => {
                participant::setup(&env.database_url, &env.amqp, &env.names, seed)
                    .await?;
            }
            Style::Choreography => {
                let config = crate::roles::choreographed::shop_config(env);
                choreography::shop::Shop::set_up(&config).await?;
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(20), setup).await {
        Ok(done) => done,
        Err(_) => bail!("no answer in 20 s"),
    }
}

/// `shop setup`: creates what the shop configured by this process's environment needs and does
/// not have yet (queues or topics, schemas, the seed), and keeps everything it has: what a
/// deployment runs once before it starts the services (compose's `setup`, the Kubernetes Job).
/// Unlike [`preflight`], which gives a run of the example a fresh shop, it never drops data.
pub async fn setup() -> anyhow::Result<()> {
    let env = Env::from_env()?;
    let seed = crate::shop::seed();
    let (style, prefix) = (env.style.name(), &env.names.prefix);
    info!(
        "setting up the {style} shop {prefix:?}: creating what is missing, keeping the rest"
    );
    match env.style {
        Style::Orchestration => {
            participant::ensure(&env.database_url, &env.amqp, &env.names, &seed)
                .await?;
        }
        Style::Choreography => {
            let config = crate::roles::choreographed::shop_config(&env);
            choreography::shop::Shop::set_up(&config).await?;
        }
    }
    info!("the {style} shop {prefix:?} is set up");
    Ok(())
}

/// Mutual TLS with certificates made now, in a directory of their own under the system's
/// temporary one; payments' TLS address as `SHOP_PAYMENTS_TLS_ADDR` says, or the configuration's
/// default for a single payments replica.
fn certificates_for_this_run(env: &Env) -> anyhow::Result<crate::config::Tls> {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("shop-tls-{}", &tag[..8]));
    let addrs = std::env::var(crate::config::PAYMENTS_TLS_VAR).ok();
    let lookup = |var: &str| match var {
        crate::config::TLS_DIR_VAR => Some(dir.display().to_string()),
        crate::config::PAYMENTS_TLS_VAR => addrs.clone(),
        var => env.vars().into_iter().find(|(k, _)| k == var).map(|(_, v)| v),
    };
    // Read back as a process would read it, with its default and its checks (one address per
    // payments replica), before any certificate is made.
    let tls =
        Env::from_lookup(lookup)?.tls.context("mutual TLS is not configured")?;
    crate::identity::issue(&dir)?;
    Ok(tls)
}

/// Removes what `preflight` created (queues and schemas; Kafka topics stay).
pub async fn teardown(env: &Env) -> anyhow::Result<()> {
    match env.style {
        Style::Orchestration => {
            crate::roles::endings::delete(&env.amqp, &env.names).await?;
            let replicas = 1..=env.replicas(Role::Saga).len();
            let orchestrators: Vec<String> =
                replicas.map(crate::roles::saga::orchestrator).collect();
            participant::teardown(
                &env.database_url,
                &env.amqp,
                &env.names,
                &orchestrators.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .await?;
        }
        Style::Choreography => {
            let config = crate::roles::choreographed::shop_config(env);
            choreography::shop::Shop::tear_down(&config).await?;
        }
    }
    let pool = orchestration::pool(&env.database_url, 1)?;
    crate::roles::notifications::drop_schema(&*pool.get().await?, env).await?;
    Ok(())
}

/// What orders (over HTTP) and payments (over gRPC) hold for a checkout, as the gateway's
/// `GET /orders/{id}` puts them together.
fn as_recorded(answer: Option<&OrderAnswer>) -> String {
    let Some(answer) = answer else {
        return "orders: no order (it never reached orders)".to_owned();
    };
    let order = answer.order.as_ref().map_or("?", |o| o.status.as_str());
    let payment = match &answer.payment {
        Some(p) => format!("{} {}", p.status, shop_domain::euros(p.amount_cents)),
        None => "none".to_owned(),
    };
    let mut said = format!("orders: {order}, payments: {payment}");
    for gap in &answer.missing {
        said.push_str(&format!(" ({} missing: {})", gap.part, gap.reason));
    }
    said
}

async fn serve_until_stopped(env: &Env, client: &Client) -> anyhow::Result<()> {
    let gateway = env.url(Role::Gateway);
    let token = client.token("c-ada")?;
    println!();
    println!("The shop is up. Try, in another terminal:");
    println!("  TOKEN={token}");
    println!(
        "  curl -si -X POST {gateway}/checkouts -H \"authorization: Bearer $TOKEN\" \
         -H 'content-type: application/json' -H 'idempotency-key: my-first' \
         -d '{{\"lines\":[{{\"sku\":\"kettle\",\"quantity\":1}}],\"ship_to\":\"NL\"}}'"
    );
    println!(
        "  curl -s {gateway}/checkouts/my-first -H \"authorization: Bearer $TOKEN\""
    );
    println!(
        "  curl -s {gateway}/orders/my-first -H \"authorization: Bearer $TOKEN\"   \
         # orders (HTTP/JSON) and payments (gRPC), composed"
    );
    println!(
        "  curl -s {gateway}/graphql -H \"authorization: Bearer $TOKEN\" \
         -H 'content-type: application/json' \
         -d '{{\"query\":\"{{ order(id: \\\"my-first\\\") {{ status payment {{ status }} }} }}\"}}'"
    );
    let payments = env.addr(Role::Participant(Service::Payments));
    match &env.tls {
        None => {
            println!(
                "  grpcurl -plaintext -H '{CALLER}: c-ada' -d '{{\"order_ids\":[\"my-first\"]}}' \
                 {payments} {PAYMENT_QUERIES}/PaymentsForOrders"
            );
            println!("  grpcurl -plaintext {payments} grpc.health.v1.Health/Check");
        }
        Some(tls) => {
            // Over mutual TLS payments answers the gateway's certificate only.
            let dir = tls.dir.display();
            let at = &env.payments_tls()[0];
            println!(
                "  grpcurl -cacert {dir}/ca.pem -cert {dir}/gateway.pem -key {dir}/gateway.key \
                 -authority payments.shop.internal -H '{CALLER}: c-ada' \
                 -d '{{\"order_ids\":[\"my-first\"]}}' {at} {PAYMENT_QUERIES}/PaymentsForOrders"
            );
        }
    }
    for role in env.style.roles() {
        println!("  curl -s {}/readyz     # {role}", env.url(role));
    }
    let watched = match env.style {
        Style::Orchestration => "every checkout end",
        Style::Choreography => "every order move",
    };
    println!(
        "Watch {watched}, live (WebSocket): open {}/ in a browser",
        env.url(Role::Notifications)
    );
    if let Ok(endpoint) = std::env::var(crate::config::OTLP_VAR) {
        println!(
            "Traces go to {endpoint}: with the compose file's Jaeger, open http://localhost:16686"
        );
    }
    println!(
        "Kill one for real (the supervisor starts it again): kill -9 <pid in its log>"
    );
    println!("Ctrl-C stops every service with SIGTERM.");
    probe::terminated().await;
    Ok(())
}

/// Places the batch, breaks what was asked while it runs, follows every checkout to its end and
/// checks the promises.
async fn run_batch(
    supervisor: &Supervisor,
    client: &Client,
    options: &Options,
) -> anyhow::Result<()> {
    let env = supervisor.env();
    let run = env.names.prefix.replace('_', "-");
    let planned = scenario::batch(&run);
    let traffic = async {
        let placing =
            planned.iter().map(|p| client.place(p, Duration::from_secs(60)));
        for placed in futures::future::join_all(placing).await {
            placed?;
        }
        let following = planned.iter().map(|p| async move {
            client.follow(p, Duration::from_secs(120)).await.map(|v| (p.clone(), v))
        });
        futures::future::try_join_all(following).await
    };
    let faults = async {
        if let Some(role) = options.kill {
            kill_when(supervisor, role, 6).await?;
        }
        if let Some(seed) = options.chaos {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut roles = supervisor.env().style.roles();
            rng.shuffle(&mut roles);
            let mut points: Vec<usize> =
                roles.iter().map(|_| rng.usize(1..=25)).collect();
            points.sort_unstable();
            info!("chaos (seed {seed}): {}", describe_plan(&roles, &points));
            for (role, point) in roles.iter().zip(points) {
                kill_when(supervisor, *role, point).await?;
            }
        }
        anyhow::Ok(())
    };
    let (placed, faulted) = tokio::join!(traffic, faults);
    faulted?;
    let placed: Vec<(Planned, crate::roles::intake::CheckoutView)> = placed?;
    for (planned, view) in &placed {
        let reason =
            view.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        println!(
            "{:>14} {:<6} {}{reason}",
            view.order_id, planned.customer, view.status
        );
        println!("{:>14} {}", "", view.steps.join(" -> "));
        // Shown, not checked: a service still restarting after a kill is said, not fatal.
        let records = match client.order_in(planned).await {
            Ok(records) => as_recorded(records.as_ref()),
            Err(error) => format!("orders and payments could not be asked: {error}"),
        };
        println!("{:>14} {records}", "");
        println!("{:>14} trace {}", "", planned.trace_id);
    }
    let findings = scenario::check(env, &crate::shop::seed(), &placed).await?;
    let what = match env.style {
        Style::Orchestration => "commands",
        Style::Choreography => "events",
    };
    for role in env.style.roles() {
        let restarts = supervisor.life(role).generation.saturating_sub(1);
        let applied = match role {
            Role::Participant(service) => {
                let n = findings.applied.get(service.name()).copied().unwrap_or(0);
                format!("{n} {what} applied, ")
            }
            _ => String::new(),
        };
        println!("{:>9}: {applied}restarted {restarts} time(s)", role.name());
    }
    if !findings.broken.is_empty() {
        for broken in &findings.broken {
            error!("{broken}");
        }
        bail!("{} promise(s) broken", findings.broken.len());
    }
    let confirmed = placed.iter().filter(|(_, v)| v.status == "confirmed").count();
    println!(
        "every checkout ended ({confirmed} confirmed, {} cancelled with a reason); stock and money \
         add up in each service's own records; nothing dead-lettered; the notifications service \
         told each customer once",
        placed.len() - confirmed
    );
    if let Some(role) = options.metrics {
        let url = format!("{}/metrics", env.url(role));
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let scrape = http.get(&url).send().await?.error_for_status()?.text().await?;
        println!("{role}'s /metrics, as Prometheus reads it:");
        print!("{scrape}");
    }
    Ok(())
}

fn describe_plan(roles: &[Role], points: &[usize]) -> String {
    let steps: Vec<String> = roles
        .iter()
        .zip(points)
        .map(|(r, p)| format!("{r} after {p} commands"))
        .collect();
    steps.join(", ")
}

/// Kills `role` once the participants have applied `commands` commands in all (so checkouts are
/// in flight), then waits for its next life to be ready.
pub async fn kill_when(
    supervisor: &Supervisor,
    role: Role,
    commands: usize,
) -> anyhow::Result<()> {
    scenario::when_applied(supervisor.env(), commands).await?;
    supervisor.kill(role).await?;
    supervisor.wait_ready(role, Duration::from_secs(60)).await?;
    info!("{role} is back and ready");
    Ok(())
}
