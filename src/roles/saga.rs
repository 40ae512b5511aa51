//! The saga service as a process: the orchestration chapter's orchestrator and its PostgreSQL log,
//! behind a small HTTP API that takes checkouts and says where each one stands.
//!
//! `POST /checkouts` answers `202 Accepted` only once the saga is in the log: from then on a crash
//! of this process loses nothing, because its restart (under the same name) resumes every saga it
//! owned. The idempotency key is the order id, so a client that retries after a lost answer finds
//! its checkout instead of starting a second one. `GET /checkouts/{id}` reads the log.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_json::problem::{JsonBody, Problem};
use orchestration::checkout::checkout;
use orchestration::log::{PgLog, SagaLog};
use orchestration::orchestrator::{Config, Orchestrator, Starter, saga_id};
use orchestration::saga::{Kind, Outcome, Record, State as SagaState, Terminal};
use serde::{Deserialize, Serialize};
use shop_domain::{Line, OrderPlaced};
use tokio::sync::RwLock;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{Env, Role};
use crate::probe::{self, AmqpProbe, Check};

/// The orchestrator's name: its leases carry it, so a restart under the same name takes its sagas
/// back at once.
pub const ORCHESTRATOR: &str = "saga-1";
/// The header the gateway sets to the verified caller: the customer who pays.
pub const CALLER: &str = gateway::auth::CALLER_HEADER;
/// The header whose value becomes the order id (and so the saga's id).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const HEALTHY: Duration = Duration::from_secs(10);

/// What a client asks for; the customer is not in it: it is whoever the token names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// What to buy.
    pub lines: Vec<Line>,
    /// Where to send it: a country code the carrier knows (`NL`).
    pub ship_to: String,
}

/// Where a checkout stands, as `GET /checkouts/{id}` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutView {
    /// The order (the idempotency key it was placed with).
    pub order_id: String,
    /// Who pays.
    pub customer_id: String,
    /// `running`, `compensating`, `confirmed`, `cancelled` or `stuck`.
    pub status: String,
    /// Why it was cancelled or is stuck.
    pub reason: Option<String>,
    /// Each step the saga took, as the log has it: `inventory.reserve: done (hold-...)`.
    pub steps: Vec<String>,
}

impl CheckoutView {
    /// Whether the checkout has ended, one way or the other.
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "confirmed" | "cancelled" | "stuck")
    }
}

#[derive(Clone)]
struct Shared {
    log: Arc<PgLog>,
    /// The running orchestrator's intake; `None` while it reconnects.
    starter: Arc<RwLock<Option<Starter>>>,
}

/// Runs the saga service until SIGTERM.
pub async fn run(env: Env) -> anyhow::Result<()> {
    let log = Arc::new(connect_log(&env).await?);
    let shared =
        Shared { log: Arc::clone(&log), starter: Arc::new(RwLock::new(None)) };
    let pool = orchestration::pool(&env.database_url, 1)?;
    let amqp = Arc::new(AmqpProbe::new(env.amqp.clone()));
    let replies = env.names.replies(ORCHESTRATOR);
    let starter = Arc::clone(&shared.starter);
    let ready: Check = Arc::new(move || {
        let (pool, amqp, replies) =
            (pool.clone(), Arc::clone(&amqp), replies.clone());
        let starter = Arc::clone(&starter);
        Box::pin(async move {
            probe::pg_answers(&pool).await?;
            if starter.read().await.is_none() {
                return Err("the orchestrator is reconnecting".to_owned());
            }
            match amqp.consumers(&replies).await? {
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
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = env.addr(Role::Saga);
    let http = tokio::spawn(probe::serve(addr, app, async {
        if http_stopped.await.is_err() {
            tracing::debug!("saga server's stop handle dropped");
        }
    }));
    info!("saga service on http://{addr}: POST /checkouts, GET /checkouts/{{id}}");
    orchestrate_until_terminated(&env, log, &shared.starter).await;
    if stop_http.send(()).is_err() {
        warn!("the saga's HTTP server had already stopped");
    }
    http.await??;
    info!("saga stopped");
    Ok(())
}

/// The log, connected as soon as PostgreSQL answers (it may still be starting).
async fn connect_log(env: &Env) -> anyhow::Result<PgLog> {
    let mut backoff = FIRST_BACKOFF;
    let mut terminated = std::pin::pin!(probe::terminated());
    loop {
        let schema = env.names.log_schema();
        match PgLog::connect(&env.database_url, &schema, Duration::from_secs(15))
            .await
        {
            Ok(log) => return Ok(log),
            Err(error) => {
                warn!(%error, "the saga log is unreachable; trying again in {backoff:?}")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut terminated => anyhow::bail!("stopped before the saga log answered"),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn orchestrate_until_terminated(
    env: &Env,
    log: Arc<PgLog>,
    slot: &RwLock<Option<Starter>>,
) {
    let config = Config {
        name: ORCHESTRATOR.to_owned(),
        amqp: env.amqp.clone(),
        names: env.names.clone(),
        timeout: Duration::from_secs(5),
        lease: Duration::from_secs(15),
    };
    let mut terminated = std::pin::pin!(probe::terminated());
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        match Orchestrator::start(config.clone(), Arc::clone(&log)).await {
            Ok(mut orchestrator) => {
                *slot.write().await = Some(orchestrator.starter());
                info!(
                    "orchestrator {ORCHESTRATOR} running; sagas it owned are resumed"
                );
                let ended = loop {
                    tokio::select! {
                        ended = &mut orchestrator.task => break ended,
                        Some((id, end)) = orchestrator.finished.recv() => narrate(&id, &end),
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

fn problem(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: impl Into<String>,
) -> Response {
    Problem::new(status, slug, title, detail).into_response()
}

/// A valid order id: what an idempotency key may be.
fn valid_key(key: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    (1..=64).contains(&key.len()) && key.chars().all(ok)
}

/// Checks a request and prices it, or says what is wrong with it.
pub fn order_of(
    order_id: &str,
    customer_id: &str,
    request: &CheckoutRequest,
) -> Result<OrderPlaced, String> {
    if request.lines.is_empty() || request.lines.len() > 20 {
        return Err("an order has 1 to 20 lines".to_owned());
    }
    let mut total: u64 = 0;
    for line in &request.lines {
        let Some(cents) = crate::shop::price(&line.sku) else {
            return Err(format!("unknown product {:?}", line.sku));
        };
        if !(1..=100).contains(&line.quantity) {
            return Err(format!("quantity of {:?} must be 1 to 100", line.sku));
        }
        total += cents * u64::from(line.quantity);
    }
    let country =
        |s: &str| s.len() == 2 && s.chars().all(|c| c.is_ascii_uppercase());
    if !country(&request.ship_to) {
        return Err("ship_to is a two-letter country code (NL)".to_owned());
    }
    Ok(OrderPlaced {
        order_id: order_id.to_owned(),
        customer_id: customer_id.to_owned(),
        lines: request.lines.clone(),
        total_cents: total,
        ship_to: request.ship_to.clone(),
    })
}

async fn place(
    State(shared): State<Shared>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CheckoutRequest>,
) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(customer) = text(CALLER) else {
        let detail = "no verified caller: checkouts come through the gateway";
        return problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Not authenticated",
            detail,
        );
    };
    let Some(key) = text(IDEMPOTENCY_KEY).filter(|k| valid_key(k)) else {
        let detail = "send Idempotency-Key: 1 to 64 letters, digits, - or _ (it becomes the order id)";
        return problem(
            StatusCode::BAD_REQUEST,
            "idempotency-key",
            "Idempotency key required",
            detail,
        );
    };
    let order = match order_of(key, customer, &request) {
        Ok(order) => order,
        Err(detail) => {
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            return problem(
                status,
                "invalid-order",
                "The order cannot be placed",
                detail,
            );
        }
    };
    let Some(starter) = shared.starter.read().await.clone() else {
        let detail = "the saga service is reconnecting to its broker; retry with the same key";
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Try again",
            detail,
        );
    };
    if let Err(error) = starter.checkout(order.clone()).await {
        warn!(%error, order = %order.order_id, "checkout not started");
        let detail = format!(
            "the checkout was not recorded ({error}); retry with the same key"
        );
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Try again",
            detail,
        );
    }
    // The key may have been used before: for this order (a retry), or for another.
    match shared.log.load(&saga_id(&order)).await {
        Ok(Some((stored, _))) if stored != order => {
            let detail = "this idempotency key was used for another checkout";
            problem(
                StatusCode::CONFLICT,
                "key-reused",
                "Idempotency key reused",
                detail,
            )
        }
        Ok(Some(_)) => {
            info!(order = %order.order_id, customer = %order.customer_id, "checkout accepted");
            let location = format!("/checkouts/{}", order.order_id);
            let body = serde_json::json!({ "order_id": order.order_id, "status_url": location });
            (StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(body))
                .into_response()
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
            let detail = format!(
                "the saga log did not answer ({error}); retry with the same key"
            );
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Try again",
                detail,
            )
        }
    }
}

async fn view(
    State(shared): State<Shared>,
    Path(order_id): Path<String>,
) -> Response {
    if !valid_key(&order_id) {
        let detail = "an order id is 1 to 64 letters, digits, - or _";
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-id",
            "Invalid order id",
            detail,
        );
    }
    match shared.log.load(&format!("checkout-{order_id}")).await {
        Ok(Some((order, records))) => {
            Json(describe(&order, &records)).into_response()
        }
        Ok(None) => {
            let detail = format!("no checkout {order_id}");
            problem(StatusCode::NOT_FOUND, "not-found", "No such checkout", detail)
        }
        Err(error) => {
            warn!(%error, "reading the saga log failed");
            let detail = format!("the saga log did not answer ({error})");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Try again",
                detail,
            )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sku: &str, quantity: u32, ship_to: &str) -> CheckoutRequest {
        CheckoutRequest {
            lines: vec![Line { sku: sku.into(), quantity }],
            ship_to: ship_to.into(),
        }
    }

    #[test]
    fn an_order_is_priced_from_the_catalog_and_bad_ones_say_why() {
        let order = order_of("o-1", "c-ada", &request("mug", 2, "NL")).unwrap();
        assert_eq!(order.total_cents, 2_500);
        assert_eq!(order.customer_id, "c-ada");
        let unknown =
            order_of("o-1", "c-ada", &request("anvil", 1, "NL")).unwrap_err();
        assert!(unknown.contains("unknown product \"anvil\""), "{unknown}");
        assert!(order_of("o-1", "c-ada", &request("mug", 0, "NL")).is_err());
        assert!(order_of("o-1", "c-ada", &request("mug", 1, "nl")).is_err());
        let empty = CheckoutRequest { lines: vec![], ship_to: "NL".into() };
        assert!(order_of("o-1", "c-ada", &empty).is_err());
    }

    #[test]
    fn keys_are_order_ids_and_nothing_else() {
        assert!(valid_key("o-2026_12"));
        assert!(!valid_key(""));
        assert!(!valid_key("o/../x"));
        assert!(!valid_key(&"k".repeat(65)));
    }
}
