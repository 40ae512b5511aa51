//! The gateway's routes and the layers around them.
//!
//! Order of the layers, outermost first: a request id for every request (set if the client sent
//! none, echoed in the response), problem bodies for every error, an overall timeout, a body
//! limit. Then, for matched routes only, authentication and then the rate limit, so the limit
//! is keyed on a verified client. An unknown route is a 404 problem without a token check.

use axum::body::Bytes;
use axum::extract::{
    DefaultBodyLimit, Extension, FromRequest, Path, RawQuery, Request, State,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use grpc::proto::v2::AuthorizeRequest;
use http_json::problem::JsonBody;
use http_json::problem::Problem;
use serde::Deserialize;
use tokio::time::Instant;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tracing::info;

use crate::Gateway;
use crate::auth::{Caller, authenticate};
use crate::backends::{BackendError, Forwarded};
use crate::compose;
use crate::graphql::{self, PaymentFetch};
use crate::limit::rate_limit;
use crate::openapi::{self, OPENAPI_PATH};
use crate::problem::{problem_bodies, respond};

/// The header that carries the request id, in and out.
pub const REQUEST_ID: &str = "x-request-id";

// ANCHOR: app
/// The whole gateway, ready to serve or to test with `oneshot`.
pub fn app(gateway: Gateway) -> Router {
    let config = gateway.config.clone();
    let routes = Router::new()
        .route("/orders", get(list_orders).post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/payments", post(authorize))
        .route("/checkout/{order_id}", get(checkout))
        .route("/graphql", post(graphql_query))
        // route_layer: only matched routes; the last added runs first.
        .route_layer(from_fn_with_state(gateway.limiter.clone(), rate_limit))
        .route_layer(from_fn_with_state(gateway.verifier(), authenticate))
        // Added after the layers, so it needs no token: the contract is public.
        .route(OPENAPI_PATH, get(|| async { Json(openapi::document()) }));
    routes
        .fallback(|| async {
            let detail = "routes: /orders, /payments, /checkout/{order_id}, \
                          /graphql, /openapi.json";
            respond(Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "No such route",
                detail,
            ))
        })
        .with_state(gateway)
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            config.request_timeout,
        ))
        .layer(from_fn(problem_bodies))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}
// ANCHOR_END: app

fn request_id(headers: &HeaderMap) -> &str {
    headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-")
}

fn deadline(gateway: &Gateway) -> Instant {
    Instant::now() + gateway.config.backend_timeout
}

/// The orders service's answer, as the gateway's: its `Location` rewritten to
/// the gateway's paths.
fn relay(forwarded: Forwarded) -> Response {
    let mut response = (forwarded.status, forwarded.body).into_response();
    let headers = response.headers_mut();
    let mut set = |name: header::HeaderName, value: Option<String>| {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(name, value);
        }
    };
    set(header::CONTENT_TYPE, forwarded.content_type);
    let location =
        forwarded.location.map(|l| l.replacen("/v2/orders", "/orders", 1));
    set(header::LOCATION, location);
    set(
        header::HeaderName::from_static(http_json::idempotency::IDEMPOTENT_REPLAYED),
        forwarded.replayed,
    );
    set(header::RETRY_AFTER, forwarded.retry_after);
    response
}

fn refuse(error: BackendError) -> Response {
    respond(error.problem())
}

async fn forward(
    gateway: &Gateway,
    caller: &Caller,
    method: reqwest::Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let answer = gateway
        .orders
        .forward(
            method,
            path,
            text("content-type"),
            text(http_json::idempotency::IDEMPOTENCY_KEY),
            body.to_vec(),
            &caller.client,
            request_id(headers),
            deadline(gateway),
        )
        .await;
    answer.map(relay).unwrap_or_else(refuse)
}

async fn create_order(
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(denied) = caller.require("orders:write") {
        return denied.into_response();
    }
    let post = reqwest::Method::POST;
    forward(&gateway, &caller, post, "/v2/orders", &headers, body).await
}

async fn list_orders(
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = caller.require("orders:read") {
        return denied.into_response();
    }
    let path = match query {
        Some(query) => format!("/v2/orders?{query}"),
        None => "/v2/orders".to_owned(),
    };
    let get = reqwest::Method::GET;
    forward(&gateway, &caller, get, &path, &headers, Bytes::new()).await
}

async fn get_order(
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = caller.require("orders:read") {
        return denied.into_response();
    }
    // Only a UUID reaches the backend: nothing a client puts here can change
    // the backend path.
    if uuid::Uuid::parse_str(&id).is_err() {
        let detail = format!("{id:?} is not an order id (a UUID)");
        return respond(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such order",
            detail,
        ));
    }
    let path = format!("/v2/orders/{id}");
    let get = reqwest::Method::GET;
    forward(&gateway, &caller, get, &path, &headers, Bytes::new()).await
}

/// `POST /payments`: the JSON face of the gRPC `Authorize`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeJson {
    /// The order to pay for.
    #[schema(min_length = 1)]
    pub order_id: String,
    /// The amount, in the currency's minor unit (cents).
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "http_json::problem::whole")]
    pub amount_cents: u64,
    /// ISO 4217 code, passed to payments unchecked here (payments takes `EUR` only).
    #[schema(min_length = 1)]
    pub currency: String,
    /// The payment provider's token for the card, never the card number.
    #[schema(min_length = 1)]
    pub card_token: String,
    /// Optional: an absent one reaches payments as the empty string, as proto3
    /// has no absent string.
    #[serde(default)]
    pub customer_id: String,
}

async fn authorize(
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    // The scope first: a caller who may not pay learns nothing about the body.
    if let Err(denied) = caller.require("payments:write") {
        return denied.into_response();
    }
    let body = match JsonBody::<AuthorizeJson>::from_request(request, &()).await {
        Ok(JsonBody(body)) => body,
        Err(problem) => return respond(problem),
    };
    let message = AuthorizeRequest {
        order_id: body.order_id,
        amount_cents: body.amount_cents,
        currency: body.currency,
        card_token: body.card_token,
        customer_id: body.customer_id,
    };
    let answer =
        gateway.payments.authorize(message, &caller.client, deadline(&gateway));
    match answer.await {
        Ok(payment) => (StatusCode::CREATED, Json(payment)).into_response(),
        // A refusal carries its gRPC code mapped to an HTTP status.
        Err(error) => refuse(error),
    }
}

async fn checkout(
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(order_id): Path<String>,
) -> Response {
    if let Err(denied) = caller.require("checkout:read") {
        return denied.into_response();
    }
    match compose::checkout(&gateway, &order_id, &caller.client).await {
        Ok(view) => {
            info!(order_id, missing = view.missing.len(), "checkout view composed");
            Json(view).into_response()
        }
        Err(error) => refuse(error),
    }
}

async fn graphql_query(
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    if let Err(denied) = caller.require("checkout:read") {
        return denied.into_response();
    }
    let request = match JsonBody::from_request(request, &()).await {
        Ok(JsonBody(request)) => request,
        Err(problem) => return respond(problem),
    };
    let schema = &gateway.schema;
    let fetch = PaymentFetch::Batched;
    let response = graphql::execute(&gateway, schema, &caller, request, fetch).await;
    Json(response).into_response()
}
