//! What tracing costs on one HTTP round trip on loopback: the same axum route and reqwest call,
//! without tracing and with it (a `client` span, `traceparent` injected and extracted, a `server`
//! span, both recorded by OpenTelemetry and handed to an exporter that drops them).
//!
//! Run it: `cargo bench -p trace-context --bench http_overhead`
//!
//! The exporter does no I/O, so this is the cost on the request's path; a real exporter adds its
//! own work, on a background thread when batching.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use trace_context::{hops, setup};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Counts every span and keeps none.
#[derive(Debug)]
struct Discard(Arc<AtomicUsize>);

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len(), Ordering::Relaxed);
        Ok(())
    }
}

fn app(traced: bool) -> Router {
    let app = Router::new().route("/orders/ord-7001", get(|| async { "{}" }));
    if traced {
        app.layer(axum::middleware::from_fn_with_state(
            "orders",
            hops::http_server_span,
        ))
    } else {
        app
    }
}

fn round_trip(c: &mut Criterion) {
    // One thread: the server task and the client run where the subscriber is set.
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let exported = Arc::new(AtomicUsize::new(0));
    let provider = setup::provider(Discard(Arc::clone(&exported)));
    let subscriber =
        tracing_subscriber::registry().with(setup::otel_layer(&provider));
    let dispatch = tracing::Dispatch::new(subscriber);
    let client = reqwest::Client::new();

    let mut group = c.benchmark_group("http_round_trip");
    group.measurement_time(Duration::from_secs(5));
    for traced in [false, true] {
        let _guard = traced.then(|| tracing::dispatcher::set_default(&dispatch));
        let listener =
            runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url =
            format!("http://{}/orders/ord-7001", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app(traced)).await });
        let name = if traced { "traced" } else { "untraced" };
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let request = client.get(&url);
                    if traced {
                        let (request, span) = hops::http_client(
                            "shop",
                            "GET",
                            "/orders/{id}",
                            request,
                        );
                        let reply = request.send().instrument(span).await.unwrap();
                        reply.bytes().await.unwrap()
                    } else {
                        request.send().await.unwrap().bytes().await.unwrap()
                    }
                })
            })
        });
    }
    group.finish();
    // Two spans per traced round trip, or the comparison measured nothing.
    let spans = exported.load(Ordering::Relaxed);
    assert!(spans > 0, "the traced runs exported no spans");
    println!("traced runs exported {spans} spans");
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
