//! Malformed requests, oversized bodies, unknown routes and wrong methods all get problem
//! bodies, and the gateway keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

mod support;

use serde_json::Value;

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type =
        response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json", "status {status}");
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn every_bad_request_gets_a_problem_and_the_gateway_keeps_serving() {
    let shop = support::shop().await;
    let token = shop.token("web-shop");
    let http = &shop.http;

    // Unknown route: 404 (no token needed to learn that).
    let (status, body) =
        problem(http.get(shop.url("/admin")).send().await.unwrap()).await;
    assert_eq!((status, body["type"].as_str()), (404, Some("/problems/not-found")));

    // Wrong method on a known route.
    let response = http.delete(shop.url("/orders")).bearer_auth(&token).send().await;
    let (status, _) = problem(response.unwrap()).await;
    assert_eq!(status, 405);

    // Malformed JSON to a gRPC-backed route: refused before payments hears of it.
    let response = http
        .post(shop.url("/payments"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"order_id": "o-1", "amount_cents": "#)
        .send()
        .await;
    let (status, body) = problem(response.unwrap()).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (400, Some("/problems/malformed-json"))
    );

    // An unknown field, and a wrong type.
    let response = http
        .post(shop.url("/payments"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"order_id": "o-1", "amount_cents": -5}))
        .send()
        .await;
    assert_eq!(problem(response.unwrap()).await.0, 422);

    // Malformed JSON to an HTTP-backed route: the orders service's own problem.
    let response = http
        .post(shop.url("/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "k-1")
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await;
    assert_eq!(problem(response.unwrap()).await.0, 400);

    // Oversized: 64 KiB against a 16 KiB limit, refused by tower-http's layer.
    let response = http
        .post(shop.url("/payments"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(vec![b' '; 64 * 1024])
        .send()
        .await;
    let (status, body) = problem(response.unwrap()).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (413, Some("/problems/body-too-large"))
    );

    // An order id that is not a UUID never reaches the orders service.
    let response =
        http.get(shop.url("/orders/..%2F..%2Fadmin")).bearer_auth(&token).send();
    assert_eq!(problem(response.await.unwrap()).await.0, 404);
    assert_eq!(shop.gateway.gateway.orders.backend.calls(), 1);

    // Still serving, and every answer carries a request id.
    let id = shop.place_order("c-42", "k-2").await;
    let response = http
        .get(shop.url(&format!("/orders/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn a_request_over_the_gateways_time_limit_is_a_504_problem() {
    // A stand-in orders service that never answers.
    let hang = axum::Router::new()
        .route("/v2/orders", axum::routing::get(std::future::pending::<()>));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hang).await });

    let mut config =
        support::config(format!("http://{addr}"), "http://127.0.0.1:9".into());
    config.backend_timeout = std::time::Duration::from_secs(60);
    config.request_timeout = std::time::Duration::from_millis(200);
    let token = support::token(&config, "web-shop");
    let running = gateway::spawn(config).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/orders", running.base_url());
    let response = http.get(&url).bearer_auth(&token).send().await.unwrap();
    let (status, body) = problem(response).await;
    assert_eq!((status, body["type"].as_str()), (504, Some("/problems/timeout")));
}
