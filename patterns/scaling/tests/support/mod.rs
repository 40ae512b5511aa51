//! What the scaling tests and the benchmark share: authorizations for orders, which every
//! replica accepts, sent many at a time.

use std::time::{Duration, Instant};

use grpc::proto::v2::AuthorizeRequest;
use grpc::proto::v2::payments_client::PaymentsClient;
use tokio::task::JoinSet;
use tonic::body::Body;
use tonic::client::GrpcService;
use tonic::codegen::{Bytes, StdError};

/// 28.99 EUR for `order_id` on a card that authorizes.
pub fn order(order_id: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        order_id: order_id.into(),
        amount_cents: 2899,
        currency: "EUR".into(),
        card_token: "tok_visa".into(),
        customer_id: "c-42".into(),
    }
}

/// What a payments client can run over: a channel, a balancer, round robin.
pub trait Transport:
    GrpcService<
        Body,
        Future: Send,
        Error: Into<StdError>,
        ResponseBody: tonic::codegen::Body<
            Data = Bytes,
            Error: Into<StdError> + Send,
        > + Send
                          + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T> Transport for T where
    T: GrpcService<
            Body,
            Future: Send,
            Error: Into<StdError>,
            ResponseBody: tonic::codegen::Body<
                Data = Bytes,
                Error: Into<StdError> + Send,
            > + Send
                              + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// `calls` authorizations of distinct orders through `client`, `in_flight` at a time; every
/// one must succeed. Returns each call's latency, in no particular order.
pub async fn authorize_many<T: Transport>(
    client: PaymentsClient<T>,
    tag: &str,
    calls: usize,
    in_flight: usize,
) -> Vec<Duration> {
    let mut workers = JoinSet::new();
    for worker in 0..in_flight {
        let mut client = client.clone();
        let tag = tag.to_owned();
        workers.spawn(async move {
            let mut took = Vec::new();
            for call in (worker..calls).step_by(in_flight) {
                let began = Instant::now();
                let answer = client.authorize(order(&format!("{tag}-{call}"))).await;
                if let Err(status) = answer {
                    panic!("call {call} failed: {status}");
                }
                took.push(began.elapsed());
            }
            took
        });
    }
    let mut took = Vec::with_capacity(calls);
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(worker) => took.extend(worker),
            Err(error) => panic!("a caller task failed: {error}"),
        }
    }
    took
}
