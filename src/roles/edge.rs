//! The gateway as a process: the gateway chapter's token check and per-client rate limit, in front
//! of the saga service.
//!
//! It keeps to what belongs at the edge. It verifies the bearer token once and forwards the
//! verified caller (the customer) in a header only it can set; it limits each client; it bounds
//! bodies and time; it turns every failure into a problem body that says what to do. Pricing,
//! stock and the checkout's rules stay in the services behind it.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gateway::auth::{CALLER_HEADER, Caller, Verifier, authenticate};
use gateway::limit::{Rate, RateLimiter, rate_limit};
use gateway::problem::{problem_bodies, respond};
use http_json::problem::Problem;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tracing::{info, warn};

use crate::config::{Env, Role};
use crate::probe::{self, Check};
use crate::roles::intake::IDEMPOTENCY_KEY;

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
    saga: String,
    http: reqwest::Client,
}

/// The gateway's router, ready to serve or to drive with `oneshot`.
pub fn app(
    saga_url: String,
    verifier: Verifier,
    rate: Rate,
) -> anyhow::Result<Router> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_millis(500))
        .build()?;
    let edge = Edge { saga: saga_url, http };
    let always: Check = std::sync::Arc::new(|| Box::pin(async { Ok(()) }));
    let api = Router::new()
        .route("/checkouts", post(place))
        .route("/checkouts/{order_id}", get(view))
        .route_layer(from_fn_with_state(RateLimiter::new(rate), rate_limit))
        .route_layer(from_fn_with_state(verifier, authenticate))
        .with_state(edge);
    Ok(api
        .merge(probe::routes(always))
        .fallback(|| async {
            let detail = "routes: POST /checkouts, GET /checkouts/{order_id}";
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
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid)))
}

/// Runs the gateway until SIGTERM.
pub async fn run(env: Env) -> anyhow::Result<()> {
    let key = crate::config::jwt_key()?;
    let verifier = Verifier::hs256(key.expose(), ISSUER, AUDIENCE);
    let rate = Rate::new(200, 100.0)?;
    let app = app(env.url(env.style.intake()), verifier, rate)?;
    let addr = env.listen_addr(Role::Gateway)?;
    info!(
        "gateway on http://{addr}: POST /checkouts, GET /checkouts/{{id}} (bearer token)"
    );
    probe::serve(addr, app, probe::terminated()).await?;
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
    let url = format!("{}/checkouts", edge.saga);
    forward(&edge, Method::POST, &url, &caller, &headers, body).await
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
    let url = format!("{}/checkouts/{order_id}", edge.saga);
    forward(&edge, Method::GET, &url, &caller, &headers, Bytes::new()).await
}

/// Sends the request on with the verified caller, and the answer back as it came.
async fn forward(
    edge: &Edge,
    method: Method,
    url: &str,
    caller: &Caller,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let mut request =
        edge.http.request(method, url).header(CALLER_HEADER, &caller.client);
    for name in [header::CONTENT_TYPE.as_str(), IDEMPOTENCY_KEY, "x-request-id"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let answer = match request.body(body).send().await {
        Ok(answer) => answer,
        Err(error) => return unreachable(&error),
    };
    let status = answer.status();
    let pass = [header::CONTENT_TYPE, header::LOCATION, header::RETRY_AFTER];
    let kept: Vec<(header::HeaderName, HeaderValue)> = pass
        .into_iter()
        .filter_map(|name| answer.headers().get(&name).cloned().map(|v| (name, v)))
        .collect();
    match answer.bytes().await {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            // insert, not extend: extend would add to the body's own content type.
            for (name, value) in kept {
                response.headers_mut().insert(name, value);
            }
            response
        }
        Err(error) => unreachable(&error),
    }
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
