//! Inputs nobody thought of, generated: the payments service's decoders get arbitrary bytes, and
//! its `Authorize` handler arbitrary field values. Whatever arrives, nothing panics, and every
//! refusal is a gRPC status a client can act on, with a message.
//!
//! Bounded for CI: a fixed number of cases from a fixed seed, so a run is repeatable; a failing
//! case is printed shrunk to its simplest form.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use grpc::card::DECLINED_CARD;
use grpc::proto::v1;
use grpc::proto::v2::payments_server::Payments;
use grpc::proto::v2::{AuthorizeRequest, CaptureRequest, WatchPaymentRequest};
use grpc::service::PaymentsService;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use prost::Message;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use tonic::{Code, Request};

fn config(cases: u32) -> Config {
    Config { cases, rng_seed: RngSeed::Fixed(17), ..Config::default() }
}

/// Text a client might send in a string field: mostly one of the values the service expects (so
/// that many requests get as far as a payment), else empty, other scripts, control characters,
/// or long.
fn text(expected: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(expected).prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => "[a-z0-9_-]{1,16}",
        1 => "\\PC{1,40}",
        1 => "[\\x00-\\x1f]{1,8}",
        1 => "[a-z]{1000,2000}",
    ]
}

fn authorize_request() -> impl Strategy<Value = AuthorizeRequest> {
    let amounts = prop_oneof![
        6 => 1..10_000u64,
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ];
    (
        text(&["o-1", "o-2", "o-3"]),
        amounts,
        text(&["EUR", "EUR", "eur"]),
        text(&["tok_visa", "tok_visa", DECLINED_CARD]),
        text(&["c-42", "c-7", "c-risky"]),
    )
        .prop_map(
            |(order_id, amount_cents, currency, card_token, customer_id)| {
                AuthorizeRequest {
                    order_id,
                    amount_cents,
                    currency,
                    card_token,
                    customer_id,
                }
            },
        )
}

/// The codes `Authorize` may refuse with, each with a meaning the chapter gives it.
const REFUSALS: [Code; 4] = [
    Code::InvalidArgument,
    Code::FailedPrecondition,
    Code::AlreadyExists,
    Code::Aborted,
];

proptest! {
    #![proptest_config(config(3_000))]

    #[test]
    fn arbitrary_bytes_are_decoded_or_refused_and_what_decodes_round_trips(
        bytes in proptest::collection::vec(any::<u8>(), 0..256)
    ) {
        // Each decoder returns a message or an error (a panic fails the test), and what
        // decodes encodes to bytes that decode to the same message.
        if let Ok(message) = AuthorizeRequest::decode(bytes.as_slice()) {
            let again = AuthorizeRequest::decode(message.encode_to_vec().as_slice());
            prop_assert_eq!(again, Ok(message));
        }
        if let Ok(message) = CaptureRequest::decode(bytes.as_slice()) {
            let again = CaptureRequest::decode(message.encode_to_vec().as_slice());
            prop_assert_eq!(again, Ok(message));
        }
        if let Ok(message) = WatchPaymentRequest::decode(bytes.as_slice()) {
            let again = WatchPaymentRequest::decode(message.encode_to_vec().as_slice());
            prop_assert_eq!(again, Ok(message));
        }
        if let Ok(message) = v1::AuthorizeRequest::decode(bytes.as_slice()) {
            let again = v1::AuthorizeRequest::decode(message.encode_to_vec().as_slice());
            prop_assert_eq!(again, Ok(message));
        }
    }
}

/// Pairs of requests, each sent, then the first again: whatever they hold, each answer is a
/// payment for what was asked, or a refusal whose code says what to do; and the same request
/// gets the same answer. Counts both, so the run shows it tried both paths.
#[test]
fn any_authorization_gets_a_payment_or_a_status_to_act_on() {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let (paid, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = TestRunner::new(config(1_000));
    let strategy = (authorize_request(), authorize_request());
    let outcome = runner.run(&strategy, |(first, second)| {
        runtime.block_on(async {
            let service = PaymentsService::default();
            for request in [&first, &second, &first] {
                match service.authorize(Request::new(request.clone())).await {
                    Ok(payment) => {
                        paid.fetch_add(1, Relaxed);
                        let payment = payment.into_inner();
                        prop_assert_eq!(&payment.order_id, &request.order_id);
                        prop_assert_eq!(payment.amount_cents, request.amount_cents);
                        prop_assert!(!payment.payment_id.is_empty());
                    }
                    Err(status) => {
                        refused.fetch_add(1, Relaxed);
                        prop_assert!(
                            REFUSALS.contains(&status.code()),
                            "{:?} for {:?}",
                            status,
                            request
                        );
                        prop_assert!(!status.message().is_empty());
                    }
                }
            }
            // The same request again is the same answer: the payment, or the same refusal.
            let again = service.authorize(Request::new(first.clone())).await;
            let once_more = service.authorize(Request::new(first.clone())).await;
            match (again, once_more) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(
                        a.into_inner().payment_id,
                        b.into_inner().payment_id
                    )
                }
                (Err(a), Err(b)) => prop_assert_eq!(a.code(), b.code()),
                (a, b) => prop_assert!(false, "{:?} then {:?}", a, b),
            }
            Ok(())
        })
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    let (paid, refused) = (paid.into_inner(), refused.into_inner());
    println!("3,000 authorizations: {paid} paid, {refused} refused");
    assert!(paid >= 300 && refused >= 300, "{paid} paid, {refused} refused");
}

/// Batches of captures of payments of any amount, through a real server: every batch gets a
/// summary whose total is what it says it captured, and every capture is counted once, as
/// captured or refused. Before the batch's total was checked, this found a batch that overflowed
/// it (a capture of `u64::MAX` cents, then one of a cent): the server's task panicked and the call
/// ended `CANCELLED`.
#[test]
fn any_batch_of_captures_gets_a_summary_that_adds_up() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, client) = runtime.block_on(async {
        let server = grpc::server::spawn(Default::default()).await.unwrap();
        let client = grpc::client::connect(server.addr, "fuzz").await.unwrap();
        (server, client)
    });
    let amounts =
        prop_oneof![3 => 1..10_000u64, 1 => Just(u64::MAX), 1 => any::<u64>()];
    let batch = proptest::collection::vec((amounts, any::<bool>()), 1..5);
    let mut runner = TestRunner::new(config(200));
    let order = std::sync::atomic::AtomicU64::new(0);
    let outcome = runner.run(&batch, |batch| {
        runtime.block_on(async {
            let mut client = client.clone();
            let mut captures = vec![];
            for (amount, whole) in &batch {
                let id = format!("o-{}", order.fetch_add(1, Relaxed));
                let request = AuthorizeRequest {
                    order_id: id,
                    amount_cents: (*amount).max(1),
                    currency: "EUR".into(),
                    card_token: "tok_visa".into(),
                    customer_id: "c-42".into(),
                };
                let payment = client.authorize(request).await.unwrap().into_inner();
                let amount_cents = if *whole { payment.amount_cents } else { 1 };
                captures.push(CaptureRequest {
                    payment_id: payment.payment_id,
                    amount_cents,
                });
            }
            let sent = captures.clone();
            let summary = client.capture_batch(tokio_stream::iter(captures)).await;
            let summary = match summary {
                Ok(summary) => summary.into_inner(),
                Err(status) => {
                    return Err(TestCaseError::fail(format!(
                        "{status:?} for {sent:?}"
                    )));
                }
            };
            let refused: Vec<&str> =
                summary.rejections.iter().map(|r| r.payment_id.as_str()).collect();
            let captured: Vec<&CaptureRequest> = sent
                .iter()
                .filter(|c| !refused.contains(&c.payment_id.as_str()))
                .collect();
            prop_assert_eq!(summary.captured as usize, captured.len());
            prop_assert_eq!(captured.len() + refused.len(), sent.len());
            let total: u128 =
                captured.iter().map(|c| u128::from(c.amount_cents)).sum();
            prop_assert_eq!(u128::from(summary.captured_cents), total);
            Ok(())
        })
    });
    runtime.block_on(async { server.shutdown().await.unwrap() });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
