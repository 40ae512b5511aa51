//! One checkout through HTTP, gRPC, Kafka and AMQP, traced, printed as a tree and as a mermaid
//! sequence diagram drawn from the exported spans; it checks that they are one trace and one tree.
//!
//! Run it:   `cargo run --example traced_checkout`
//! Break it: `cargo run --example traced_checkout -- --no-amqp-context`  fulfilment sends the
//!           shipment task without `traceparent`: shipping starts a second trace
//! In Jaeger (with a container engine): `docker compose up -d --wait jaeger`, then
//!           `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 cargo run --example
//!           traced_checkout`, and open http://127.0.0.1:16686
//!
//! Needs Kafka and RabbitMQ: `cargo xtask brokers up` (or `docker compose up -d --wait`).

use std::time::Duration;

use anyhow::{bail, ensure};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use trace_context::checkout::{Brokers, CheckoutRequest, HOPS, Shop};
use trace_context::{report, setup};
use tracing::{info, warn};

/// The longest the example waits for any one thing before it gives up with an error.
const STEP: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = infra::example::Flags::parse(&["--no-amqp-context"])
        .map_err(anyhow::Error::msg)?;
    let exporter = InMemorySpanExporter::default();
    let provider = provider(exporter.clone())?;
    setup::init(&provider);
    let brokers = Brokers {
        kafka: infra::kafka_brokers(),
        amqp: infra::amqp_addr(),
        amqp_context: !flags.has("--no-amqp-context"),
    };
    reachable(&brokers).await?;
    let mut shop = Shop::start(&brokers).await?;

    let order = CheckoutRequest {
        order_id: "ord-7001".into(),
        customer_id: "cust-42".into(),
        total_cents: 4_990,
        card_token: "tok_visa".into(),
    };
    info!("storefront: POST /checkout for ord-7001, correlation id checkout-7001");
    let reply = shop.place_order(&order, "checkout-7001").await?;
    info!("storefront: paid with {}", reply.payment_id);
    let shipped = shop.shipped(STEP).await?;
    ensure!(shipped.correlation_id == "checkout-7001", "correlation id lost");

    // A failing exporter shows as no spans yet; the wait then ends in its error.
    let finished = || match exporter.get_finished_spans() {
        Ok(spans) => spans,
        Err(error) => {
            warn!("the in-memory exporter failed: {error}");
            vec![]
        }
    };
    let spans = report::wait_for_traces(STEP, &HOPS, finished).await?;
    shop.shutdown().await;
    if brokers.amqp_context {
        let trace = report::one_tree(&spans)?;
        println!("\n{}", trace.tree());
        println!("{}", trace.mermaid());
        info!(
            "done: {} spans, one trace id, one tree across HTTP, gRPC, Kafka and AMQP",
            trace.len()
        );
    } else {
        let traces = report::by_trace(&spans);
        ensure!(traces.len() == 2, "expected two traces, got {}", traces.len());
        for spans in &traces {
            println!("\n{}", report::one_tree(spans)?.tree());
        }
        warn!(
            "two traces: shipping got no traceparent and started its own; only the \
             correlation id {} ties them together",
            shipped.correlation_id
        );
    }
    // Sends what is still batched to the OTLP endpoint, if there is one.
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await?
        .map_err(|e| anyhow::anyhow!("exporting the spans: {e}"))?;
    Ok(())
}

/// The in-memory exporter always (the tree is printed from it), and OTLP as well
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
fn provider(exporter: InMemorySpanExporter) -> anyhow::Result<SdkTracerProvider> {
    match setup::otlp_endpoint() {
        Some(endpoint) => {
            eprintln!("exporting the trace over OTLP to {endpoint} too");
            setup::provider_with_otlp(exporter, &endpoint)
                .map_err(|e| anyhow::anyhow!("OTLP exporter for {endpoint}: {e}"))
        }
        None => Ok(setup::provider(exporter)),
    }
}

/// One actionable line when a broker is not there.
async fn reachable(brokers: &Brokers) -> anyhow::Result<()> {
    let kafka = infra::first_kafka_broker();
    let connect = tokio::net::TcpStream::connect(kafka.as_str());
    let kafka_up =
        matches!(tokio::time::timeout(STEP / 10, connect).await, Ok(Ok(_)));
    let amqp = rabbitmq_queues::connect(&brokers.amqp);
    let amqp_up = match tokio::time::timeout(STEP / 10, amqp).await {
        Ok(Ok((connection, _))) => {
            connection.close(200, "probe".into()).await.is_ok()
        }
        _ => false,
    };
    if !(kafka_up && amqp_up) {
        bail!(
            "this example needs Kafka at {} and RabbitMQ at {}: start them with \
             `cargo xtask brokers up` (or `docker compose up -d --wait`)",
            brokers.kafka,
            brokers.amqp
        );
    }
    Ok(())
}
