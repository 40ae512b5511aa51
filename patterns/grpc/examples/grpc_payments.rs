//! The checkout pays for orders through the payments service over gRPC, both in this process.
//!
//! Run it:   `cargo run --example grpc_payments`
//! Break it: `cargo run --example grpc_payments -- --slow`     the card network is slow: the call's
//!                                                             deadline passes, the service gives up too
//!           `cargo run --example grpc_payments -- --invalid`  bad requests: each gets its status code
//!
//! It walks through the four kinds of gRPC call (unary, server streaming, client streaming,
//! bidirectional) and an old v1 client calling today's service. The server binds 127.0.0.1:0. The
//! example checks its own outcome and exits non-zero if the pattern failed.

use std::time::Duration;

use anyhow::{bail, ensure};
use grpc::client::{self, Client};
use grpc::ledger::DECLINED_CARD;
use grpc::proto::v1;
use grpc::proto::v2::authorization_result::Outcome;
use grpc::proto::v2::{AuthorizeRequest, CaptureRequest, WatchPaymentRequest};
use grpc::service::ServiceConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tracing::{info, info_span, warn};

const CORRELATION_ID: &str = "checkout-7f3a";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags = infra::example::Flags::parse(&["--slow", "--invalid"])
        .map_err(anyhow::Error::msg)?;
    let (slow, invalid) = (flags.has("--slow"), flags.has("--invalid"));

    let card_network_latency =
        if slow { Duration::from_millis(800) } else { Duration::from_millis(20) };
    let config = ServiceConfig {
        card_network_latency,
        settlement_step: Duration::from_millis(150),
    };
    let server = grpc::server::spawn(config).await?;
    let mut client = client::connect(server.addr, CORRELATION_ID).await?;
    let span = info_span!("checkout", correlation_id = %CORRELATION_ID);
    let _entered = span.enter();

    if slow {
        miss_the_deadline(&mut client).await?;
    }
    if invalid {
        send_bad_requests(&mut client).await?;
    }
    let payment_id = unary(&mut client).await?;
    server_streaming(&mut client, &payment_id).await?;
    client_streaming(&mut client).await?;
    bidirectional(&mut client).await?;
    old_client(server.addr).await?;

    drop(_entered);
    server.shutdown().await.map_err(|e| anyhow::anyhow!(e))?;
    info!("done");
    Ok(())
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

async fn unary(client: &mut Client) -> anyhow::Result<String> {
    info!("unary: Authorize o-1001 with a 2 s deadline");
    let payment =
        client::authorize(client, order("o-1001", 2899), Duration::from_secs(2))
            .await?;
    info!(payment_id = %payment.payment_id, code = %payment.authorization_code, "authorized {} cents", payment.amount_cents);
    Ok(payment.payment_id)
}

async fn server_streaming(
    client: &mut Client,
    payment_id: &str,
) -> anyhow::Result<()> {
    info!("server streaming: WatchPayment {payment_id}");
    let mut events = client
        .watch_payment(WatchPaymentRequest { payment_id: payment_id.into() })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(event) = events.message().await? {
        info!("  event {}: {:?}", event.sequence, event.status());
        last = Some(event.status());
    }
    ensure!(
        last == Some(grpc::proto::v2::PaymentStatus::Settled),
        "the watch should end with the payment settled"
    );
    Ok(())
}

async fn client_streaming(client: &mut Client) -> anyhow::Result<()> {
    let a = client::authorize(client, order("o-1002", 1500), Duration::from_secs(2))
        .await?;
    let b = client::authorize(client, order("o-1003", 800), Duration::from_secs(2))
        .await?;
    let batch = vec![
        CaptureRequest { payment_id: a.payment_id.clone(), amount_cents: 1500 },
        CaptureRequest { payment_id: b.payment_id.clone(), amount_cents: 5000 },
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
        warn!("  refused {}: {}", rejection.payment_id, rejection.reason);
    }
    ensure!(
        summary.captured == 1 && summary.rejections.len() == 2,
        "one capture should pass and two be refused"
    );
    Ok(())
}

// ANCHOR: bidirectional
async fn bidirectional(client: &mut Client) -> anyhow::Result<()> {
    info!(
        "bidirectional streaming: AuthorizeStream, one answer per order as it is decided"
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
                warn!(
                    "  <- {}: declined ({}: {})",
                    answer.order_id, d.code, d.reason
                );
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

// ANCHOR: miss_the_deadline
async fn miss_the_deadline(client: &mut Client) -> anyhow::Result<()> {
    let deadline = Duration::from_millis(300);
    info!(
        "Authorize o-0999 with a {deadline:?} deadline; the card network takes 800 ms"
    );
    match client::authorize(client, order("o-0999", 2500), deadline).await {
        Err(status) if status.code() == Code::DeadlineExceeded => {
            warn!("DEADLINE_EXCEEDED: {}", status.message())
        }
        other => bail!("expected DEADLINE_EXCEEDED, got {other:?}"),
    }
    info!(
        "retry o-0999 with a 3 s deadline: the service dropped the first attempt, so this one is fresh"
    );
    let payment =
        client::authorize(client, order("o-0999", 2500), Duration::from_secs(3))
            .await?;
    info!(payment_id = %payment.payment_id, "authorized on the retry");
    Ok(())
}
// ANCHOR_END: miss_the_deadline

async fn send_bad_requests(client: &mut Client) -> anyhow::Result<()> {
    let cases = [
        (
            "amount of zero",
            AuthorizeRequest { amount_cents: 0, ..order("o-0901", 0) },
            Code::InvalidArgument,
        ),
        (
            "wrong currency",
            AuthorizeRequest { currency: "USD".into(), ..order("o-0902", 100) },
            Code::InvalidArgument,
        ),
        (
            "declined card",
            AuthorizeRequest {
                card_token: DECLINED_CARD.into(),
                ..order("o-0903", 100)
            },
            Code::FailedPrecondition,
        ),
    ];
    for (what, request, expected) in cases {
        match client::authorize(client, request, Duration::from_secs(2)).await {
            Err(status) if status.code() == expected => {
                warn!("{what}: {:?}: {}", status.code(), status.message())
            }
            other => bail!("{what}: expected {expected:?}, got {other:?}"),
        }
    }
    client::authorize(client, order("o-0904", 100), Duration::from_secs(2)).await?;
    match client::authorize(client, order("o-0904", 100), Duration::from_secs(2))
        .await
    {
        Err(status) if status.code() == Code::AlreadyExists => {
            warn!("same order twice: {:?}: {}", status.code(), status.message())
        }
        other => bail!("same order twice: expected ALREADY_EXISTS, got {other:?}"),
    }
    info!("every bad request got its status code; the service keeps serving");
    Ok(())
}
