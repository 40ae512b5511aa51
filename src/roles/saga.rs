//! The saga service as a process: the orchestration chapter's orchestrator and its PostgreSQL log,
//! behind a small HTTP API that takes checkouts and says where each one stands.
//!
//! `POST /checkouts` answers `202 Accepted` only once the saga is in the log: from then on a crash
//! of this process loses nothing, because its restart (under the same name) resumes every saga it
//! owned. The idempotency key is the order id, so a client that retries after a lost answer finds
//! its checkout instead of starting a second one. `GET /checkouts/{id}` reads the log.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use http_json::problem::JsonBody;
use orchestration::checkout::checkout;
use orchestration::log::{PgLog, SagaLog};
use orchestration::orchestrator::{
    Config, Orchestrator, Starter, Traffic, saga_id, saga_id_of,
};
use orchestration::saga::{Kind, Outcome, Record, State as SagaState, Terminal};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use shop_domain::OrderPlaced;
use tokio::sync::{Notify, RwLock, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{Env, Role};
use crate::metrics::{self, AmqpCounts, Exporter, Refresh, catch_up};
use crate::probe::{self, AmqpProbe, Check};
use crate::roles::endings::{self, Announced};
use crate::roles::intake::{
    CheckoutRequest, CheckoutView, accepted, checkout_of, invalid_id, key_reused,
    not_found, problem, shown_to, try_again,
};
use crate::telemetry;

/// The orchestrator's name in the saga's `replica`th process (`saga-1`, `saga-2`): its leases
/// carry it, so a restart under the same name takes its sagas back at once, and each replica
/// drives the sagas it started.
pub fn orchestrator(replica: usize) -> String {
    format!("saga-{replica}")
}
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const HEALTHY: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Shared {
    log: Arc<PgLog>,
    /// The running orchestrator's intake; `None` while it reconnects.
    starter: Arc<RwLock<Option<Starter>>>,
}

/// Runs the saga service until SIGTERM.
pub async fn run(env: Env) -> anyhow::Result<()> {
    let listener = probe::listen(env.listen_addr(Role::Saga)?).await?;
    let starting =
        probe::Starting::serve(listener, "waiting for the saga log (PostgreSQL)")?;
    let connect = || async {
        let schema = env.names.log_schema();
        let log =
            PgLog::connect(&env.database_url, &schema, Duration::from_secs(15));
        Ok(log.await?)
    };
    let Some(log) = probe::until_connected("the saga log", connect).await else {
        info!("stopped before the saga log answered");
        return Ok(());
    };
    let log = Arc::new(log);
    let listener = starting.done().await?;
    let shared =
        Shared { log: Arc::clone(&log), starter: Arc::new(RwLock::new(None)) };
    let pool = orchestration::pool(&env.database_url, 1)?;
    let amqp = Arc::new(AmqpProbe::new(env.amqp.clone()));
    // The scrape's own pool and broker connection: a scrape must not make a probe wait.
    let scrape_pool = orchestration::pool(&env.database_url, 1)?;
    let scrape_amqp = Arc::new(AmqpProbe::new(env.amqp.clone()));
    let lives = Lives::default();
    let announced = Arc::new(Announced::default());
    let exporter = Exporter::new(|registry| {
        let log = metrics::sagas(registry, scrape_pool, env.names.log_schema());
        let traffic = amqp_traffic(registry, lives.clone(), Arc::clone(&announced));
        let help = "Messages waiting in the shop's dead-letter queue, each for a person to explain";
        let dead = vec![env.names.dead_letters()];
        let dead = metrics::queue_depths(
            registry,
            "shop_dead_letters",
            help,
            scrape_amqp,
            dead,
        );
        Some(metrics::all(vec![log, dead, traffic]))
    });
    let replies = env.names.replies(&orchestrator(env.replica));
    let starter = Arc::clone(&shared.starter);
    let ready: Check = Arc::new(move || {
        let (pool, amqp, replies) =
            (pool.clone(), Arc::clone(&amqp), replies.clone());
        let starter = Arc::clone(&starter);
        Box::pin(async move {
            // Side by side: a probe waits for the slower of the two, 2 s at most.
            let (database, consumers) =
                tokio::join!(probe::pg_answers(&pool), amqp.consumers(&replies));
            database?;
            if starter.read().await.is_none() {
                return Err("the orchestrator is reconnecting".to_owned());
            }
            match consumers? {
                0 => Err(format!("no consumer on {replies} yet")),
                _ => Ok(()),
            }
        })
    });
    let app = Router::new()
        .route("/checkouts", post(place))
        .route("/checkouts/{order_id}", get(view))
        .with_state(shared.clone())
        .merge(probe::routes(ready));
    let app = telemetry::traced(exporter.measured(app), "saga");
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = listener.local_addr()?;
    let http = tokio::spawn(probe::serve(listener, app, async {
        if http_stopped.await.is_err() {
            tracing::debug!("saga server's stop handle dropped");
        }
    }));
    info!("saga service on http://{addr}: POST /checkouts, GET /checkouts/{{id}}");
    let wake = Arc::new(Notify::new());
    let (stop_relay, relay_stopped) = watch::channel(false);
    let relay = tokio::spawn(endings::relay(
        env.amqp.clone(),
        env.names.clone(),
        Arc::clone(&log),
        Arc::clone(&wake),
        announced,
        relay_stopped,
    ));
    orchestrate_until_terminated(&env, log, &shared.starter, &lives, &wake).await;
    stop_relay.send_replace(true);
    if let Err(error) = relay.await {
        warn!(%error, "the endings relay's task ended abnormally");
    }
    if stop_http.send(()).is_err() {
        warn!("the saga's HTTP server had already stopped");
    }
    http.await??;
    info!("saga stopped");
    Ok(())
}

/// What every orchestrator this process ran did with RabbitMQ: one [`Traffic`] per life.
#[derive(Clone, Default)]
struct Lives(Arc<std::sync::Mutex<Vec<Arc<Traffic>>>>);

impl Lives {
    fn add(&self, traffic: Arc<Traffic>) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(traffic);
    }

    /// `count` summed over every life.
    fn total(&self, count: fn(&Traffic) -> &AtomicU64) -> u64 {
        let lives = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        lives.iter().map(|life| count(life).load(Relaxed)).sum()
    }
}

/// The saga's side of RabbitMQ, over all its orchestrators' lives: replies delivered and
/// redelivered, commands the broker confirmed or did not; and the endings its relay announced.
fn amqp_traffic(
    registry: &mut Registry,
    lives: Lives,
    relay: Arc<Announced>,
) -> Refresh {
    let amqp = AmqpCounts::register(registry, "Replies", "Commands");
    let announced = Counter::<u64>::default();
    registry.register(
        "shop_saga_endings_announced",
        "Checkout endings the relay sent to the notifications service and the broker confirmed",
        announced.clone(),
    );
    let restarts = Counter::<u64>::default();
    registry.register(
        "shop_saga_relay_restarts",
        "Times the endings relay was started again after its broker or log went away",
        restarts.clone(),
    );
    // Two scrapes at once must not both add the same increase: one catches up at a time.
    let one_at_a_time = std::sync::Mutex::new(());
    Arc::new(move || {
        let _turn =
            one_at_a_time.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        amqp.catch_up(
            lives.total(|t| &t.replies),
            lives.total(|t| &t.replies_redelivered),
            lives.total(|t| &t.commands_confirmed),
            lives.total(|t| &t.commands_unconfirmed),
        );
        catch_up(&announced, relay.sent.load(Relaxed));
        catch_up(&restarts, relay.restarts.load(Relaxed));
        Box::pin(async { Ok(()) })
    })
}

async fn orchestrate_until_terminated(
    env: &Env,
    log: Arc<PgLog>,
    slot: &RwLock<Option<Starter>>,
    lives: &Lives,
    saga_ended: &Notify,
) {
    let config = Config {
        name: orchestrator(env.replica),
        amqp: env.amqp.clone(),
        names: env.names.clone(),
        timeout: Duration::from_secs(5),
        lease: Duration::from_secs(15),
        workers: 8,
    };
    let mut terminated = std::pin::pin!(probe::terminated());
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        match Orchestrator::start(config.clone(), Arc::clone(&log)).await {
            Ok(mut orchestrator) => {
                lives.add(Arc::clone(&orchestrator.traffic));
                *slot.write().await = Some(orchestrator.starter());
                info!(
                    "orchestrator {} running; sagas it owned are resumed",
                    config.name
                );
                let ended = loop {
                    tokio::select! {
                        ended = &mut orchestrator.task => break ended,
                        Some((id, end)) = orchestrator.finished.recv() => {
                            narrate(&id, &end);
                            saga_ended.notify_one();
                        }
                        () = &mut terminated => {
                            *slot.write().await = None;
                            if let Err(error) = orchestrator.stop().await {
                                error!(%error, "the orchestrator did not stop cleanly");
                            }
                            return;
                        }
                    }
                };
                *slot.write().await = None;
                match ended {
                    Ok(Ok(())) => warn!(
                        "the orchestrator ended; starting it again in {backoff:?}"
                    ),
                    Ok(Err(error)) => {
                        warn!(%error, "the orchestrator lost its broker or log; reconnecting in {backoff:?}")
                    }
                    Err(error) => {
                        error!(%error, "the orchestrator's task failed; restarting in {backoff:?}")
                    }
                }
            }
            Err(error) => {
                warn!(%error, "cannot start the orchestrator; trying again in {backoff:?}")
            }
        }
        if started.elapsed() > HEALTHY {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut terminated => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn narrate(id: &str, end: &Terminal) {
    match end {
        Terminal::Completed => info!(saga = %id, "finished: confirmed"),
        Terminal::Compensated { reason } => {
            info!(saga = %id, "finished: cancelled ({reason})")
        }
        Terminal::Stuck { step, reason } => {
            error!(saga = %id, "STUCK at step {step}: {reason}; a person must decide")
        }
    }
}

async fn place(
    State(shared): State<Shared>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CheckoutRequest>,
) -> Response {
    let order = match checkout_of(&headers, &request) {
        Ok(order) => order,
        Err(refusal) => return *refusal,
    };
    let Some(starter) = shared.starter.read().await.clone() else {
        return try_again(
            "the saga service is reconnecting to its broker; retry with the same key",
        );
    };
    // The checkout's trace goes on in the participants: each command carries its context.
    let trace = telemetry::amqp_headers();
    if let Err(error) = starter.checkout_with(order.clone(), trace).await {
        warn!(%error, order = %order.order_id, "checkout not started");
        return try_again(format!(
            "the checkout was not recorded ({error}); retry with the same key"
        ));
    }
    // The key may have been used before: for this order (a retry), or for another.
    match shared.log.load(&saga_id(&order)).await {
        Ok(Some((stored, _))) if stored != order => key_reused(),
        Ok(Some(_)) => {
            info!(order = %order.order_id, customer = %order.customer_id, "checkout accepted");
            accepted(&order.order_id)
        }
        Ok(None) => {
            error!(order = %order.order_id, "accepted but not in the log");
            let detail = "the checkout is not in the log after it was accepted; retry with the same key";
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                detail,
            )
        }
        Err(error) => {
            warn!(%error, "reading the saga log failed");
            try_again(format!(
                "the saga log did not answer ({error}); retry with the same key"
            ))
        }
    }
}

async fn view(
    State(shared): State<Shared>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(invalid) = invalid_id(&order_id) {
        return invalid;
    }
    match shared.log.load(&saga_id_of(&order_id)).await {
        Ok(Some((order, records))) => shown_to(&headers, describe(&order, &records)),
        Ok(None) => not_found(&order_id),
        Err(error) => {
            warn!(%error, "reading the saga log failed");
            try_again(format!("the saga log did not answer ({error})"))
        }
    }
}

/// A checkout as its log tells it.
pub fn describe(order: &OrderPlaced, records: &[Record]) -> CheckoutView {
    let state = SagaState::replay(records);
    let (status, reason) = match (&state.finished, &state.compensating) {
        (Some(Terminal::Completed), _) => ("confirmed", None),
        (Some(Terminal::Compensated { reason }), _) => {
            ("cancelled", Some(reason.clone()))
        }
        (Some(Terminal::Stuck { reason, .. }), _) => ("stuck", Some(reason.clone())),
        (None, Some(reason)) => ("compensating", Some(reason.clone())),
        (None, None) => ("running", None),
    };
    let saga = checkout();
    let steps = records
        .iter()
        .filter_map(|record| match record {
            Record::Outcome { step, kind, outcome } => {
                let s = &saga.steps[*step];
                let what = match kind {
                    Kind::Action => s.action,
                    Kind::Compensation => s.compensation,
                };
                let how = match outcome {
                    Outcome::Done { detail } => format!("done ({detail})"),
                    Outcome::Refused { reason } => format!("refused ({reason})"),
                    Outcome::TimedOut => "no answer in time".to_owned(),
                };
                Some(format!("{}.{what}: {how}", s.participant))
            }
            _ => None,
        })
        .collect();
    CheckoutView {
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        status: status.to_owned(),
        reason,
        steps,
    }
}
