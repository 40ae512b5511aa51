//! The client against a real server on `127.0.0.1:0`: typed results, problems as errors, and the
//! timeout a caller sees when the service is slow, followed by the safe retry.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::routing::post;
use http_json::client::{ClientError, OrdersClient};
use http_json::orders::{NewOrder, OrderLine};
use http_json::server::{ServiceConfig, spawn};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

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
    // The service takes 3 s; the caller waits 300 ms. A 10x margin keeps this stable
    // on a busy machine.
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

    // The caller does not know whether the order exists; it retries with the same
    // key and patience.
    let patient = impatient.with_timeout(Duration::from_secs(30));
    // The first attempt stored its order and idempotency record before the delay,
    // so the retry is answered from the store, never with 409 (still in progress).
    let created = patient.create("checkout-9", &mug_order()).await.unwrap();
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

/// The total-request timeout can fire after the headers arrived, while the body is
/// still coming: that is the same ambiguous timeout, not a transport error.
#[tokio::test]
async fn a_body_that_stalls_is_a_timeout_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _read = socket.read(&mut request).await.unwrap();
        // The headers promise 100 bytes; one arrives, the rest never does.
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                    content-length: 100\r\n\r\n[";
        socket.write_all(head.as_bytes()).await.unwrap();
        std::future::pending::<()>().await;
    });
    let timeout = Duration::from_millis(200);
    let client = OrdersClient::new(format!("http://{addr}"), timeout).unwrap();
    let err = client.list(None).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(t) if t == timeout), "got {err:?}");
    assert!(err.is_retryable());
    server.abort();
}

/// Sends on its channel when dropped: shows when hyper drops a request's future.
struct SignalOnDrop(Arc<Mutex<Option<oneshot::Sender<()>>>>);

impl Drop for SignalOnDrop {
    fn drop(&mut self) {
        if let Some(dropped) = self.0.lock().unwrap().take() {
            // A test that no longer waits has dropped the receiver: nobody to tell.
            let _nobody_waiting = dropped.send(());
        }
    }
}

/// Why `inject_latency` delays *after* the handler: when the caller hangs up, hyper drops the
/// request's future, so a delay *before* the handler means the handler never runs at all.
#[tokio::test]
async fn a_caller_that_hangs_up_cancels_a_request_still_waiting_for_its_handler() {
    let handled = Arc::new(AtomicBool::new(false));
    let (dropped_tx, dropped) = oneshot::channel::<()>();
    let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
    let handler = {
        let handled = Arc::clone(&handled);
        move || async move {
            handled.store(true, Ordering::SeqCst);
            StatusCode::CREATED
        }
    };
    let delay_before = move |request: Request, next: Next| {
        let signal = SignalOnDrop(Arc::clone(&dropped_tx));
        async move {
            let _signal = signal;
            tokio::time::sleep(Duration::from_secs(60)).await;
            next.run(request).await
        }
    };
    let router = Router::new()
        .route("/v1/orders", post(handler))
        .layer(middleware::from_fn(delay_before));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let err = reqwest::Client::new()
        .post(format!("http://{addr}/v1/orders"))
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // Dropped long before its 60 s sleep could end: the caller's hang-up cancelled it.
    tokio::time::timeout(Duration::from_secs(30), dropped)
        .await
        .expect("hyper should drop the request's future when the caller hangs up")
        .unwrap();
    assert!(!handled.load(Ordering::SeqCst), "the handler never ran");
    server.abort();
}
