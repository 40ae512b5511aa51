//! Round-trip latency of one HTTP/JSON request and one gRPC unary call, against a raw TCP echo.
//!
//! Run it: `cargo run --release --example protocol_bench` (add `-- --iterations 20000` for more)
//!
//! All three run in this process over loopback, one connection each, one request at a time, in the
//! same run, so the ratios compare protocols rather than machines. The HTTP call is `GET
//! /v1/orders/{id}` (axum + reqwest, JSON); the gRPC call is `Authorize` (tonic + prost, one new
//! order per call); the echo sends 256 bytes, about the size of the JSON order.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use compare::echo::{self, EchoClient};
use compare::stats::Sample;
use grpc::proto::v2::AuthorizeRequest;
use http_json::orders::{NewOrder, OrderLine};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let iterations = parse_iterations()?;
    if cfg!(debug_assertions) {
        println!(
            "note: a debug build measures the compiler's debug code; run with --release for real figures"
        );
    }
    let warmup = (iterations / 10).max(10);
    println!(
        "{iterations} round trips per transport after {warmup} warm-up calls, one at a time, over loopback\n"
    );

    let (echo_addr, echo_server) = echo::spawn().await?;
    let mut echo_client = EchoClient::connect(echo_addr).await?;
    let message = [b'x'; 256];
    let tcp = measure(warmup, iterations, async |_| {
        echo_client.round_trip(&message).await
    })
    .await
    .context("TCP echo")?;
    echo_server.abort();

    let orders =
        http_json::server::spawn(http_json::server::ServiceConfig::default())
            .await?;
    let http = http_json::client::OrdersClient::new(
        orders.base_url(),
        Duration::from_secs(5),
    )?;
    let order = NewOrder {
        customer_id: "c-42".into(),
        lines: vec![OrderLine {
            sku: "mug".into(),
            quantity: 2,
            unit_price_cents: 1250,
        }],
    };
    let id = http.create("bench-1", &order).await?.order.id;
    let http_sample = measure(warmup, iterations, async |_| http.get(id).await)
        .await
        .context("HTTP/JSON")?;
    orders.shutdown().await?;

    let payments =
        grpc::server::spawn(grpc::service::ServiceConfig::default()).await?;
    let mut grpc_client = grpc::client::connect(payments.addr, "bench").await?;
    let grpc_sample = measure(warmup, iterations, async |i| {
        let request = AuthorizeRequest {
            order_id: format!("bench-{i}"),
            amount_cents: 2500,
            currency: "EUR".into(),
            card_token: "tok_visa".into(),
            customer_id: "c-42".into(),
        };
        grpc_client.authorize(request).await
    })
    .await
    .context("gRPC")?;
    payments.shutdown().await.map_err(|e| anyhow::anyhow!(e))?;

    println!(
        "{:<22} {:>10} {:>10} {:>12} {:>12}",
        "transport", "p50", "p99", "p50 / echo", "p99 / echo"
    );
    for (name, sample) in [
        ("raw TCP echo (baseline)", &tcp),
        ("HTTP/JSON GET", &http_sample),
        ("gRPC unary Authorize", &grpc_sample),
    ] {
        let (p50, p99) = (sample.percentile(50.0), sample.percentile(99.0));
        println!(
            "{name:<22} {:>10} {:>10} {:>11.1}x {:>11.1}x",
            micros(p50),
            micros(p99),
            ratio(p50, tcp.percentile(50.0)),
            ratio(p99, tcp.percentile(99.0))
        );
    }
    Ok(())
}

/// Runs `call` `warmup` times unmeasured, then `iterations` times measured, one at a time.
async fn measure<T, E>(
    warmup: usize,
    iterations: usize,
    mut call: impl AsyncFnMut(usize) -> Result<T, E>,
) -> anyhow::Result<Sample>
where
    E: std::error::Error + Send + Sync + 'static,
{
    for i in 0..warmup {
        call(i).await?;
    }
    let mut measurements = Vec::with_capacity(iterations);
    for i in warmup..warmup + iterations {
        let began = Instant::now();
        call(i).await?;
        measurements.push(began.elapsed());
    }
    Sample::new(measurements).context("no measurements")
}

fn parse_iterations() -> anyhow::Result<usize> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(5_000),
        [flag, n] if flag == "--iterations" => match n.parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("--iterations takes a positive whole number, got {n:?}"),
        },
        _ => bail!("usage: protocol_bench [--iterations N]"),
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

fn ratio(value: Duration, baseline: Duration) -> f64 {
    value.as_secs_f64() / baseline.as_secs_f64().max(1e-9)
}
