//! The HTTP API's promises, driven through `app().oneshot(...)`: no socket, no port.
//!
//! Each bad input gets the right 4xx with an `application/problem+json` body that names the problem,
//! and the service keeps serving afterwards. A retried create with the same idempotency key replays
//! the first answer and creates nothing; the same key with another body is refused. Both API
//! versions serve the same orders in their own representation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use http_json::server::{AppState, ServiceConfig, app};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    content_type: String,
    replayed: Option<String>,
    location: Option<String>,
    body: Value,
}

async fn call(router: &Router, request: Request<Body>) -> Reply {
    let response =
        router.clone().oneshot(request).await.expect("the router never fails");
    let header = |name: &str| {
        response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, content_type, replayed, location) = (
        response.status(),
        header("content-type").unwrap_or_default(),
        header("idempotent-replayed"),
        header("location"),
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("every body is JSON")
    };
    Reply { status, content_type, replayed, location, body }
}

fn post(
    path: &str,
    key: Option<&str>,
    content_type: &str,
    body: impl Into<Body>,
) -> Request<Body> {
    let mut request = Request::post(path).header(header::CONTENT_TYPE, content_type);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(body.into()).unwrap()
}

fn post_json(path: &str, key: &str, body: &Value) -> Request<Body> {
    post(path, Some(key), "application/json", body.to_string())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn mug_order() -> Value {
    json!({"customer_id": "c-42", "lines": [{"sku": "mug", "quantity": 2, "unit_price_cents": 1250}]})
}

fn router() -> (Router, AppState) {
    let state = AppState::new(ServiceConfig::default());
    (app(state.clone()), state)
}

fn assert_problem(reply: &Reply, status: StatusCode, kind: &str) {
    assert_eq!(reply.status, status, "body: {}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json");
    assert_eq!(reply.body["type"], kind, "body: {}", reply.body);
    assert_eq!(reply.body["status"], status.as_u16());
    assert!(!reply.body["title"].as_str().unwrap().is_empty());
    assert!(!reply.body["detail"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn creates_then_gets_and_lists_an_order() {
    let (router, _) = router();
    let created = call(&router, post_json("/v1/orders", "k-1", &mug_order())).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.replayed.as_deref(), Some("false"));
    assert_eq!(created.body["total_cents"], 2500);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.location, Some(format!("/v1/orders/{id}")));

    let fetched = call(&router, get(&format!("/v1/orders/{id}"))).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body, created.body);

    let listed = call(&router, get("/v1/orders?customer_id=c-42")).await;
    assert_eq!(listed.body, json!([created.body]));
    let nobody = call(&router, get("/v1/orders?customer_id=c-0")).await;
    assert_eq!(nobody.body, json!([]));
}

#[tokio::test]
async fn a_retry_with_the_same_key_replays_and_creates_nothing() {
    let (router, state) = router();
    let first =
        call(&router, post_json("/v1/orders", "checkout-7", &mug_order())).await;
    // Same request, different JSON layout: still the same request.
    let same_body_reformatted = post(
        "/v1/orders",
        Some("checkout-7"),
        "application/json",
        format!("{:#}", mug_order()),
    );
    let retry = call(&router, same_body_reformatted).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.replayed.as_deref(), Some("true"));
    assert_eq!(
        retry.body, first.body,
        "the replay is the first response, same order id"
    );
    assert_eq!(retry.location, first.location);
    assert_eq!(state.orders.len(), 1);
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_422_and_creates_nothing() {
    let (router, state) = router();
    call(&router, post_json("/v1/orders", "checkout-7", &mug_order())).await;
    let mut other = mug_order();
    other["lines"][0]["quantity"] = json!(3);
    let reply = call(&router, post_json("/v1/orders", "checkout-7", &other)).await;
    assert_problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/idempotency-key-reused",
    );
    // The same body to the other version is a different request too.
    let reply =
        call(&router, post_json("/v2/orders", "checkout-7", &mug_order())).await;
    assert_problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/idempotency-key-reused",
    );
    assert_eq!(state.orders.len(), 1);
}

#[tokio::test]
async fn a_missing_or_malformed_idempotency_key_is_400() {
    let (router, state) = router();
    let reply = call(
        &router,
        post("/v1/orders", None, "application/json", mug_order().to_string()),
    )
    .await;
    assert_problem(
        &reply,
        StatusCode::BAD_REQUEST,
        "/problems/idempotency-key-missing",
    );
    let reply =
        call(&router, post_json("/v1/orders", "two words", &mug_order())).await;
    assert_problem(
        &reply,
        StatusCode::BAD_REQUEST,
        "/problems/idempotency-key-missing",
    );
    assert!(state.orders.is_empty());
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (router, _) = router();
    let reply = call(
        &router,
        post(
            "/v1/orders",
            Some("k"),
            "application/json",
            r#"{"customer_id": "c-42", "lines": ["#,
        ),
    )
    .await;
    assert_problem(&reply, StatusCode::BAD_REQUEST, "/problems/malformed-json");
}

#[tokio::test]
async fn a_missing_field_is_422_and_names_the_field() {
    let (router, _) = router();
    let reply =
        call(&router, post_json("/v1/orders", "k", &json!({"lines": []}))).await;
    assert_problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-fields",
    );
    assert!(
        reply.body["detail"].as_str().unwrap().contains("customer_id"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn a_mistyped_field_is_422_and_names_the_field() {
    let (router, _) = router();
    let mut order = mug_order();
    order["lines"][0]["quantity"] = json!("two");
    let reply = call(&router, post_json("/v1/orders", "k", &order)).await;
    assert_problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-fields",
    );
    assert!(
        reply.body["detail"].as_str().unwrap().contains("quantity"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn an_unknown_field_is_422_not_silently_ignored() {
    let (router, state) = router();
    // A field this API does not have: without deny_unknown_fields, serde would skip it and the
    // order would be placed in euros.
    let mut order = mug_order();
    order["currency"] = json!("USD");
    let reply = call(&router, post_json("/v1/orders", "k", &order)).await;
    assert_problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-fields",
    );
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(detail.contains("unknown field `currency`"), "{detail}");
    // An extra, misspelled copy of a field inside a line is refused the same way.
    let mut order = mug_order();
    order["lines"][0]["quantty"] = json!(5);
    let reply = call(&router, post_json("/v1/orders", "k", &order)).await;
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(detail.contains("unknown field `quantty`"), "{detail}");
    assert!(state.orders.is_empty());
}

#[tokio::test]
async fn a_retry_that_adds_a_field_is_refused_not_replayed() {
    // The idempotency fingerprint is taken from the decoded request. If decoding dropped
    // unknown fields, this retry would look like the first request and be replayed.
    let (router, state) = router();
    call(&router, post_json("/v1/orders", "checkout-7", &mug_order())).await;
    let mut changed = mug_order();
    changed["currency"] = json!("USD");
    let reply = call(&router, post_json("/v1/orders", "checkout-7", &changed)).await;
    assert_problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-fields",
    );
    assert_eq!(reply.replayed, None, "refused before the idempotency store");
    assert_eq!(state.orders.len(), 1);
}

#[tokio::test]
async fn business_rule_violations_are_422_with_a_pointer_per_field() {
    let (router, state) = router();
    let order = json!({"customer_id": "", "lines": [{"sku": "mug", "quantity": 0, "unit_price_cents": 1}]});
    let reply = call(&router, post_json("/v1/orders", "k", &order)).await;
    assert_problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-fields",
    );
    let pointers: Vec<&str> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/customer_id", "/lines/0/quantity"]);
    assert!(state.orders.is_empty());
}

#[tokio::test]
async fn the_wrong_content_type_is_415() {
    let (router, _) = router();
    let reply = call(
        &router,
        post("/v1/orders", Some("k"), "text/plain", mug_order().to_string()),
    )
    .await;
    assert_problem(
        &reply,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "/problems/unsupported-media-type",
    );
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let state = AppState::new(ServiceConfig {
        body_limit: 1024,
        ..ServiceConfig::default()
    });
    let router = app(state.clone());
    let mut order = mug_order();
    order["customer_id"] = json!("c".repeat(2048));
    let reply = call(&router, post_json("/v1/orders", "k", &order)).await;
    assert_problem(
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "/problems/body-too-large",
    );
    assert!(state.orders.is_empty());
}

#[tokio::test]
async fn unknown_orders_routes_and_methods_get_problems() {
    let (router, _) = router();
    let reply =
        call(&router, get("/v1/orders/00000000-0000-0000-0000-000000000000")).await;
    assert_problem(&reply, StatusCode::NOT_FOUND, "/problems/not-found");
    let reply = call(&router, get("/v1/orders/not-a-uuid")).await;
    assert_problem(&reply, StatusCode::NOT_FOUND, "/problems/not-found");
    let reply = call(&router, get("/v3/orders")).await;
    assert_problem(&reply, StatusCode::NOT_FOUND, "/problems/not-found");
    let reply =
        call(&router, Request::delete("/v1/orders").body(Body::empty()).unwrap())
            .await;
    assert_problem(
        &reply,
        StatusCode::METHOD_NOT_ALLOWED,
        "/problems/method-not-allowed",
    );
}

#[tokio::test]
async fn the_service_keeps_serving_after_every_kind_of_bad_input() {
    let (router, state) = router();
    let bad = [
        post("/v1/orders", Some("k1"), "application/json", "{"),
        post("/v1/orders", Some("k2"), "text/plain", "hello"),
        post_json("/v1/orders", "k3", &json!({"customer_id": 7})),
        post("/v1/orders", None, "application/json", mug_order().to_string()),
    ];
    for request in bad {
        assert!(call(&router, request).await.status.is_client_error());
    }
    let good = call(&router, post_json("/v1/orders", "k-good", &mug_order())).await;
    assert_eq!(good.status, StatusCode::CREATED);
    assert_eq!(state.orders.len(), 1, "bad input created nothing and lost nothing");
}

#[tokio::test]
async fn v1_and_v2_serve_the_same_order_in_their_own_shape() {
    let (router, _) = router();
    let order = json!({"customer_id": "c-42", "lines": [
        {"sku": "mug", "quantity": 2, "unit_price_cents": 1250},
        {"sku": "tea", "quantity": 1, "unit_price_cents": 399}
    ]});
    let created = call(&router, post_json("/v2/orders", "k", &order)).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.location, Some(format!("/v2/orders/{id}")));

    let v1 = call(&router, get(&format!("/v1/orders/{id}"))).await.body;
    assert_eq!(v1["total_cents"], 2899);
    assert_eq!(v1["customer_id"], "c-42");
    assert_eq!(v1["lines"][1]["unit_price_cents"], 399);

    let v2 = call(&router, get(&format!("/v2/orders/{id}"))).await.body;
    assert_eq!(v2, created.body);
    assert_eq!(v2["total"], json!({"amount": "28.99", "currency": "EUR"}));
    assert_eq!(v2["customer"], json!({"id": "c-42"}));
    assert_eq!(
        v2["items"][1]["unit_price"],
        json!({"amount": "3.99", "currency": "EUR"})
    );
    assert!(v2.get("total_cents").is_none() && v2.get("lines").is_none());
}

#[tokio::test]
async fn v2_takes_the_v1_request_body_not_its_own_response_shape() {
    let (router, state) = router();
    // A client that mirrors v2's response in its request is refused: v2 changed only what the
    // service answers, and POST /v2/orders still takes customer_id, lines, unit_price_cents.
    let v2_shaped = json!({"customer": {"id": "c-42"}, "items": [
        {"sku": "mug", "quantity": 2, "unit_price": {"amount": "12.50", "currency": "EUR"}}
    ]});
    let reply = call(&router, post_json("/v2/orders", "k", &v2_shaped)).await;
    assert_problem(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/invalid-fields",
    );
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(detail.contains("unknown field `customer`"), "{detail}");
    assert!(state.orders.is_empty());

    let created = call(&router, post_json("/v2/orders", "k", &mug_order())).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["items"][0]["unit_price"]["amount"], "12.50");
}

/// `/v1` says it is deprecated and when it goes, on every answer (a refusal too), points to v2,
/// and is counted; `/v2` says nothing of the kind.
#[tokio::test]
async fn v1_announces_its_sunset_on_every_answer_and_is_counted() {
    use http_json::deprecation::{V1_DEPRECATED_AT, V1_SUNSET};
    use std::time::{Duration, UNIX_EPOCH};
    let (router, state) = router();
    let answer = |request: Request<Body>| {
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await.unwrap();
            (response.status(), response.headers().clone())
        }
    };
    let unknown = "/v1/orders/00000000-0000-0000-0000-000000000000";
    let delete = Request::delete("/v1/orders").body(Body::empty()).unwrap();
    let answers = [
        answer(post_json("/v1/orders", "k1", &mug_order())).await,
        answer(get(unknown)).await,
        answer(get("/v1/orders")).await,
        answer(post("/v1/orders", Some("k2"), "application/json", "{}")).await,
        answer(delete).await,
    ];
    let statuses: Vec<StatusCode> =
        answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(
        statuses,
        [
            StatusCode::CREATED,
            StatusCode::NOT_FOUND,
            StatusCode::OK,
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::METHOD_NOT_ALLOWED
        ]
    );
    for (status, answer) in &answers {
        let deprecation = answer["deprecation"].to_str().unwrap();
        let seconds: u64 = deprecation.strip_prefix('@').unwrap().parse().unwrap();
        assert_eq!(seconds, V1_DEPRECATED_AT as u64, "{status}");
        let sunset = httpdate::parse_http_date(answer["sunset"].to_str().unwrap())
            .expect("an HTTP date, as RFC 8594 asks");
        assert_eq!(httpdate::fmt_http_date(sunset), V1_SUNSET);
        // The policy: at least six months between the announcement and the end.
        let deprecated = UNIX_EPOCH + Duration::from_secs(seconds);
        let notice = sunset.duration_since(deprecated).unwrap();
        assert!(notice >= Duration::from_secs(182 * 24 * 3600), "{notice:?}");
        let links: Vec<&str> =
            answer.get_all("link").iter().map(|l| l.to_str().unwrap()).collect();
        assert_eq!(links, ["</v2/orders>; rel=\"successor-version\""], "{status}");
    }
    let headers = |request: Request<Body>| {
        let answer = answer(request);
        async move { answer.await.1 }
    };
    let v2 = headers(get("/v2/orders")).await;
    assert!(v2.get("deprecation").is_none() && v2.get("sunset").is_none());
    assert!(v2.get("link").is_none());
    assert_eq!(state.v1_calls.get(), 5, "every /v1 call, and only those");
}

/// serde's derive reads a struct from an array by position; the service refuses that form, at
/// the top and in the lines, as the document says: objects only.
#[tokio::test]
async fn an_order_written_as_arrays_is_refused() {
    for body in [
        json!(["c-42", [{"sku": "mug", "quantity": 2, "unit_price_cents": 1250}]]),
        json!({"customer_id": "c-42", "lines": [["mug", 2, 1250]]}),
    ] {
        let (router, state) = router();
        let reply = call(&router, post_json("/v2/orders", "arrays", &body)).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let detail = reply.body["detail"].as_str().unwrap();
        assert!(
            detail.contains("invalid type: sequence, expected struct"),
            "{detail}"
        );
        assert!(state.orders.list(None).is_empty(), "nothing was placed");
    }
}

/// JSON Schema counts `2.0` as an integer, and so does the service (serde's `u32` alone would
/// refuse it; schemathesis sent `234.0`); `2.5` is refused with the field named.
#[tokio::test]
async fn a_whole_number_written_with_a_fraction_is_read_as_that_number() {
    let order = |quantity: f64| {
        json!({"customer_id": "c-42", "lines": [
            {"sku": "mug", "quantity": quantity, "unit_price_cents": 1250}
        ]})
    };
    let (router, state) = router();
    let reply = call(&router, post_json("/v2/orders", "whole", &order(2.0))).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["items"][0]["quantity"], 2);
    let reply = call(&router, post_json("/v2/orders", "half", &order(2.5))).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("lines[0].quantity: invalid value: floating point `2.5`"),
        "{detail}"
    );
    assert_eq!(state.orders.list(None).len(), 1, "only the whole one was placed");
}
