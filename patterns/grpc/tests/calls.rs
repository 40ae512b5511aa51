//! The payments service over a real loopback connection: all four kinds of call, status codes,
//! deadlines and the correlation id.

use std::time::Duration;

use grpc::client::{self, Client};
use grpc::correlation::CORRELATION_ID;
use grpc::ledger::{DECLINED_CARD, RISKY_CUSTOMER};
use grpc::proto::v2::authorization_result::Outcome;
use grpc::proto::v2::{
    AuthorizeRequest, CaptureRequest, PaymentStatus, WatchPaymentRequest,
};
use grpc::server::{RunningPayments, spawn};
use grpc::service::ServiceConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};

/// Generous bound on any single step over loopback; hitting it means a hang, not slowness.
const STEP: Duration = Duration::from_secs(10);

fn order(order_id: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        order_id: order_id.into(),
        amount_cents: 2899,
        currency: "EUR".into(),
        card_token: "tok_visa".into(),
        customer_id: "c-42".into(),
    }
}

async fn start(config: ServiceConfig) -> (RunningPayments, Client) {
    let server = spawn(config).await.unwrap();
    let client = client::connect(server.addr, "test-corr-1").await.unwrap();
    (server, client)
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
async fn domain_errors_arrive_as_their_status_codes() {
    let (server, mut client) = start(ServiceConfig::default()).await;
    let code = |r: Result<_, tonic::Status>| {
        r.map(|_: tonic::Response<_>| ()).unwrap_err().code()
    };
    assert_eq!(
        code(
            client
                .authorize(AuthorizeRequest { amount_cents: 0, ..order("o-1") })
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            client
                .authorize(AuthorizeRequest {
                    card_token: DECLINED_CARD.into(),
                    ..order("o-1")
                })
                .await
        ),
        Code::FailedPrecondition
    );
    client.authorize(order("o-1")).await.unwrap();
    assert_eq!(code(client.authorize(order("o-1")).await), Code::AlreadyExists);
    let watch = client
        .watch_payment(WatchPaymentRequest { payment_id: "pay_nope".into() })
        .await;
    assert_eq!(watch.map(|_| ()).unwrap_err().code(), Code::NotFound);
    assert_eq!(server.ledger.len(), 1);
    server.shutdown().await.unwrap();
}

// ANCHOR: deadline_test
#[tokio::test]
async fn a_passed_deadline_is_deadline_exceeded_and_the_server_abandons_the_work() {
    // The card network takes 600 ms; the caller allows 200 ms.
    let latency = Duration::from_millis(600);
    let (server, mut client) = start(ServiceConfig {
        card_network_latency: latency,
        ..ServiceConfig::default()
    })
    .await;

    let err =
        client::authorize(&mut client, order("o-1"), Duration::from_millis(200))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");

    // Had the server kept working, it would authorize o-1 at 600 ms, and this second attempt
    // (done at about 800 ms) would be ALREADY_EXISTS. It is a fresh authorization instead.
    let payment = client::authorize(&mut client, order("o-1"), STEP)
        .await
        .expect("the retry authorizes");
    assert_eq!(payment.order_id, "o-1");
    assert_eq!(server.ledger.len(), 1, "the abandoned attempt left nothing behind");
    server.shutdown().await.unwrap();
}
// ANCHOR_END: deadline_test

#[tokio::test]
async fn server_streaming_follows_a_payment_until_it_settles() {
    let (server, mut client) = start(ServiceConfig {
        settlement_step: Duration::from_millis(1),
        ..ServiceConfig::default()
    })
    .await;
    let payment = client.authorize(order("o-1")).await.unwrap().into_inner();
    let mut events = client
        .watch_payment(WatchPaymentRequest {
            payment_id: payment.payment_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(STEP, events.message())
        .await
        .expect("stream stalled")
        .unwrap()
    {
        assert_eq!(event.payment_id, payment.payment_id);
        seen.push((event.sequence, event.status()));
    }
    assert_eq!(
        seen,
        [
            (1, PaymentStatus::Authorized),
            (2, PaymentStatus::Captured),
            (3, PaymentStatus::Settled)
        ]
    );
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
        .map(|r| (r.payment_id.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert_eq!(refused[0], ("pay_unknown", "no payment pay_unknown"));
    assert!(refused[1].1.contains("exceeds the authorized"), "{refused:?}");
    assert!(
        refused[2].1.contains("not authorized"),
        "captured already: {refused:?}"
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

    // A conversation: each answer is read before the next request is sent, which only works if
    // the server answers per message rather than after the client has finished.
    let conversation = [
        (order("o-1"), "payment"),
        (
            AuthorizeRequest { card_token: DECLINED_CARD.into(), ..order("o-2") },
            "FailedPrecondition",
        ),
        (order("o-1"), "AlreadyExists"),
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
    assert!(
        tokio::time::timeout(STEP, answers.message())
            .await
            .expect("stream end")
            .unwrap()
            .is_none()
    );
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

#[tokio::test]
async fn the_new_customer_field_is_used_when_sent() {
    let (server, mut client) = start(ServiceConfig::default()).await;
    let err = client
        .authorize(AuthorizeRequest {
            customer_id: RISKY_CUSTOMER.into(),
            ..order("o-9")
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::FailedPrecondition, "declined: risk check failed")
    );
    server.shutdown().await.unwrap();
}
