//! The checkout pays for orders through the payments service over gRPC, both in this process.
//!
//! Run it:   `cargo run --example grpc_payments`
//! Break it: `cargo run --example grpc_payments -- --slow`     the card network needs 800 ms, the
//!                                                             checkout allows 300: refused at once
//!           `cargo run --example grpc_payments -- --invalid`  bad and repeated requests, each
//!                                                             answered with its status code
//!
//! It walks through the four kinds of gRPC call (unary, server streaming, client streaming,
//! bidirectional) and an old v1 client calling today's service. The server binds 127.0.0.1:0. The
//! example checks its own outcome (including that every hold on a card belongs to a payment) and
//! exits non-zero if the pattern failed.

use std::time::Duration;

use anyhow::{bail, ensure};
use grpc::card::DECLINED_CARD;
use grpc::client::{self, Client};
use grpc::ledger::code_name;
use grpc::proto::v1;
use grpc::proto::v2::authorization_result::Outcome;
use grpc::proto::v2::{
    AuthorizeRequest, CaptureRequest, PaymentEvent, PaymentStatus,
    WatchPaymentRequest,
};
use grpc::server::RunningPayments;
use grpc::service::ServiceConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status};
use tracing::{Instrument, info, info_span, warn};

const CORRELATION_ID: &str = "checkout-7f3a";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags = infra::example::Flags::parse(&["--slow", "--invalid"])
        .map_err(anyhow::Error::msg)?;

    let card_network_latency = if flags.has("--slow") {
        Duration::from_millis(800)
    } else {
        Duration::from_millis(20)
    };
    let config = ServiceConfig {
        card_network_latency,
        settlement_delay: Duration::from_millis(150),
    };
    let server = grpc::server::spawn(config).await?;
    let mut client = client::connect(server.addr, CORRELATION_ID).await?;
    let span = info_span!("checkout", correlation_id = %CORRELATION_ID);
    checkout(&mut client, &server, &flags).instrument(span).await?;

    let (holds, payments) = (server.cards.holds(), server.ledger.len() as u64);
    ensure!(holds == payments, "{holds} holds on cards for {payments} payments");
    info!(
        "every hold on a card belongs to a payment: {holds} holds, {payments} payments"
    );
    server.shutdown().await.map_err(|e| anyhow::anyhow!(e))?;
    info!("done");
    Ok(())
}

async fn checkout(
    client: &mut Client,
    server: &RunningPayments,
    flags: &infra::example::Flags,
) -> anyhow::Result<()> {
    if flags.has("--slow") {
        miss_the_deadline(client, server).await?;
    }
    if flags.has("--invalid") {
        send_bad_requests(client).await?;
    }
    let payment_id = unary(client).await?;
    watch_while_capturing(client, &payment_id).await?;
    bidirectional(client).await?;
    old_client(server.addr).await
}

fn order(order_id: &str, amount_cents: u64) -> AuthorizeRequest {
    AuthorizeRequest {
        order_id: order_id.into(),
        amount_cents,
        currency: "EUR".into(),
        card_token: "tok_visa".into(),
        customer_id: "c-42".into(),
    }
}

fn log_event(event: &PaymentEvent) {
    info!("  event {}: {}", event.sequence, event.status().as_str_name());
}

async fn unary(client: &mut Client) -> anyhow::Result<String> {
    info!("unary: Authorize o-1001 with a 2 s deadline");
    let payment =
        client::authorize(client, order("o-1001", 2899), Duration::from_secs(2))
            .await?;
    info!(payment_id = %payment.payment_id, code = %payment.authorization_code, "authorized {} cents", payment.amount_cents);
    Ok(payment.payment_id)
}

async fn watch_while_capturing(
    client: &mut Client,
    payment_id: &str,
) -> anyhow::Result<()> {
    let other =
        client::authorize(client, order("o-1002", 800), Duration::from_secs(2))
            .await?;
    info!("server streaming: WatchPayment {payment_id}; watching changes nothing");
    let mut events = client
        .watch_payment(WatchPaymentRequest { payment_id: payment_id.into() })
        .await?
        .into_inner();
    let Some(first) = events.message().await? else {
        bail!("the watch ended before its first event")
    };
    log_event(&first);

    let batch = vec![
        CaptureRequest { payment_id: payment_id.into(), amount_cents: 2899 },
        CaptureRequest { payment_id: other.payment_id.clone(), amount_cents: 5000 },
        CaptureRequest {
            payment_id: "pay_from_another_shop".into(),
            amount_cents: 100,
        },
    ];
    info!("client streaming: CaptureBatch of {} captures", batch.len());
    let summary =
        client.capture_batch(tokio_stream::iter(batch)).await?.into_inner();
    info!(
        "  captured {} ({} cents), refused {}",
        summary.captured,
        summary.captured_cents,
        summary.rejections.len()
    );
    for rejection in &summary.rejections {
        let (id, code) = (&rejection.payment_id, &rejection.code);
        warn!("  refused {id}: {code}: {}", rejection.reason);
    }
    ensure!(
        summary.captured == 1 && summary.rejections.len() == 2,
        "one capture should pass and two be refused"
    );

    let mut last = first.status();
    while let Some(event) = events.message().await? {
        log_event(&event);
        last = event.status();
    }
    ensure!(
        last == PaymentStatus::Settled,
        "the watch should end with the payment settled"
    );
    Ok(())
}

// ANCHOR: bidirectional
async fn bidirectional(client: &mut Client) -> anyhow::Result<()> {
    info!(
        "bidirectional streaming: AuthorizeStream, each order answered when decided"
    );
    let (tx, rx) = mpsc::channel(8);
    let mut answers =
        client.authorize_stream(ReceiverStream::new(rx)).await?.into_inner();
    let orders = [
        order("o-2001", 1200),
        AuthorizeRequest {
            card_token: DECLINED_CARD.into(),
            ..order("o-2002", 900)
        },
        order("o-2003", 450),
    ];
    let mut declined = 0;
    for request in orders {
        info!("  -> {}", request.order_id);
        tx.send(request).await?;
        let Some(answer) = answers.message().await? else {
            bail!("the stream ended early")
        };
        match answer.outcome {
            Some(Outcome::Payment(p)) => {
                info!("  <- {}: authorized as {}", answer.order_id, p.payment_id)
            }
            Some(Outcome::Decline(d)) => {
                declined += 1;
                let (order, code, reason) = (answer.order_id, d.code, d.reason);
                warn!("  <- {order}: declined ({code}: {reason})");
            }
            None => bail!("an answer without an outcome"),
        }
    }
    drop(tx);
    ensure!(
        answers.message().await?.is_none() && declined == 1,
        "one decline, then a clean end of stream"
    );
    Ok(())
}
// ANCHOR_END: bidirectional

async fn old_client(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    info!(
        "schema evolution: a client built from the v1 schema calls today's service"
    );
    let mut old =
        v1::payments_client::PaymentsClient::connect(format!("http://{addr}"))
            .await?;
    let request = v1::AuthorizeRequest {
        order_id: "o-3001".into(),
        amount_cents: 700,
        currency: "EUR".into(),
        card_token: "tok_visa".into(),
    };
    let payment = old.authorize(request).await?.into_inner();
    info!(
        "  v1 client got payment {} (it cannot see the new authorization_code field)",
        payment.payment_id
    );
    Ok(())
}

/// Expects `result` to be refused with `expected`, and logs the refusal by its gRPC name.
fn expect_refusal<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, Status>,
    expected: Code,
) -> anyhow::Result<()> {
    match result {
        Err(status) if status.code() == expected => {
            let code = code_name(status.code());
            warn!("{what}: {code}: {}", status.message());
            Ok(())
        }
        other => bail!("{what}: expected {}, got {other:?}", code_name(expected)),
    }
}

// ANCHOR: miss_the_deadline
async fn miss_the_deadline(
    client: &mut Client,
    server: &RunningPayments,
) -> anyhow::Result<()> {
    let deadline = Duration::from_millis(300);
    info!("Authorize o-0999 with a 300 ms deadline; the card network needs 800 ms");
    let answer = client::authorize(client, order("o-0999", 2500), deadline).await;
    expect_refusal("o-0999", answer, Code::DeadlineExceeded)?;
    ensure!(server.cards.holds() == 0, "a hold was placed for nobody");
    info!("no hold was placed on the customer's card");

    info!("retry o-0999 with a 3 s deadline");
    let retry = order("o-0999", 2500);
    let payment = client::authorize(client, retry, Duration::from_secs(3)).await?;
    info!(payment_id = %payment.payment_id, "authorized on the retry");

    info!("WatchPayment with a 500 ms deadline; nobody captures the payment");
    let mut request =
        Request::new(WatchPaymentRequest { payment_id: payment.payment_id });
    request.set_timeout(Duration::from_millis(500));
    let mut events = client.watch_payment(request).await?.into_inner();
    while let Some(event) = events.message().await.transpose() {
        match event {
            Ok(event) => log_event(&event),
            Err(status) => {
                return expect_refusal(
                    "  watch",
                    Err::<(), _>(status),
                    Code::DeadlineExceeded,
                );
            }
        }
    }
    bail!("the watch ended without reaching its deadline")
}
// ANCHOR_END: miss_the_deadline

async fn send_bad_requests(client: &mut Client) -> anyhow::Result<()> {
    let two_s = Duration::from_secs(2);
    let invalid = [
        ("amount of zero", order("o-0901", 0)),
        (
            "wrong currency",
            AuthorizeRequest { currency: "USD".into(), ..order("o-0902", 100) },
        ),
        (
            "no card token",
            AuthorizeRequest { card_token: String::new(), ..order("o-0903", 100) },
        ),
    ];
    for (what, request) in invalid {
        let answer = client::authorize(client, request, two_s).await;
        expect_refusal(what, answer, Code::InvalidArgument)?;
    }
    let declined = AuthorizeRequest {
        card_token: DECLINED_CARD.into(),
        ..order("o-0904", 100)
    };
    let answer = client::authorize(client, declined, two_s).await;
    expect_refusal("declined card", answer, Code::FailedPrecondition)?;
    let watch = client.watch_payment(WatchPaymentRequest::default()).await;
    expect_refusal("watch without a payment id", watch, Code::InvalidArgument)?;

    let first = client::authorize(client, order("o-0905", 100), two_s).await?;
    let again = client::authorize(client, order("o-0905", 100), two_s).await?;
    ensure!(again == first, "the same request should return the first payment");
    info!("same request twice: the same payment {}, one hold", again.payment_id);
    let other = client::authorize(client, order("o-0905", 250), two_s).await;
    expect_refusal("same order, other amount", other, Code::AlreadyExists)?;
    info!("every bad request got its status code; the service keeps serving");
    Ok(())
}
