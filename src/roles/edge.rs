//! The gateway as a process: the gateway chapter's token check and per-client rate limit, in front
//! of the saga service.
//!
//! It keeps to what belongs at the edge. It verifies the bearer token once and forwards the
//! verified caller (the customer) in a header only it can set; it limits each client; it bounds
//! bodies and time; it turns every failure into a problem body that says what to do. Pricing,
//! stock and the checkout's rules stay in the services behind it.
//!
//! Its calls to the service behind it pass a circuit breaker (the circuit-breaker chapter's):
//! when most recent calls failed, the gateway answers `503` at once for a while instead of making
//! every client wait for a timeout, and exports the breaker's state on `/metrics`.
//!
//! Each service behind it may run as several replicas (`SHOP_<ROLE>_ADDR` lists them). The
//! gateway takes them in turns, with a breaker per replica ([`crate::roles::replicas`]), and
//! sends a call that failed on one replica to the next: a read, because reading twice changes
//! nothing; a checkout too, because the intake's replicas share one log in PostgreSQL and the
//! Idempotency-Key makes a second attempt find the first one's checkout instead of placing
//! another.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use circuit_breaker::{CircuitBreaker, Outcome, State as Breaker};
use gateway::auth::{CALLER_HEADER, Caller, Verifier, authenticate};
use gateway::backends::{OrdersBackend, PaymentsBackend};
use gateway::compose;
use gateway::limit::{Rate, RateLimiter, rate_limit};
use gateway::problem::{problem_bodies, respond};
use http_json::problem::Problem;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use resilience::bulkhead::Bulkhead;
use shop_domain::Service;
use tokio::time::Instant;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use trace_context::hops;
use tracing::{Instrument, info, warn};

use crate::config::{Env, Role};
use crate::metrics::{Exporter, Refresh};
use crate::probe::{self, Check};
use crate::roles::graph;
use crate::roles::intake::{IDEMPOTENCY_KEY, invalid_id};
use crate::roles::reads::OrderView;
use crate::roles::replicas::{Endpoint, Guarded, Replicas};
use crate::roles::retries::{MIN_LEFT, ReadRetries};
use crate::telemetry;

/// The issuer a token must name: the identity provider the shop trusts.
pub const ISSUER: &str = "https://id.shop.example";
/// The audience a token must name: this gateway.
pub const AUDIENCE: &str = "shop-gateway";
/// The scope that may place checkouts.
pub const WRITE: &str = "orders:write";
/// The scope that may read them.
pub const READ: &str = "orders:read";
/// Largest request body: a checkout is a few hundred bytes.
pub const BODY_LIMIT: usize = 16 * 1024;

#[derive(Clone)]
struct Edge {
    /// The intake's replicas (the saga service, or orders when choreographed), each behind a
    /// breaker of its own.
    intake: Arc<Replicas<Endpoint>>,
    http: reqwest::Client,
    /// Orders' HTTP reads, a breaker per replica.
    orders: Arc<Replicas<OrdersBackend>>,
    /// Payments' gRPC reads, a breaker per replica.
    payments: Arc<Replicas<PaymentsBackend>>,
    /// A second attempt at a read of either that failed, within each one's budget.
    retries: Arc<ReadRetries>,
    bulkhead: Bulkhead,
    /// Calls the bulkhead turned away, by backend.
    rejected: Counter,
    /// Calls to the intake sent on to another replica, by why.
    moved: Family<MovedLabels, Counter>,
}

/// Why a call to the intake went on to another replica.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MovedLabels {
    reason: &'static str,
}

/// How long a call to the intake may take, every replica it tries together: inside the 5 s the
/// gateway gives a request, so a second replica's answer still reaches the client.
pub const INTAKE_BUDGET: Duration = Duration::from_millis(4_500);
/// The longest one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Replicas one call to the intake tries at most.
pub const INTAKE_ATTEMPTS: usize = 2;

/// Calls to the service behind the gateway that may be in flight at once. A checkout's calls
/// take milliseconds; a backend that hangs holds each place for the 3-second call timeout (4.5 s
/// when a second replica is tried), and past this many the gateway answers `503` at once instead
/// of holding more connections.
pub const IN_FLIGHT: usize = 64;

// ANCHOR: breaker_config
/// The breaker in front of the service behind the gateway. That
/// service restarts in under a second, so the breaker opens on a clear
/// majority of a short window and tries again soon.
pub fn breaker_config() -> anyhow::Result<circuit_breaker::Config> {
    Ok(circuit_breaker::Config::builder()
        .count_window(20)
        .failure_rate_threshold(50.0)
        .minimum_calls(10)
        .open_wait(Duration::from_secs(2))
        .half_open_permits(2)
        .build()?)
}
// ANCHOR_END: breaker_config

/// The labels of the bulkhead's series: which service it guards.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

/// The labels of a breaker's gauge: which service it guards, and which replica of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    backend: String,
    endpoint: String,
}

/// The labels of a breaker's transitions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    backend: String,
    endpoint: String,
    to: String,
}

/// The breaker's state as a number: 0 closed (or disabled: calls pass), 1 half-open, 2 open.
fn breaker_level(state: Breaker) -> i64 {
    match state {
        Breaker::Closed | Breaker::Disabled => 0,
        Breaker::HalfOpen => 1,
        Breaker::Open | Breaker::ForcedOpen => 2,
    }
}

fn breaker_name(state: Breaker) -> &'static str {
    match breaker_level(state) {
        0 => "closed",
        1 => "half_open",
        _ => "open",
    }
}

/// The breakers' metric families, registered once for every backend.
#[derive(Clone)]
struct BreakerMetrics {
    state: Family<BreakerLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
}

fn breaker_metrics(registry: &mut Registry) -> BreakerMetrics {
    let state = Family::<BreakerLabels, Gauge>::default();
    registry.register(
        "shop_circuit_breaker_state",
        "The breaker in front of a backend's replica: 0 closed, 1 half-open, 2 open",
        state.clone(),
    );
    let transitions = Family::<TransitionLabels, Counter>::default();
    registry.register(
        "shop_circuit_breaker_transitions",
        "State changes of the breaker in front of a backend's replica, by the state entered",
        transitions.clone(),
    );
    BreakerMetrics { state, transitions }
}

impl BreakerMetrics {
    /// A breaker for calls to `backend`'s replica at `endpoint`, whose transitions are counted
    /// and logged as they happen.
    fn breaker(
        &self,
        backend: &str,
        endpoint: &str,
    ) -> anyhow::Result<CircuitBreaker> {
        let (named, at) = (backend.to_owned(), endpoint.to_owned());
        let transitions = self.transitions.clone();
        Ok(CircuitBreaker::builder(breaker_config()?)
            .on_transition(move |change| {
                let to = breaker_name(change.to);
                warn!(backend = %named, endpoint = %at, to, reason = %change.reason, "circuit breaker");
                let entered = TransitionLabels {
                    backend: named.clone(),
                    endpoint: at.clone(),
                    to: to.to_owned(),
                };
                transitions.get_or_create(&entered).inc();
            })
            .build())
    }

    /// Reads each breaker's state at each scrape: listeners run outside the breaker's lock, so
    /// two transitions close together could reach a gauge set by the listener in the wrong
    /// order.
    fn refresh(&self, breakers: Vec<(BreakerLabels, StateOf)>) -> Refresh {
        let state = self.state.clone();
        Arc::new(move || {
            for (labels, state_of) in &breakers {
                state.get_or_create(labels).set(breaker_level(state_of()));
            }
            Box::pin(async { Ok(()) })
        })
    }
}

/// Reads one breaker's state.
type StateOf = Box<dyn Fn() -> Breaker + Send + Sync>;

/// The bulkhead's rejections (counted as they happen) and its places in use (read at each
/// scrape), exported through `registry`.
fn watched_bulkhead(
    registry: &mut Registry,
    backend: &str,
    bulkhead: Bulkhead,
) -> (Counter, Refresh) {
    let labels = BackendLabels { backend: backend.to_owned() };
    let rejected = Family::<BackendLabels, Counter>::default();
    registry.register(
        "shop_bulkhead_rejections",
        "Calls to a backend turned away at once because the bulkhead was full",
        rejected.clone(),
    );
    let in_flight = Family::<BackendLabels, Gauge>::default();
    registry.register(
        "shop_bulkhead_in_flight",
        "Calls to a backend in flight now, out of the bulkhead's places",
        in_flight.clone(),
    );
    let counter = rejected.get_or_create(&labels).clone();
    let refresh: Refresh = Arc::new(move || {
        let now = i64::try_from(bulkhead.in_flight()).unwrap_or(i64::MAX);
        in_flight.get_or_create(&labels).set(now);
        Box::pin(async { Ok(()) })
    });
    (counter, refresh)
}

/// The gateway's router, ready to serve or to drive with `oneshot`, and the exporter of its
/// metrics (its `/metrics` route is already in the router).
pub fn app(
    env: &Env,
    verifier: Verifier,
    rate: Rate,
) -> anyhow::Result<(Router, Exporter)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_millis(500))
        .build()?;
    let backend = env.style.intake();
    let bulkhead = Bulkhead::new(backend.name(), IN_FLIGHT);
    let mut built = None;
    let exporter = Exporter::new(|registry| {
        let breakers = breaker_metrics(registry);
        let (rejected, in_flight) =
            watched_bulkhead(registry, backend.name(), bulkhead.clone());
        let (retries, budgets) =
            ReadRetries::registered(registry, ORDERS_READS, PAYMENTS_READS);
        let moved = Family::<MovedLabels, Counter>::default();
        registry.register(
            "shop_intake_moved",
            "Calls to the intake sent on to another replica after the one tried failed, by why",
            moved.clone(),
        );
        let parts = backends(env, &breakers).map(|(intake, orders, payments)| {
            let mut states = watched(backend.name(), &intake);
            states.extend(watched(ORDERS_READS, &orders));
            states.extend(watched(PAYMENTS_READS, &payments));
            let refresh = breakers.refresh(states);
            (
                Edge {
                    intake,
                    http,
                    orders,
                    payments,
                    retries,
                    bulkhead,
                    rejected,
                    moved,
                },
                refresh,
            )
        });
        match parts {
            Ok((edge, state)) => {
                built = Some(Ok(edge));
                Some(crate::metrics::all(vec![state, in_flight, budgets]))
            }
            Err(error) => {
                built = Some(Err(error));
                Some(crate::metrics::all(vec![in_flight, budgets]))
            }
        }
    });
    let edge =
        built.ok_or_else(|| anyhow::anyhow!("the backends were not built"))??;
    let always: Check = std::sync::Arc::new(|| Box::pin(async { Ok(()) }));
    let backends = graph::Backends {
        orders: Arc::clone(&edge.orders),
        payments: Arc::clone(&edge.payments),
        retries: Arc::clone(&edge.retries),
    };
    let graphql = Router::new()
        .route("/graphql", post(graph::endpoint))
        .with_state((graph::schema(), backends));
    let api = Router::new()
        .route("/checkouts", post(place))
        .route("/checkouts/{order_id}", get(view))
        .route("/orders/{order_id}", get(order))
        .with_state(edge)
        .merge(graphql)
        .route_layer(from_fn_with_state(RateLimiter::new(rate), rate_limit))
        .route_layer(from_fn_with_state(verifier, authenticate));
    let app = api
        .merge(probe::routes(always))
        .fallback(|| async {
            let detail =
                "routes: POST /checkouts, GET /checkouts/{order_id}, GET /orders/{order_id}, \
                 POST /graphql";
            respond(Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "No such route",
                detail,
            ))
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(5),
        ))
        .layer(from_fn(problem_bodies))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    // Outermost, so the counts are what clients got: a timeout's 504 and a 404 included.
    let app = telemetry::traced(exporter.measured(app), "gateway");
    Ok((app, exporter))
}

/// Each replica's breaker as the gauge labels it, and how to read its state.
fn watched<T: Guarded + Send + Sync + 'static>(
    backend: &str,
    replicas: &Arc<Replicas<T>>,
) -> Vec<(BreakerLabels, StateOf)> {
    let each = |(i, (endpoint, _)): (usize, &(String, Arc<T>))| {
        let labels = BreakerLabels {
            backend: backend.to_owned(),
            endpoint: endpoint.clone(),
        };
        let replicas = Arc::clone(replicas);
        let state: StateOf =
            Box::new(move || replicas.members()[i].1.breaker().state());
        (labels, state)
    };
    replicas.members().iter().enumerate().map(each).collect()
}

/// The breaker before orders' reads, as its metrics name it: apart from the intake's, which is
/// also orders when choreographed.
pub const ORDERS_READS: &str = "orders-reads";
/// The breaker before payments' reads, as its metrics name it.
pub const PAYMENTS_READS: &str = "payments-reads";

/// How long `GET /orders/{id}` may take, both of its calls together.
pub const COMPOSE_DEADLINE: Duration = Duration::from_secs(1);

/// The intake's replicas, and the clients of the orders and payments services' replicas.
type Backends = (
    Arc<Replicas<Endpoint>>,
    Arc<Replicas<OrdersBackend>>,
    Arc<Replicas<PaymentsBackend>>,
);

/// Each replica of each backend behind a breaker of its own: a payments service that fails does
/// not stop checkouts, nor the orders part of a view; one replica that fails does not stop the
/// others.
fn backends(env: &Env, breakers: &BreakerMetrics) -> anyhow::Result<Backends> {
    let intake = env.style.intake();
    let mut endpoints = vec![];
    for (addr, url) in env.replicas(intake).into_iter().zip(env.urls(intake)) {
        let breaker = Arc::new(breakers.breaker(intake.name(), &addr)?);
        endpoints.push((addr, Arc::new(Endpoint { url, breaker })));
    }
    let (orders_role, payments_role) =
        (Role::Participant(Service::Orders), Role::Participant(Service::Payments));
    let mut orders = vec![];
    for (addr, url) in
        env.replicas(orders_role).into_iter().zip(env.urls(orders_role))
    {
        // The composed reads carry the caller's trace on, as the calls to the intake do.
        let breaker = breakers.breaker(ORDERS_READS, &addr)?;
        let backend =
            OrdersBackend::new(url, breaker)?.with_propagation(telemetry::propagate);
        orders.push((addr, Arc::new(backend)));
    }
    let mut payments = vec![];
    if env.tls.is_some() {
        // Over mutual TLS, to payments' TLS listeners, with the gateway's certificate.
        for (addr, channel) in crate::identity::payments_channels(env)? {
            let breaker = breakers.breaker(PAYMENTS_READS, &addr)?;
            let backend = PaymentsBackend::over(channel, breaker)
                .with_propagation(telemetry::propagate);
            payments.push((addr, Arc::new(backend)));
        }
    } else {
        let listed =
            env.replicas(payments_role).into_iter().zip(env.urls(payments_role));
        for (addr, url) in listed {
            let breaker = breakers.breaker(PAYMENTS_READS, &addr)?;
            let backend = PaymentsBackend::new(url, breaker)?
                .with_propagation(telemetry::propagate);
            payments.push((addr, Arc::new(backend)));
        }
    }
    Ok((
        Arc::new(Replicas::new(endpoints)?),
        Arc::new(Replicas::new(orders)?),
        Arc::new(Replicas::new(payments)?),
    ))
}

// ANCHOR: order_view
/// `GET /orders/{order_id}`: the order as the orders service records it
/// (HTTP/JSON) and its payment as the payments service does (gRPC), asked
/// at once and cut off together. A backend that fails leaves its part
/// missing, named; only "no such order" fails the whole answer.
async fn order(
    State(edge): State<Edge>,
    Extension(caller): Extension<Caller>,
    Path(order_id): Path<String>,
) -> Response {
    if let Err(forbidden) = caller.require(READ) {
        return forbidden.into_response();
    }
    if let Some(refusal) = invalid_id(&order_id) {
        return refusal;
    }
    let deadline = Instant::now() + COMPOSE_DEADLINE;
    let (who, path) = (&caller.client, format!("/orders/{order_id}"));
    let ids = vec![order_id.clone()];
    // Each read tried once more, on the next replica, if it failed
    // and its budget allows (`roles/retries.rs`).
    let (order, payments) = tokio::join!(
        edge.retries.orders.call(
            deadline,
            || edge.orders.any_closed(),
            || async {
                let replica = edge.orders.pick();
                replica.get_json::<OrderView>(&path, who, deadline).await
            }
        ),
        edge.retries.payments.call(
            deadline,
            || edge.payments.any_closed(),
            || async {
                let replica = edge.payments.pick();
                replica.for_orders(ids.clone(), who, deadline).await
            }
        ),
    );
    match compose::assemble(&order_id, order, payments) {
        Ok(view) => Json(view).into_response(),
        Err(error) => respond(error.problem()),
    }
}
// ANCHOR_END: order_view

/// Runs the gateway until SIGTERM.
pub async fn run(env: Env) -> anyhow::Result<()> {
    let listener = probe::listen(env.listen_addr(Role::Gateway)?).await?;
    let key = crate::config::jwt_key()?;
    let verifier = Verifier::hs256(key.expose(), ISSUER, AUDIENCE);
    let rate = Rate::new(200, 100.0)?;
    let (app, _metrics) = app(&env, verifier, rate)?;
    let addr = listener.local_addr()?;
    info!(
        "gateway on http://{addr}: POST /checkouts, GET /checkouts/{{id}} (bearer token)"
    );
    probe::serve(listener, app, probe::terminated()).await?;
    info!("gateway stopped");
    Ok(())
}

async fn place(
    State(edge): State<Edge>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(forbidden) = caller.require(WRITE) {
        return forbidden.into_response();
    }
    let route = Route {
        method: Method::POST,
        template: "/checkouts",
        path: "/checkouts".into(),
    };
    forward(&edge, route, &caller, &headers, body).await
}

async fn view(
    State(edge): State<Edge>,
    Extension(caller): Extension<Caller>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(forbidden) = caller.require(READ) {
        return forbidden.into_response();
    }
    let path = format!("/checkouts/{order_id}");
    let route =
        Route { method: Method::GET, template: "/checkouts/{order_id}", path };
    forward(&edge, route, &caller, &headers, Bytes::new()).await
}

/// A call to the service behind the gateway: its method, its route's template (which names the
/// call's span) and its path on whichever replica answers it.
struct Route {
    method: Method,
    template: &'static str,
    path: String,
}

/// Sends the request on, if the bulkhead has room for it.
async fn forward(
    edge: &Edge,
    route: Route,
    caller: &Caller,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    match edge.bulkhead.call(call_backend(edge, route, caller, headers, body)).await
    {
        Ok(response) => response,
        Err(full) => {
            edge.rejected.inc();
            warn!(%full, "turned a call away");
            let detail = format!(
                "{} calls to the checkout service are in flight already; retry with the same \
                 Idempotency-Key in a second",
                full.max_in_flight
            );
            let mut response = respond(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "The gateway is at its limit for the checkout service",
                detail,
            ));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

// ANCHOR: call_intake
/// Sends the request on with the verified caller and the trace context to
/// the intake's replicas in turn, each through its own breaker, and the
/// answer back as it came. A replica that did not answer, or answered
/// `503`, passes the call to the next one: at most [`INTAKE_ATTEMPTS`]
/// replicas, within [`INTAKE_BUDGET`]. A checkout may go to a second
/// replica even after the first timed out, because the Idempotency-Key
/// dedupes it in the log every replica shares: the second finds the first
/// one's checkout.
async fn call_backend(
    edge: &Edge,
    route: Route,
    caller: &Caller,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let deadline = Instant::now() + INTAKE_BUDGET;
    let (mut sent, mut failed) = (0, None::<(&'static str, Response)>);
    let mut refused = None;
    for replica in edge.intake.turn() {
        let left = deadline.saturating_duration_since(Instant::now());
        if sent == INTAKE_ATTEMPTS || (sent > 0 && left < MIN_LEFT) {
            break;
        }
        let permit = match replica.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => {
                refused.get_or_insert(rejected.state);
                continue;
            }
        };
        if let Some((reason, _)) = &failed {
            edge.moved.get_or_create(&MovedLabels { reason }).inc();
            let next = &replica.url;
            warn!(reason, %next, "an intake replica failed; trying the next");
        }
        sent += 1;
        let timeout = left.min(ATTEMPT_TIMEOUT);
        let request = edge
            .http
            .request(route.method.clone(), format!("{}{}", replica.url, route.path));
        let answer = send(request, &route, caller, headers, body.clone(), timeout);
        match answer.await {
            Ok(response) => {
                let status = response.status();
                let outcome =
                    circuit_breaker::classify::http_status(status.as_u16());
                permit.record(outcome);
                if status != StatusCode::SERVICE_UNAVAILABLE {
                    return response;
                }
                failed = Some(("unavailable", response));
            }
            Err(error) => {
                permit.record(Outcome::Failure);
                let reason = match () {
                    () if error.is_connect() => "unreachable",
                    () if error.is_timeout() => "timeout",
                    () => "broken",
                };
                failed = Some((reason, unreachable(&error)));
            }
        }
    }
    match (failed, refused) {
        (Some((_, response)), _) => response,
        // Every replica's breaker refused: nothing was sent.
        (None, Some(state)) => breaker_open(state),
        (None, None) => unreachable!("a service has at least one replica"),
    }
}
// ANCHOR_END: call_intake

/// One attempt: the request with the verified caller, the client's content type, key and request
/// id, and the trace context; the answer's status, body and the headers a client needs.
async fn send(
    request: reqwest::RequestBuilder,
    route: &Route,
    caller: &Caller,
    headers: &HeaderMap,
    body: Bytes,
    timeout: Duration,
) -> Result<Response, reqwest::Error> {
    let mut request = request.timeout(timeout).header(CALLER_HEADER, &caller.client);
    for name in [header::CONTENT_TYPE.as_str(), IDEMPOTENCY_KEY, "x-request-id"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let (request, span) = hops::http_client(
        "gateway",
        route.method.as_str(),
        route.template,
        request.body(body),
    );
    let answer = request.send().instrument(span).await?;
    let status = answer.status();
    let pass = [header::CONTENT_TYPE, header::LOCATION, header::RETRY_AFTER];
    let kept: Vec<(header::HeaderName, HeaderValue)> = pass
        .into_iter()
        .filter_map(|name| answer.headers().get(&name).cloned().map(|v| (name, v)))
        .collect();
    let bytes = answer.bytes().await?;
    let mut response = (status, bytes).into_response();
    // insert, not extend: extend would add to the body's own content type.
    for (name, value) in kept {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

/// The answer while the breaker keeps the gateway from calling: at once, and when to come back.
fn breaker_open(state: Breaker) -> Response {
    let detail = format!(
        "most recent calls to the checkout service failed, so the gateway is not calling it \
         (breaker {}); retry with the same Idempotency-Key in a few seconds",
        breaker_name(state)
    );
    let mut response = respond(Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream-failing",
        "The checkout service is failing",
        detail,
    ));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    response
}

fn unreachable(error: &reqwest::Error) -> Response {
    warn!(%error, "the saga service did not answer");
    let (status, detail) = if error.is_timeout() {
        let detail = "the saga service did not answer in time; the checkout may have started: \
                      retry with the same Idempotency-Key";
        (StatusCode::GATEWAY_TIMEOUT, detail)
    } else {
        let detail =
            "the saga service is unreachable; retry with the same Idempotency-Key";
        (StatusCode::BAD_GATEWAY, detail)
    };
    respond(Problem::new(
        status,
        "upstream",
        "The checkout service did not answer",
        detail,
    ))
}
