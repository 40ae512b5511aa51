//! The client against a real server on `127.0.0.1:0`: typed results, problems as errors, and the
//! timeout a caller sees when the service is slow, followed by the safe retry.

use std::time::Duration;

use http_json::client::{ClientError, OrdersClient};
use http_json::orders::{NewOrder, OrderLine};
use http_json::server::{ServiceConfig, spawn};

fn mug_order() -> NewOrder {
    NewOrder {
        customer_id: "c-42".into(),
        lines: vec![OrderLine {
            sku: "mug".into(),
            quantity: 2,
            unit_price_cents: 1250,
        }],
    }
}

#[tokio::test]
async fn create_get_list_and_a_replayed_retry_over_the_network() {
    let service = spawn(ServiceConfig::default()).await.unwrap();
    let client =
        OrdersClient::new(service.base_url(), Duration::from_secs(5)).unwrap();

    let first = client.create("checkout-1", &mug_order()).await.unwrap();
    assert!(!first.replayed);
    let retry = client.create("checkout-1", &mug_order()).await.unwrap();
    assert!(retry.replayed);
    assert_eq!(retry.order, first.order);

    assert_eq!(client.get(first.order.id).await.unwrap(), first.order);
    assert_eq!(client.get_v2(first.order.id).await.unwrap().total.amount, "25.00");
    assert_eq!(client.list(Some("c-42")).await.unwrap(), vec![first.order]);
    service.shutdown().await.unwrap();
}

#[tokio::test]
async fn problems_arrive_as_typed_errors() {
    let service = spawn(ServiceConfig::default()).await.unwrap();
    let client =
        OrdersClient::new(service.base_url(), Duration::from_secs(5)).unwrap();

    let invalid = NewOrder { customer_id: "c-42".into(), lines: vec![] };
    let err = client.create("checkout-2", &invalid).await.unwrap_err();
    let problem = err.problem().expect("a problem body");
    assert_eq!(
        (problem.status, problem.kind.as_str()),
        (422, "/problems/invalid-fields")
    );
    assert!(!err.is_retryable(), "a 422 will fail the same way every time");

    let problem = client
        .post_raw("/v1/orders", "application/json", b"{oops".to_vec(), "checkout-3")
        .await
        .unwrap();
    assert_eq!(problem.kind, "/problems/malformed-json");
    service.shutdown().await.unwrap();
}

// ANCHOR: timeout_test
#[tokio::test]
async fn a_slow_service_times_the_caller_out_and_the_same_key_makes_the_retry_safe()
{
    // The service takes 3 s; the caller waits 300 ms. A 10x margin keeps this stable on a busy machine.
    let service = spawn(ServiceConfig {
        latency: Duration::from_secs(3),
        ..ServiceConfig::default()
    })
    .await
    .unwrap();
    let impatient =
        OrdersClient::new(service.base_url(), Duration::from_millis(300)).unwrap();

    let err = impatient.create("checkout-9", &mug_order()).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout(t) if t == Duration::from_millis(300)),
        "got {err:?}"
    );
    assert!(err.is_retryable());

    // The caller does not know whether the order exists; it retries with the same key and patience.
    let patient = impatient.with_timeout(Duration::from_secs(30));
    let created = loop {
        match patient.create("checkout-9", &mug_order()).await {
            Ok(created) => break created,
            // 409: the first attempt is still being processed; a real client backs off here.
            Err(e) if e.problem().is_some_and(|p| p.status == 409) => continue,
            Err(e) => panic!("retry failed: {e}"),
        }
    };
    assert!(
        created.replayed,
        "the timed-out attempt created the order; the retry only replays it"
    );
    assert_eq!(
        service.state.orders.len(),
        1,
        "exactly one order despite two attempts"
    );
    service.shutdown().await.unwrap();
}
// ANCHOR_END: timeout_test

#[tokio::test]
async fn a_service_that_is_not_there_is_a_transport_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = OrdersClient::new(
        format!("http://127.0.0.1:{port}"),
        Duration::from_secs(2),
    )
    .unwrap();
    let err = client.list(None).await.unwrap_err();
    assert!(matches!(err, ClientError::Transport(_)), "got {err:?}");
}
