//! Deadlines, over a real loopback connection: what tonic does with `grpc-timeout` by itself, and
//! what the payments service adds.
//!
//! The first three tests run a bare service that does nothing about deadlines, to pin down
//! tonic 0.14's own behaviour; the chapter's claims rest on them. The rest test the service's code.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::sync::Mutex;
use std::time::Duration;

use grpc::client;
use grpc::proto::v2::payments_client::PaymentsClient;
use grpc::proto::v2::payments_server::{Payments, PaymentsServer};
use grpc::proto::v2::{
    AuthorizationResult, AuthorizeRequest, BatchSummary, CaptureRequest, Payment,
    PaymentEvent, PaymentStatus, WatchPaymentRequest,
};
use grpc::server::{RunningPayments, spawn};
use grpc::service::ServiceConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming, TimeoutExpired};

mod support;
use support::order;

/// Generous bound on any single step over loopback; hitting it means a hang, not slowness.
const STEP: Duration = Duration::from_secs(10);

fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Whether tonic's own timer (`TimeoutExpired`) is in the status's source chain.
fn local_timer_fired(status: &Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        if error.is::<TimeoutExpired>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Sends on its channel when dropped: proof that a handler's future was dropped.
struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            // A test that no longer waits has dropped the receiver: nobody to tell.
            let _nobody_waiting = tx.send(());
        }
    }
}

/// A payments service with no deadline code at all. Its `Authorize` reports that it started (with
/// the `grpc-timeout` it received), then never answers; its `WatchPayment` sends one event at once
/// and another 400 ms later; its `CaptureBatch` calls `Authorize` on `relay_to`, as a handler that
/// calls another service does.
struct Bare {
    started: Mutex<Option<oneshot::Sender<Option<String>>>>,
    dropped: Mutex<Option<oneshot::Sender<()>>>,
    relay_to: Option<std::net::SocketAddr>,
}

/// What a test sees of [`Bare`]'s `Authorize` handler: that it started, with which
/// `grpc-timeout`, and when it was dropped.
struct Handler {
    started: oneshot::Receiver<Option<String>>,
    dropped: oneshot::Receiver<()>,
}

type Events = ReceiverStream<Result<PaymentEvent, Status>>;
type Results = ReceiverStream<Result<AuthorizationResult, Status>>;

#[tonic::async_trait]
impl Payments for Bare {
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<Payment>, Status> {
        let _signal = DropSignal(self.dropped.lock().unwrap().take());
        let timeout = request.metadata().get("grpc-timeout");
        let timeout = timeout.map(|v| v.to_str().unwrap().to_owned());
        if let Some(started) = self.started.lock().unwrap().take() {
            started.send(timeout).unwrap();
        }
        std::future::pending().await
    }

    type WatchPaymentStream = Events;

    async fn watch_payment(
        &self,
        _: Request<WatchPaymentRequest>,
    ) -> Result<Response<Events>, Status> {
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            for sequence in 1..=2 {
                if sequence == 2 {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                let event = PaymentEvent { sequence, ..PaymentEvent::default() };
                if tx.send(Ok(event)).await.is_err() {
                    return; // the caller has gone: stop streaming
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn capture_batch(
        &self,
        _: Request<Streaming<CaptureRequest>>,
    ) -> Result<Response<BatchSummary>, Status> {
        let addr = self.relay_to.ok_or(Status::unimplemented("no relay"))?;
        let mut downstream = bare_client(addr).await;
        downstream.authorize(Request::new(order("o-1"))).await?;
        Ok(Response::new(BatchSummary::default()))
    }

    type AuthorizeStreamStream = Results;

    async fn authorize_stream(
        &self,
        _: Request<Streaming<AuthorizeRequest>>,
    ) -> Result<Response<Results>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Serves [`Bare`]; `server_timeout` is `Server::timeout`.
async fn serve_bare(
    server_timeout: Option<Duration>,
) -> (std::net::SocketAddr, Handler) {
    serve_relay(server_timeout, None).await
}

async fn serve_relay(
    server_timeout: Option<Duration>,
    relay_to: Option<std::net::SocketAddr>,
) -> (std::net::SocketAddr, Handler) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, started) = oneshot::channel();
    let (dropped_tx, dropped) = oneshot::channel();
    let bare = Bare {
        started: Mutex::new(Some(started_tx)),
        dropped: Mutex::new(Some(dropped_tx)),
        relay_to,
    };
    let mut builder = Server::builder();
    if let Some(timeout) = server_timeout {
        builder = builder.timeout(timeout);
    }
    let router = builder.add_service(PaymentsServer::new(bare));
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    (addr, Handler { started, dropped })
}

async fn bare_client(
    addr: std::net::SocketAddr,
) -> PaymentsClient<tonic::transport::Channel> {
    PaymentsClient::connect(format!("http://{addr}")).await.unwrap()
}

// ANCHOR: tonic_deadline_tests
#[tokio::test]
async fn tonic_drops_the_handler_at_the_callers_deadline_and_says_cancelled() {
    let (addr, mut handler) = serve_bare(None).await;
    let mut client = bare_client(addr).await;
    let request = with_timeout(order("o-1"), Duration::from_millis(200));
    let status = client.authorize(request).await.unwrap_err();
    let sent = handler.started.try_recv().expect("the handler ran");
    assert!(sent.is_some(), "the server saw the caller's grpc-timeout");
    // Not DEADLINE_EXCEEDED: tonic reports its timer as CANCELLED.
    assert_eq!(
        (status.code(), status.message()),
        (Code::Cancelled, "Timeout expired")
    );
    assert!(local_timer_fired(&status), "the client's own timer: {status:?}");
    // The server side let go of the work: the handler's future was dropped.
    let dropped = tokio::time::timeout(STEP, handler.dropped).await;
    dropped.expect("handler dropped").unwrap();
}

#[tokio::test]
async fn the_servers_own_timer_answers_cancelled_too() {
    // Server::timeout goes through the same timer as grpc-timeout (the shorter
    // wins); this client sends no deadline, so the answer comes from the server.
    let (addr, handler) = serve_bare(Some(Duration::from_millis(200))).await;
    let mut client = bare_client(addr).await;
    let status = client.authorize(order("o-1")).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Cancelled, "Timeout expired")
    );
    assert!(!local_timer_fired(&status), "it came over the wire: {status:?}");
    let dropped = tokio::time::timeout(STEP, handler.dropped).await;
    dropped.expect("handler dropped").unwrap();
}

#[tokio::test]
async fn tonic_does_not_time_a_response_stream() {
    let (addr, _) = serve_bare(None).await;
    let mut client = bare_client(addr).await;
    let request =
        with_timeout(WatchPaymentRequest::default(), Duration::from_millis(200));
    let mut events = client.watch_payment(request).await.unwrap().into_inner();
    let mut sequences = Vec::new();
    while let Some(event) = tokio::time::timeout(STEP, events.message())
        .await
        .expect("stream stalled")
        .expect("no error, although the deadline passed")
    {
        sequences.push(event.sequence);
    }
    // The second event left the server 400 ms in, well after the 200 ms deadline.
    assert_eq!(sequences, [1, 2]);
}

#[tokio::test]
async fn a_caller_that_stops_waiting_resets_the_call_and_the_handler_is_dropped() {
    // No deadline at all, so no timer on either side: the caller just drops
    // the call once the handler runs. The reset alone stops the server's work.
    let (addr, handler) = serve_bare(None).await;
    let mut client = bare_client(addr).await;
    tokio::select! {
        answer = client.authorize(order("o-1")) => panic!("answered: {answer:?}"),
        started = handler.started => assert_eq!(started.unwrap(), None),
    }
    let dropped = tokio::time::timeout(STEP, handler.dropped).await;
    dropped.expect("handler dropped").unwrap();
}

#[tokio::test]
async fn a_call_made_by_a_handler_does_not_inherit_the_callers_deadline() {
    let (downstream, handler) = serve_bare(None).await;
    let (relay, _) = serve_relay(None, Some(downstream)).await;
    let mut client = bare_client(relay).await;
    let empty = tokio_stream::empty::<CaptureRequest>();
    let request = with_timeout(empty, Duration::from_secs(5));
    tokio::select! {
        answer = client.capture_batch(request) => panic!("answered: {answer:?}"),
        seen = handler.started => {
            assert_eq!(seen.unwrap(), None, "no grpc-timeout downstream");
        }
    }
}
// ANCHOR_END: tonic_deadline_tests

async fn start(latency: Duration) -> (RunningPayments, client::Client) {
    let server = spawn(ServiceConfig {
        card_network_latency: latency,
        ..ServiceConfig::default()
    })
    .await
    .unwrap();
    let client = client::connect(server.addr, "test-deadlines").await.unwrap();
    (server, client)
}

// ANCHOR: budget_test
#[tokio::test]
async fn a_deadline_the_card_network_cannot_meet_places_no_hold() {
    // The card network takes 800 ms; the caller allows 300 ms.
    let (server, mut client) = start(Duration::from_millis(800)).await;
    let request = with_timeout(order("o-1"), Duration::from_millis(300));
    let status = client.authorize(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().starts_with("the card network needs 800 ms"));
    assert_eq!(server.cards.holds(), 0, "no money reserved for nobody");
    assert!(server.ledger.is_empty());

    let retry = with_timeout(order("o-1"), Duration::from_secs(5));
    let payment = client.authorize(retry).await.expect("a fresh attempt");
    assert_eq!(payment.into_inner().order_id, "o-1");
    assert_eq!(server.cards.holds(), 1);
    server.shutdown().await.unwrap();
}
// ANCHOR_END: budget_test

#[tokio::test]
async fn a_watch_ends_with_deadline_exceeded_at_the_watchers_deadline() {
    let (server, mut client) = start(Duration::ZERO).await;
    let payment = client.authorize(order("o-1")).await.unwrap().into_inner();
    let watch = WatchPaymentRequest { payment_id: payment.payment_id };
    let request = with_timeout(watch, Duration::from_millis(200));
    let mut events = client.watch_payment(request).await.unwrap().into_inner();
    let first = events.message().await.unwrap().expect("the current state");
    assert_eq!(first.status(), PaymentStatus::Authorized);
    // Nobody captures the payment; the stream ends at the deadline anyway.
    let end = tokio::time::timeout(STEP, events.message())
        .await
        .expect("the stream outlived the watcher's deadline");
    assert_eq!(end.unwrap_err().code(), Code::DeadlineExceeded);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_authorize_stream_ends_with_deadline_exceeded_at_the_deadline() {
    let (server, mut client) = start(Duration::ZERO).await;
    let (tx, rx) = mpsc::channel::<AuthorizeRequest>(1);
    let request = with_timeout(ReceiverStream::new(rx), Duration::from_millis(200));
    let mut answers = client.authorize_stream(request).await.unwrap().into_inner();
    let end = tokio::time::timeout(STEP, answers.message())
        .await
        .expect("the stream outlived the caller's deadline");
    assert_eq!(end.unwrap_err().code(), Code::DeadlineExceeded);
    drop(tx);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_client_reports_its_own_passed_deadline_as_deadline_exceeded() {
    // Kept alive: the bare handler reports its start on it, and a handler that
    // panicked would reset the stream before the client's own timer fires.
    let (addr, _handler) = serve_bare(None).await;
    let mut client = client::connect(addr, "test-deadlines").await.unwrap();
    let status =
        client::authorize(&mut client, order("o-1"), Duration::from_millis(200))
            .await
            .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "no answer in time: Timeout expired");
}
