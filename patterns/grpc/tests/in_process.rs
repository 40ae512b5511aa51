//! The service's handlers called in process, on paused tokio time: two watchers of one payment,
//! two authorizations of one order at the same moment, and a caller that stops reading its
//! stream. No network, so time only moves when every task waits, and each step of these races
//! happens in a known order.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::sync::Arc;
use std::time::Duration;

use grpc::ledger::Ledger;
use grpc::proto::v2::payments_server::Payments;
use grpc::proto::v2::{
    AuthorizationResult, AuthorizeRequest, CaptureRequest, PaymentEvent,
    PaymentStatus, WatchPaymentRequest,
};
use grpc::service::{PaymentsService, ServiceConfig};
use http_body_util::Full;
use prost::Message;
use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::codec::{Codec, Streaming};
use tonic::{Code, Request, Status};
use tonic_prost::ProstCodec;

mod support;
use support::order;

type Events = mpsc::Receiver<Result<PaymentEvent, Status>>;

async fn watch(service: &PaymentsService, payment_id: &str) -> Events {
    let request =
        Request::new(WatchPaymentRequest { payment_id: payment_id.into() });
    let stream = service.watch_payment(request).await.unwrap();
    stream.into_inner().into_inner()
}

async fn next(events: &mut Events) -> Option<(u32, PaymentStatus)> {
    let event = events.recv().await?.unwrap();
    Some((event.sequence, event.status()))
}

fn status(ledger: &Ledger, payment_id: &str) -> PaymentStatus {
    ledger.get(payment_id).unwrap().status()
}

// ANCHOR: watchers_test
#[tokio::test(start_paused = true)]
async fn two_watchers_see_the_same_history_and_neither_moves_the_payment() {
    let settlement_delay = Duration::from_millis(50);
    let service = PaymentsService::new(ServiceConfig {
        card_network_latency: Duration::ZERO,
        settlement_delay,
    });
    let request = Request::new(order("o-1"));
    let payment = service.authorize(request).await.unwrap().into_inner();
    let id = payment.payment_id.as_str();
    let (mut a, mut b) = (watch(&service, id).await, watch(&service, id).await);
    assert_eq!(next(&mut a).await, Some((1, PaymentStatus::Authorized)));
    assert_eq!(next(&mut b).await, Some((1, PaymentStatus::Authorized)));

    // A minute passes with two watchers and no capture: nothing happens.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(status(&service.ledger(), id), PaymentStatus::Authorized);
    assert!(a.try_recv().is_err() && b.try_recv().is_err(), "no new events");

    // Only a capture moves it; settlement follows; both watchers see it all.
    let capture = CaptureRequest { payment_id: id.into(), amount_cents: 2899 };
    service.capture(&capture).unwrap();
    for events in [&mut a, &mut b] {
        assert_eq!(next(events).await, Some((2, PaymentStatus::Captured)));
        assert_eq!(next(events).await, Some((3, PaymentStatus::Settled)));
        assert_eq!(next(events).await, None, "the stream ends when settled");
    }
}
// ANCHOR_END: watchers_test

#[tokio::test(start_paused = true)]
async fn a_second_authorize_for_an_order_in_flight_is_aborted_not_charged_twice() {
    let service = Arc::new(PaymentsService::new(ServiceConfig {
        card_network_latency: Duration::from_millis(100),
        ..ServiceConfig::default()
    }));
    let first = tokio::spawn({
        let service = Arc::clone(&service);
        async move { service.authorize(Request::new(order("o-1"))).await }
    });
    // Let the first call run until it waits for the card network.
    tokio::task::yield_now().await;
    assert_eq!(service.card_network().holds(), 1, "the first call is in flight");

    let second = service.authorize(Request::new(order("o-1"))).await.unwrap_err();
    assert_eq!(second.code(), Code::Aborted, "{second:?}");

    let first = first.await.unwrap().unwrap().into_inner();
    let retry = service.authorize(Request::new(order("o-1"))).await.unwrap();
    assert_eq!(retry.into_inner(), first, "the retry gets the first payment");
    assert_eq!(service.card_network().holds(), 1, "one hold, not two");
}

/// A request stream as tonic hands it to a handler: `requests` in gRPC's
/// framing (a flag byte, a 4-byte length, the message), all sent at once.
fn inbound(requests: &[AuthorizeRequest]) -> Streaming<AuthorizeRequest> {
    let mut body = Vec::new();
    for request in requests {
        let message = request.encode_to_vec();
        body.push(0); // not compressed
        body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&message);
    }
    let decoder =
        ProstCodec::<AuthorizationResult, AuthorizeRequest>::default().decoder();
    Streaming::new_request(decoder, Full::new(Bytes::from(body)), None, None)
}

// ANCHOR: stops_reading_test
#[tokio::test(start_paused = true)]
async fn a_caller_that_stops_reading_does_not_keep_the_stream_past_its_deadline() {
    let service = PaymentsService::default();
    let mut open = service.open_streams();
    let orders: Vec<_> = (1..=100).map(|n| order(&format!("o-{n}"))).collect();
    let mut request = Request::new(inbound(&orders));
    request.set_timeout(Duration::from_millis(200));
    let began = Instant::now();
    let answers = service.authorize_stream(request).await.unwrap();
    assert_eq!(*open.borrow_and_update(), 1, "a task feeds the stream");

    // The caller reads nothing: the task fills the channel and waits for room,
    // until the deadline ends the wait and the task with it.
    let ended =
        tokio::time::timeout(Duration::from_secs(60), open.wait_for(|n| *n == 0));
    ended.await.expect("the task outlived the deadline").unwrap();
    assert_eq!(began.elapsed(), Duration::from_millis(200), "at the deadline");
    // Sixteen orders authorized: fifteen answers fit, the sixteenth waited.
    assert_eq!(service.card_network().holds(), 16);

    // What the caller reads when it comes back: the answers that fit in the
    // channel (16 slots, one kept for the end), then DEADLINE_EXCEEDED.
    let mut answers = answers.into_inner().into_inner();
    for n in 1..=15 {
        let answer = answers.recv().await.unwrap().unwrap();
        assert_eq!(answer.order_id, format!("o-{n}"));
    }
    let end = answers.recv().await.unwrap().unwrap_err();
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
    assert!(answers.recv().await.is_none(), "nothing after the status");

    // The lost answer is in the ledger: a retry gets it, with no new hold.
    let retry = service.authorize(Request::new(order("o-16"))).await.unwrap();
    assert_eq!(retry.into_inner().order_id, "o-16");
    assert_eq!(service.card_network().holds(), 16, "no work after the end");
}
// ANCHOR_END: stops_reading_test
