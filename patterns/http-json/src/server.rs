//! The orders service: routes, handlers and the two middlewares around them.
//!
//! The router is built by [`app`], separate from any socket: tests call it with
//! `tower::ServiceExt::oneshot`, the example and the network tests serve it with [`spawn`] on
//! `127.0.0.1:0`. Handlers stay short: decode (via [`JsonBody`]), validate, check the idempotency
//! key, act, render the version the path asked for.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;

use crate::deprecation::{StillCalled, announce_v1};
use crate::idempotency::{
    self, Begin, IDEMPOTENT_REPLAYED, IdempotencyStore, StoredResponse,
};
use crate::openapi::{self, OPENAPI_PATH};
use crate::orders::{NewOrder, Order, OrderStore};
use crate::problem::{FieldError, JsonBody, Problem};
use crate::versions::{v1::OrderV1, v2::OrderV2};

/// The header that carries a request's correlation id; generated when the caller sent none.
pub const CORRELATION_ID: &str = "x-correlation-id";

/// How the service behaves, including the faults the examples inject.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Added after a request is handled, before its response leaves: the work is done, the answer
    /// is late. This is the case a client timeout makes ambiguous (see `inject_latency`).
    pub latency: Duration,
    /// Largest request body accepted; beyond it the answer is 413 and nothing is parsed.
    pub body_limit: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig { latency: Duration::ZERO, body_limit: 16 * 1024 }
    }
}

/// Shared by every request. Cloning is cheap and shares the stores.
#[derive(Clone, Debug, Default)]
pub struct AppState {
    /// Every order placed, shared with the tests that count them.
    pub orders: Arc<OrderStore>,
    /// The answers kept for replay, by idempotency key.
    pub idempotency: IdempotencyStore,
    /// The limits and injected faults this service runs with.
    pub config: ServiceConfig,
    /// Calls to the deprecated `/v1` so far.
    pub v1_calls: StillCalled,
}

impl AppState {
    /// Empty stores and the given configuration.
    pub fn new(config: ServiceConfig) -> Self {
        AppState { config, ..Default::default() }
    }
}

// ANCHOR: app
/// The whole HTTP API, ready to serve or to test with `oneshot`.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/orders",
            post(create_order::<OrderV1>).get(list_orders::<OrderV1>),
        )
        .route("/v1/orders/{id}", get(get_order::<OrderV1>))
        // Before the layer, so that a 405 on a /v1 path is marked and counted too.
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(
            state.v1_calls.clone(),
            announce_v1,
        ));
    Router::new()
        .merge(v1)
        .route(
            "/v2/orders",
            post(create_order::<OrderV2>).get(list_orders::<OrderV2>),
        )
        .route("/v2/orders/{id}", get(get_order::<OrderV2>))
        .route(OPENAPI_PATH, get(|| async { Json(openapi::document()) }))
        .fallback(|| async {
            Problem::not_found(
                "no such route: the API lives under /v1/orders and /v2/orders",
            )
        })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), inject_latency))
        .layer(middleware::from_fn(correlate_and_log))
        .with_state(state)
}
// ANCHOR_END: app

async fn method_not_allowed() -> Problem {
    Problem::method_not_allowed(
        "see the API's routes for the methods each path accepts",
    )
}

/// A representation of an order that a version of the API answers with.
pub trait Representation:
    Serialize + for<'a> From<&'a Order> + Send + 'static
{
    /// The path prefix of this version, for the `Location` header.
    const PREFIX: &'static str;
}

impl Representation for OrderV1 {
    const PREFIX: &'static str = "/v1";
}

impl Representation for OrderV2 {
    const PREFIX: &'static str = "/v2";
}

// ANCHOR: create_order
async fn create_order<R: Representation>(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewOrder>,
) -> Result<Response, Problem> {
    let key = idempotency::key_from(&headers)?;
    new.validate().map_err(|errors| {
        Problem::invalid_fields(
            format!("{} field(s) break the order rules", errors.len()),
            errors,
        )
    })?;
    let total = new.total_cents().ok_or_else(|| {
        Problem::invalid_fields(
            "the order total overflows",
            vec![FieldError::new("/lines", "total too large")],
        )
    })?;

    // The fingerprint is the decoded request plus the version: whitespace or key
    // order in the JSON does not matter, but one key sent to /v1 and to /v2 does.
    let mut fingerprint = R::PREFIX.as_bytes().to_vec();
    fingerprint.extend(
        serde_json::to_vec(&new).map_err(|e| Problem::internal(e.to_string()))?,
    );

    match state.idempotency.begin(key.clone(), fingerprint) {
        Begin::Replay(stored) => {
            info!(%key, "replaying the stored response: no second order");
            Ok(respond(stored, true))
        }
        Begin::Mismatch => {
            warn!(%key, "idempotency key reused with a different body");
            Err(Problem::idempotency_key_reused())
        }
        Begin::InFlight => Err(Problem::request_in_progress()),
        Begin::Fresh(reservation) => {
            // The answer is built before the order is stored, and nothing can fail
            // or await between storing it and completing the reservation: neither a
            // cancelled request nor an error can leave an order without its record.
            let (order, body) = state
                .orders
                .insert_with(new, total, |order| serde_json::to_vec(&R::from(order)))
                .map_err(|e| Problem::internal(e.to_string()))?;
            let stored = StoredResponse {
                status: StatusCode::CREATED,
                location: Some(format!("{}/orders/{}", R::PREFIX, order.id)),
                body,
            };
            reservation.complete(stored.clone());
            info!(
                order_id = %order.id, customer = %order.customer_id,
                total_cents = order.total_cents, %key, "order placed"
            );
            Ok(respond(stored, false))
        }
    }
}
// ANCHOR_END: create_order

fn respond(stored: StoredResponse, replayed: bool) -> Response {
    let mut response = (stored.status, stored.body).into_response();
    let headers = response.headers_mut();
    headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(location) = stored.location {
        // Built from our own id, so always valid; if that ever breaks, say so
        // rather than answer without the header in silence.
        match HeaderValue::from_str(&location) {
            Ok(value) => _ = headers.insert(header::LOCATION, value),
            Err(error) => warn!(%location, %error, "Location header left out"),
        }
    }
    headers.insert(
        IDEMPOTENT_REPLAYED,
        HeaderValue::from_static(if replayed { "true" } else { "false" }),
    );
    response
}

async fn get_order<R: Representation>(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<R>, Problem> {
    let order = Uuid::parse_str(&id)
        .ok()
        .and_then(|id| state.orders.get(id))
        .ok_or_else(|| Problem::not_found(format!("there is no order {id}")))?;
    Ok(Json(R::from(&order)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    customer_id: Option<String>,
}

async fn list_orders<R: Representation>(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Json<Vec<R>> {
    Json(
        state
            .orders
            .list(query.customer_id.as_deref())
            .iter()
            .map(R::from)
            .collect(),
    )
}

// ANCHOR: inject_latency
/// Fault injection: delays every response by the configured latency, after the
/// handler has run.
///
/// Why after: hyper drops a request's future when the caller hangs up, so a delay
/// *before* the handler would make a timed-out create simply not happen. A delay
/// after it reproduces the harder case: the order exists, but the caller gave up
/// before hearing so.
async fn inject_latency(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    if !state.config.latency.is_zero() {
        tokio::time::sleep(state.config.latency).await;
    }
    response
}
// ANCHOR_END: inject_latency

/// Gives every request a correlation id (the caller's, or a new one), runs it inside a span that
/// carries the id, logs one line per request, and echoes the id in the response.
async fn correlate_and_log(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(CORRELATION_ID, value);
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let span = info_span!("orders-service", correlation_id = %id);
    let began = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.in_scope(|| {
        info!("{method} {path} -> {status} in {} ms", began.elapsed().as_millis())
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(CORRELATION_ID, value);
    }
    response
}

/// A service serving on a loopback port; stop it with [`RunningService::shutdown`].
pub struct RunningService {
    /// Where it listens: `127.0.0.1` and the port the OS chose.
    pub addr: SocketAddr,
    /// Its stores, for tests that check what the service did.
    pub state: AppState,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningService {
    /// `http://127.0.0.1:<port>`, for a client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server to exit.
    pub async fn shutdown(self) -> std::io::Result<()> {
        // A refused send means the server task has already ended; awaiting it
        // below returns why.
        if self.stop.send(()).is_err() {
            tracing::debug!("the server had already stopped");
        }
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Serves [`app`] on `127.0.0.1:0` (a free port chosen by the OS) in a background task.
pub async fn spawn(config: ServiceConfig) -> std::io::Result<RunningService> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = AppState::new(config);
    let (stop, stopped) = oneshot::channel::<()>();
    // Told to stop, or the handle that could tell it was dropped: stop either way.
    let task = tokio::spawn(serve(listener, state.clone(), async {
        let _stop_or_handle_dropped = stopped.await;
    }));
    info!("orders-service listening on http://{addr}");
    Ok(RunningService { addr, state, stop, task })
}

// ANCHOR: serve
/// Serves [`app`] on `listener` until `shutdown` completes. Then it stops
/// accepting connections, lets every request already running finish, and
/// returns: a deploy or a Ctrl-C loses no answer that was being written.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
}
// ANCHOR_END: serve
