//! The payments service over a real loopback connection: all four kinds of call, validation,
//! status codes, idempotent authorization and the correlation id. Deadlines are in
//! `deadlines.rs`; watchers and concurrent authorizations, on paused time, in `in_process.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::time::Duration;

use grpc::card::DECLINED_CARD;
use grpc::client::{self, Client};
use grpc::correlation::CORRELATION_ID;
use grpc::ledger::RISKY_CUSTOMER;
use grpc::proto::v2::authorization_result::Outcome;
use grpc::proto::v2::{
    AuthorizeRequest, CaptureRequest, PaymentStatus, WatchPaymentRequest,
};
use grpc::server::{RunningPayments, spawn};
use grpc::service::ServiceConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status};

mod support;
use support::order;

/// Generous bound on any single step over loopback; hitting it means a hang, not slowness.
const STEP: Duration = Duration::from_secs(10);

async fn start(config: ServiceConfig) -> (RunningPayments, Client) {
    let server = spawn(config).await.unwrap();
    let client = client::connect(server.addr, "test-corr-1").await.unwrap();
    (server, client)
}

fn refusal<T>(result: Result<T, Status>) -> (Code, String) {
    let status = result.err().expect("a refusal");
    (status.code(), status.message().to_owned())
}

#[tokio::test]
async fn unary_authorize_echoes_the_correlation_id() {
    let (server, mut client) = start(ServiceConfig::default()).await;
    let response = client.authorize(order("o-1")).await.unwrap();
    assert_eq!(response.metadata().get(CORRELATION_ID).unwrap(), "test-corr-1");
    let payment = response.into_inner();
    assert_eq!(
        (payment.order_id.as_str(), payment.status(), payment.amount_cents),
        ("o-1", PaymentStatus::Authorized, 2899)
    );
    assert_eq!(payment.authorization_code.len(), 6);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_call_without_a_correlation_id_gets_a_fresh_one() {
    let server = spawn(ServiceConfig::default()).await.unwrap();
    let mut bare = grpc::proto::v2::payments_client::PaymentsClient::connect(
        format!("http://{}", server.addr),
    )
    .await
    .unwrap();
    let response = bare.authorize(order("o-1")).await.unwrap();
    let id = response.metadata().get(CORRELATION_ID).unwrap().to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "server-made id: {id}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_required_field_of_every_request_is_invalid_argument_naming_it() {
    let (server, mut client) = start(ServiceConfig::default()).await;
    let authorize_cases = [
        ("order_id", AuthorizeRequest { order_id: "".into(), ..order("o-1") }),
        ("amount_cents", AuthorizeRequest { amount_cents: 0, ..order("o-1") }),
        ("currency", AuthorizeRequest { currency: "".into(), ..order("o-1") }),
        ("currency", AuthorizeRequest { currency: "USD".into(), ..order("o-1") }),
        ("card_token", AuthorizeRequest { card_token: "".into(), ..order("o-1") }),
    ];
    for (field, request) in authorize_cases {
        let (code, message) = refusal(client.authorize(request).await);
        assert_eq!(code, Code::InvalidArgument, "{field}: {message}");
        assert!(message.starts_with(field), "{field}: {message}");
    }

    let watch = client.watch_payment(WatchPaymentRequest::default()).await;
    assert_eq!(
        refusal(watch),
        (Code::InvalidArgument, "payment_id is required".into())
    );

    let captures = vec![
        CaptureRequest { payment_id: "".into(), amount_cents: 100 },
        CaptureRequest { payment_id: "pay_1".into(), amount_cents: 0 },
    ];
    let summary = client
        .capture_batch(tokio_stream::iter(captures))
        .await
        .unwrap()
        .into_inner();
    let refused: Vec<_> = summary
        .rejections
        .iter()
        .map(|r| (r.code.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        refused,
        [
            ("INVALID_ARGUMENT", "payment_id is required"),
            ("INVALID_ARGUMENT", "amount_cents must be greater than 0")
        ]
    );

    let bad = AuthorizeRequest { card_token: "".into(), ..order("o-2") };
    let answers = client.authorize_stream(tokio_stream::iter([bad])).await;
    let answer = answers.unwrap().into_inner().message().await.unwrap().unwrap();
    let Some(Outcome::Decline(decline)) = answer.outcome else {
        panic!("expected a decline, got {answer:?}")
    };
    assert_eq!(
        (decline.code.as_str(), decline.reason.as_str()),
        ("INVALID_ARGUMENT", "card_token is required")
    );
    assert!(server.ledger.is_empty(), "nothing invalid was stored");
    assert_eq!(server.cards.holds(), 0, "nor sent to the card network");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn domain_errors_arrive_as_their_status_codes() {
    let (server, mut client) = start(ServiceConfig::default()).await;
    let declined =
        AuthorizeRequest { card_token: DECLINED_CARD.into(), ..order("o-1") };
    assert_eq!(
        refusal(client.authorize(declined).await),
        (Code::FailedPrecondition, "declined: insufficient funds".into())
    );
    let risky =
        AuthorizeRequest { customer_id: RISKY_CUSTOMER.into(), ..order("o-9") };
    assert_eq!(
        refusal(client.authorize(risky).await),
        (Code::FailedPrecondition, "declined: risk check failed".into())
    );
    let watch = client
        .watch_payment(WatchPaymentRequest { payment_id: "pay_nope".into() })
        .await;
    assert_eq!(refusal(watch), (Code::NotFound, "no payment pay_nope".into()));
    assert!(server.ledger.is_empty());
    server.shutdown().await.unwrap();
}

// ANCHOR: idempotency_test
#[tokio::test]
async fn the_same_authorize_returns_the_first_payment_and_other_terms_are_refused() {
    let (server, mut client) = start(ServiceConfig::default()).await;
    let first = client.authorize(order("o-1")).await.unwrap().into_inner();
    // The answer was lost, say; the checkout sends the same request again.
    let again = client.authorize(order("o-1")).await.unwrap().into_inner();
    assert_eq!(again, first, "the same payment, same approval code");
    assert_eq!(server.cards.holds(), 1, "and one hold on the card");

    // The same order with another amount is a different payment: refused.
    let more = AuthorizeRequest { amount_cents: 5000, ..order("o-1") };
    let (code, message) = refusal(client.authorize(more).await);
    assert_eq!(code, Code::AlreadyExists);
    assert!(message.contains(&first.payment_id), "{message}");
    assert_eq!((server.ledger.len(), server.cards.holds()), (1, 1));
    server.shutdown().await.unwrap();
}
// ANCHOR_END: idempotency_test

#[tokio::test]
async fn server_streaming_follows_a_payment_until_it_settles() {
    let (server, mut client) = start(ServiceConfig {
        settlement_delay: Duration::from_millis(1),
        ..ServiceConfig::default()
    })
    .await;
    let payment = client.authorize(order("o-1")).await.unwrap().into_inner();
    let payment_id = payment.payment_id.clone();
    let mut events = client
        .watch_payment(WatchPaymentRequest { payment_id: payment_id.clone() })
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    assert_eq!((first.sequence, first.status()), (1, PaymentStatus::Authorized));

    let capture =
        CaptureRequest { payment_id: payment_id.clone(), amount_cents: 2899 };
    let summary = client.capture_batch(tokio_stream::iter([capture])).await.unwrap();
    assert_eq!(summary.into_inner().captured, 1);

    let mut seen = vec![(first.sequence, first.status())];
    while let Some(event) = tokio::time::timeout(STEP, events.message())
        .await
        .expect("stream stalled")
        .unwrap()
    {
        assert_eq!(event.payment_id, payment_id);
        seen.push((event.sequence, event.status()));
    }
    // A watcher may skip a state it was too slow to see, never reorder one.
    assert!(seen.is_sorted(), "{seen:?}");
    assert_eq!(seen.last(), Some(&(3, PaymentStatus::Settled)));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn client_streaming_captures_a_batch_and_reports_each_refusal() {
    let (server, mut client) = start(ServiceConfig::default()).await;
    let a = client.authorize(order("o-1")).await.unwrap().into_inner();
    let b = client.authorize(order("o-2")).await.unwrap().into_inner();
    let batch = vec![
        CaptureRequest { payment_id: a.payment_id.clone(), amount_cents: 2899 },
        CaptureRequest { payment_id: "pay_unknown".into(), amount_cents: 100 },
        CaptureRequest { payment_id: b.payment_id.clone(), amount_cents: 99_999 },
        CaptureRequest { payment_id: a.payment_id.clone(), amount_cents: 1 },
    ];
    let summary =
        client.capture_batch(tokio_stream::iter(batch)).await.unwrap().into_inner();
    assert_eq!((summary.captured, summary.captured_cents), (1, 2899));
    let refused: Vec<(&str, &str)> = summary
        .rejections
        .iter()
        .map(|r| (r.payment_id.as_str(), r.code.as_str()))
        .collect();
    assert_eq!(
        refused,
        [
            ("pay_unknown", "NOT_FOUND"),
            (b.payment_id.as_str(), "OUT_OF_RANGE"),
            (a.payment_id.as_str(), "FAILED_PRECONDITION")
        ]
    );
    assert_eq!(
        summary.rejections[2].reason,
        format!(
            "payment {} is PAYMENT_STATUS_CAPTURED, not authorized",
            a.payment_id
        )
    );
    server.shutdown().await.unwrap();
}

// ANCHOR: bidi_test
#[tokio::test]
async fn bidirectional_streaming_answers_each_request_as_it_arrives() {
    let (server, mut client) = start(ServiceConfig::default()).await;
    let (tx, rx) = mpsc::channel(4);
    let mut answers = client
        .authorize_stream(Request::new(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();

    // A conversation: each answer is read before the next request is sent,
    // which only works if the server answers each message as it comes.
    let declined =
        AuthorizeRequest { card_token: DECLINED_CARD.into(), ..order("o-2") };
    let more = AuthorizeRequest { amount_cents: 1, ..order("o-1") };
    let conversation = [
        (order("o-1"), "payment"),
        (declined, "FAILED_PRECONDITION"),
        (order("o-1"), "payment"), // the same request: its payment again
        (more, "ALREADY_EXISTS"),
        (order("o-3"), "payment"),
    ];
    for (request, expected) in conversation {
        let order_id = request.order_id.clone();
        tx.send(request).await.unwrap();
        let answer = tokio::time::timeout(STEP, answers.message())
            .await
            .expect("no answer")
            .unwrap()
            .expect("stream open");
        assert_eq!(answer.order_id, order_id);
        let got = match answer.outcome.expect("an outcome") {
            Outcome::Payment(_) => "payment".to_owned(),
            Outcome::Decline(decline) => decline.code,
        };
        assert_eq!(got, expected, "answer for {order_id}");
    }
    drop(tx); // the client is done sending; the server ends the stream
    let end = tokio::time::timeout(STEP, answers.message()).await;
    assert!(end.expect("stream end").unwrap().is_none());
    assert_eq!(server.ledger.len(), 2);
    server.shutdown().await.unwrap();
}
// ANCHOR_END: bidi_test

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = client::connect(([127, 0, 0, 1], port).into(), "c").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

/// What `tests/fuzz.rs` found, kept as a case of its own: two payments of `u64::MAX` cents
/// captured in one batch would carry the summary's total past what a `u64` holds. The capture
/// that would overflow it is refused before it is made, and can go in another batch.
#[tokio::test]
async fn a_batch_refuses_the_capture_that_would_overflow_its_total() {
    let (server, mut client) = start(ServiceConfig::default()).await;
    let huge = |id: &str| {
        let mut request = order(id);
        request.amount_cents = u64::MAX;
        request
    };
    let a = client.authorize(huge("o-big-1")).await.unwrap().into_inner();
    let b = client.authorize(huge("o-big-2")).await.unwrap().into_inner();
    let batch = [&a, &b].map(|p| CaptureRequest {
        payment_id: p.payment_id.clone(),
        amount_cents: u64::MAX,
    });
    let summary =
        client.capture_batch(tokio_stream::iter(batch.clone())).await.unwrap();
    let summary = summary.into_inner();
    assert_eq!((summary.captured, summary.captured_cents), (1, u64::MAX));
    let refused: Vec<(&str, &str)> = summary
        .rejections
        .iter()
        .map(|r| (r.payment_id.as_str(), r.code.as_str()))
        .collect();
    assert_eq!(refused, [(b.payment_id.as_str(), "OUT_OF_RANGE")]);
    // Nothing was captured of b: alone in a batch, it goes through.
    let alone = tokio_stream::iter([batch[1].clone()]);
    let summary = client.capture_batch(alone).await.unwrap().into_inner();
    assert_eq!((summary.captured, summary.captured_cents), (1, u64::MAX));
    server.shutdown().await.unwrap();
}
