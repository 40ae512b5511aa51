//! The service's handlers called in process, on paused tokio time: two watchers of one payment,
//! and two authorizations of one order at the same moment. No network, so time only moves when
//! every task waits, and each step of these races happens in a known order.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::sync::Arc;
use std::time::Duration;

use grpc::ledger::Ledger;
use grpc::proto::v2::payments_server::Payments;
use grpc::proto::v2::{
    CaptureRequest, PaymentEvent, PaymentStatus, WatchPaymentRequest,
};
use grpc::service::{PaymentsService, ServiceConfig};
use tokio::sync::mpsc;
use tonic::{Code, Request, Status};

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
