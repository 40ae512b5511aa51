//! One checkout through HTTP, gRPC, Kafka and AMQP against the real brokers, with the SDK's
//! in-memory exporter: every span has one trace id, and the parent links form one tree whose
//! every hop is a child of the span that sent it.
//!
//! One test per file: it installs the global `tracing` subscriber, which is process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::time::Duration;

use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use trace_context::checkout::{self, Brokers, CheckoutRequest, HOPS, Shop};
use trace_context::report::{self, attribute};
use trace_context::setup;
use tracing_subscriber::layer::SubscriberExt;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkout_is_one_trace_and_one_tree_across_four_transports() {
    let exporter = InMemorySpanExporter::default();
    let provider = setup::provider(exporter.clone());
    let subscriber =
        tracing_subscriber::registry().with(setup::otel_layer(&provider));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let brokers = Brokers {
        kafka: infra::kafka_brokers(),
        amqp: infra::amqp_addr(),
        amqp_context: true,
    };
    let mut shop = match Shop::start(&brokers).await {
        Ok(shop) => shop,
        Err(error) => {
            let addr = format!("{} and {}", brokers.kafka, brokers.amqp);
            return infra::unavailable("Kafka and RabbitMQ", &addr, error);
        }
    };
    let order = CheckoutRequest {
        order_id: "ord-7001".into(),
        customer_id: "cust-42".into(),
        total_cents: 4_990,
        card_token: "tok_visa".into(),
    };
    let reply = shop.place_order(&order, "checkout-7001").await.unwrap();
    assert_eq!(reply.order_id, "ord-7001");
    let shipped = shop.shipped(LIMIT).await.unwrap();
    assert_eq!(shipped.order_id, "ord-7001");
    // The correlation id made the same trip, in each transport's own header.
    assert_eq!(shipped.correlation_id, "checkout-7001");

    let finished = || exporter.get_finished_spans().unwrap();
    let spans = report::wait_for_traces(LIMIT, &HOPS, finished).await.unwrap();
    shop.shutdown().await;
    check(&spans);
}

fn check(spans: &[SpanData]) {
    let trace = report::one_tree(spans).unwrap();
    // Every span ever exported in this process is in the one trace.
    assert!(spans.iter().all(|s| s.span_context.trace_id() == trace.trace_id));
    let root = trace.root();
    assert_eq!(root.span_kind, SpanKind::Client);
    assert_eq!(
        attribute(root, report::SERVICE).as_deref(),
        Some(checkout::STOREFRONT)
    );
    assert!(!root.parent_span_id.eq(&root.span_context.span_id()));

    // Each receiving span's parent is the sending span in the service before it,
    // reached through the transport's headers (a remote parent).
    let hop = |service: &str, kind: &SpanKind| {
        spans
            .iter()
            .find(|s| {
                &s.span_kind == kind
                    && attribute(s, report::SERVICE).as_deref() == Some(service)
            })
            .unwrap_or_else(|| panic!("no {kind:?} span in {service}"))
    };
    let across = [
        (
            (checkout::STOREFRONT, SpanKind::Client),
            (checkout::CHECKOUT_API, SpanKind::Server),
        ),
        (
            (checkout::CHECKOUT_API, SpanKind::Client),
            (checkout::PAYMENTS, SpanKind::Server),
        ),
        (
            (checkout::PAYMENTS, SpanKind::Producer),
            (checkout::FULFILMENT, SpanKind::Consumer),
        ),
        (
            (checkout::FULFILMENT, SpanKind::Producer),
            (checkout::SHIPPING, SpanKind::Consumer),
        ),
    ];
    for ((from, from_kind), (to, to_kind)) in across {
        let (sender, receiver) = (hop(from, &from_kind), hop(to, &to_kind));
        assert_eq!(
            receiver.parent_span_id,
            sender.span_context.span_id(),
            "{to}'s {to_kind:?} span is not a child of {from}'s {from_kind:?} span"
        );
        assert!(
            receiver.parent_span_is_remote,
            "{to} did not read its parent from headers"
        );
    }
    // And in-process children are local: the gRPC client span is a child of the
    // HTTP server span in the same service.
    let client = hop(checkout::CHECKOUT_API, &SpanKind::Client);
    let server = hop(checkout::CHECKOUT_API, &SpanKind::Server);
    assert_eq!(client.parent_span_id, server.span_context.span_id());
    assert!(!client.parent_span_is_remote);

    let mermaid = trace.mermaid();
    assert!(
        mermaid.contains("payments-)fulfilment: kafka orders-placed-"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("fulfilment-)shipping: rabbitmq shipments-"),
        "{mermaid}"
    );
}
