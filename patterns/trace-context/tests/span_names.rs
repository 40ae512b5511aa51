//! Server spans are named after the route that matched, not the path that was asked for: a
//! name per order id would make every request a group of its own in a tracing UI.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use opentelemetry_sdk::trace::InMemorySpanExporter;
use tower::ServiceExt;
use trace_context::{hops, setup};
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn a_server_span_is_named_after_the_route_not_the_path() {
    let exporter = InMemorySpanExporter::default();
    let provider = setup::provider(exporter.clone());
    let subscriber =
        tracing_subscriber::registry().with(setup::otel_layer(&provider));
    // This test's thread only: the runtime here has one.
    let _guard = tracing::subscriber::set_default(subscriber);
    let app =
        Router::new().route("/orders/{id}", get(|| async { "an order" })).layer(
            axum::middleware::from_fn_with_state("orders", hops::http_server_span),
        );
    for path in ["/orders/o-1", "/orders/o-2", "/no/such/route"] {
        let request = Request::get(path).body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap();
    }
    let spans = exporter.get_finished_spans().unwrap();
    let names: Vec<&str> = spans.iter().map(|span| span.name.as_ref()).collect();
    assert_eq!(names, ["GET /orders/{id}", "GET /orders/{id}", "GET"]);
}
