//! Graceful shutdown: a request already running when the service is told to stop still gets
//! its answer, and the server returns only after that.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::time::Duration;

use http_json::client::OrdersClient;
use http_json::orders::{NewOrder, OrderLine};
use http_json::server::{ServiceConfig, spawn};

#[tokio::test]
async fn a_request_in_flight_finishes_before_the_server_stops() {
    // The handler runs at once; the answer then waits 300 ms (the service's injected
    // latency), which is the window in which we ask the server to stop.
    let config =
        ServiceConfig { latency: Duration::from_millis(300), ..Default::default() };
    let service = spawn(config).await.unwrap();
    let client =
        OrdersClient::new(service.base_url(), Duration::from_secs(10)).unwrap();
    let order = NewOrder {
        customer_id: "c-42".into(),
        lines: vec![OrderLine {
            sku: "mug".into(),
            quantity: 1,
            unit_price_cents: 1,
        }],
    };
    let in_flight = tokio::spawn(async move { client.create("k-1", &order).await });

    // Bounded wait for the condition "the handler has stored the order".
    let state = service.state.clone();
    let mut polls = 0;
    while state.orders.is_empty() {
        polls += 1;
        assert!(polls < 2_000, "the request never reached the handler");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!in_flight.is_finished(), "the answer is still being delayed");

    service.shutdown().await.unwrap();
    // The server has returned; the request that was running got its full answer.
    let created =
        in_flight.await.unwrap().expect("the in-flight request was answered");
    assert_eq!(created.order.customer_id, "c-42");
}
