//! Routed calls reach the right service; payments' gRPC codes become HTTP statuses with problem
//! bodies; a failing backend trips its breaker and the gateway then fails fast.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use gateway::problem::http_status_of;
use serde_json::Value;
use tonic::Code;

#[tokio::test]
async fn orders_and_payments_are_reached_through_one_entry_point() {
    let shop = support::shop().await;
    let id = shop.place_order("c-42", "k-1").await;
    let response = shop
        .http
        .get(shop.url(&format!("/orders/{id}")))
        .bearer_auth(shop.token("web-shop"))
        .send()
        .await
        .unwrap();
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["total"]["amount"], "25.00");

    let response = shop.pay(&id).await;
    assert_eq!(response.status(), 201);
    let payment: Value = response.json().await.unwrap();
    assert_eq!(
        (payment["order_id"].as_str(), payment["status"].as_str()),
        (Some(&*id), Some("authorized"))
    );
    assert_eq!(shop.payments.ledger.len(), 1);
}

#[tokio::test]
async fn grpc_refusals_become_http_statuses_with_problem_bodies() {
    let shop = support::shop().await;
    let pay = |body: Value| {
        let request = shop
            .http
            .post(shop.url("/payments"))
            .bearer_auth(shop.token("web-shop"));
        request.json(&body).send()
    };
    let refused = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let body: Value = response.json().await.unwrap();
        (status, body["type"].as_str().unwrap().to_owned())
    };
    let order = |card: &str, amount: u64| {
        serde_json::json!({"order_id": "o-9", "amount_cents": amount,
                           "currency": "EUR", "card_token": card})
    };
    // INVALID_ARGUMENT (a currency the shop does not take) -> 400.
    let mut usd = order("tok_visa", 100);
    usd["currency"] = "USD".into();
    let answer = refused(pay(usd).await.unwrap()).await;
    assert_eq!(answer, (400, "/problems/payments-invalid-argument".into()));
    // FAILED_PRECONDITION (the card network declined) -> 400.
    let answer = refused(pay(order("tok_declined", 100)).await.unwrap()).await;
    assert_eq!(answer, (400, "/problems/payments-failed-precondition".into()));
    // ALREADY_EXISTS (the order is paid, on other terms) -> 409.
    assert_eq!(pay(order("tok_visa", 100)).await.unwrap().status(), 201);
    let answer = refused(pay(order("tok_visa", 200)).await.unwrap()).await;
    assert_eq!(answer, (409, "/problems/payments-already-exists".into()));
    // Refusals are the backend working: its breaker is still closed.
    let breaker = &shop.gateway.gateway.payments.backend.breaker;
    assert_eq!(breaker.state(), circuit_breaker::State::Closed);
}

#[test]
fn the_status_table_sends_retryable_codes_to_retryable_statuses() {
    assert_eq!(http_status_of(Code::Unavailable).as_u16(), 503);
    assert_eq!(http_status_of(Code::ResourceExhausted).as_u16(), 429);
    assert_eq!(http_status_of(Code::DeadlineExceeded).as_u16(), 504);
    assert_eq!(http_status_of(Code::NotFound).as_u16(), 404);
    assert_eq!(http_status_of(Code::PermissionDenied).as_u16(), 403);
    assert_eq!(http_status_of(Code::Aborted).as_u16(), 409);
    assert_eq!(http_status_of(Code::Internal).as_u16(), 500);
}

/// A breaker that judges after four calls and opens at half of them failing.
fn breaker_of_four() -> circuit_breaker::Config {
    circuit_breaker::Config::builder()
        .count_window(4)
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_backend_that_is_down_trips_its_breaker_and_calls_then_fail_fast() {
    let shop = support::shop_with(std::time::Duration::ZERO, |config| {
        config.payments_url = "http://127.0.0.1:9".into(); // nothing listens there
        config.breaker = breaker_of_four();
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(shop.pay("o-1").await.status().as_u16());
    }
    // Four real attempts fail (502), then the breaker answers for payments (503).
    assert_eq!(statuses, [502, 502, 502, 502, 503, 503]);
    assert_eq!(shop.gateway.gateway.payments.backend.calls(), 4);
}

/// A 429 from orders is orders answering (slow down, this caller), not orders
/// failing: the client gets the 429, and the breaker stays closed however many
/// come. The rule is the circuit-breaker chapter's `http_status`.
#[tokio::test]
async fn a_429_from_orders_reaches_the_client_and_never_opens_the_breaker() {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let throttled = || async {
        (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "7")], "slow down")
            .into_response()
    };
    let app = axum::Router::new().fallback(throttled);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let orders_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let shop = support::shop_with(std::time::Duration::ZERO, |config| {
        config.orders_url = orders_url;
        config.breaker = breaker_of_four();
    })
    .await;
    let id = "3f2a1c9e-0000-4000-8000-000000000001";
    for _ in 0..8 {
        let get = shop.http.get(shop.url(&format!("/orders/{id}")));
        let response = get.bearer_auth(shop.token("web-shop")).send().await.unwrap();
        assert_eq!(response.status(), 429);
        let body = serde_json::json!({"customer_id": "c-1", "lines": []});
        let post = shop.http.post(shop.url("/orders")).json(&body);
        let response =
            post.bearer_auth(shop.token("web-shop")).send().await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "7");
    }
    let breaker = &shop.gateway.gateway.orders.backend.breaker;
    assert_eq!(breaker.state(), circuit_breaker::State::Closed);
    assert_eq!(shop.gateway.gateway.orders.backend.calls(), 16);
}
