//! What tracing costs on one HTTP round trip on loopback: the same axum route and reqwest call,
//! without tracing and with it (a `client` span, `traceparent` injected and extracted, a `server`
//! span, both recorded by OpenTelemetry and handed to an exporter that drops them), three ways:
//! with the simple exporter (each span handed over as it ends, on the request's path), with the
//! batch exporter (spans queued for a background thread), and batched with 10% of traces sampled
//! at the root.
//!
//! Run it: `cargo bench -p trace-context --bench http_overhead`
//!
//! The exporter does no I/O, so this is the cost on the request's path; a real exporter adds its
//! own work, on the background thread when batching. After criterion's figures, the four kinds
//! are timed again in turns, one round trip of each per round, and each is printed as a ratio to
//! the untraced one of the same rounds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tokio::runtime::Runtime;
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

/// One way of running the round trip: its server, and the tracing it runs under.
struct Kind {
    name: &'static str,
    url: String,
    tracing: Option<(tracing::Dispatch, SdkTracerProvider, Arc<AtomicUsize>)>,
}

impl Kind {
    fn new(
        runtime: &Runtime,
        name: &'static str,
        provider: Option<Provider>,
    ) -> Kind {
        let listener =
            runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url =
            format!("http://{}/orders/ord-7001", listener.local_addr().unwrap());
        let traced = provider.is_some();
        runtime.spawn(async move { axum::serve(listener, app(traced)).await });
        let tracing = provider.map(|provider| {
            let exported = Arc::new(AtomicUsize::new(0));
            let provider = provider(Discard(Arc::clone(&exported)));
            let subscriber =
                tracing_subscriber::registry().with(setup::otel_layer(&provider));
            (tracing::Dispatch::new(subscriber), provider, exported)
        });
        Kind { name, url, tracing }
    }

    /// One round trip, under this kind's tracing.
    fn round_trip(&self, runtime: &Runtime, client: &reqwest::Client) {
        let request = client.get(&self.url);
        match &self.tracing {
            None => runtime.block_on(async {
                request.send().await.unwrap().bytes().await.unwrap()
            }),
            Some((dispatch, ..)) => {
                tracing::dispatcher::with_default(dispatch, || {
                    runtime.block_on(async {
                        let (request, span) = hops::http_client(
                            "shop",
                            "GET",
                            "/orders/{id}",
                            request,
                        );
                        let reply = request.send().instrument(span).await.unwrap();
                        reply.bytes().await.unwrap()
                    })
                })
            }
        };
    }
}

type Provider = fn(Discard) -> SdkTracerProvider;

fn batched(exporter: Discard) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name("shop").build())
        .with_batch_exporter(exporter)
        .build()
}

fn batched_and_sampled(exporter: Discard) -> SdkTracerProvider {
    let root = Sampler::TraceIdRatioBased(0.1);
    SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name("shop").build())
        .with_sampler(Sampler::ParentBased(Box::new(root)))
        .with_batch_exporter(exporter)
        .build()
}

fn round_trip(c: &mut Criterion) {
    // One thread: the server task and the client run where the subscriber is set.
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = reqwest::Client::new();
    let kinds = [
        Kind::new(&runtime, "untraced", None),
        Kind::new(&runtime, "traced, simple exporter", Some(setup::provider)),
        Kind::new(&runtime, "traced, batch exporter", Some(batched)),
        Kind::new(&runtime, "traced, batch, 10% sampled", Some(batched_and_sampled)),
    ];

    let mut group = c.benchmark_group("http_round_trip");
    group.measurement_time(Duration::from_secs(5));
    for kind in &kinds {
        group.bench_function(kind.name, |b| {
            b.iter(|| kind.round_trip(&runtime, &client))
        });
    }
    group.finish();

    // In turns, for ratios that share the machine's moods. Criterion's test mode (`cargo test
    // --benches`) runs each once; this runs 300 rounds then, enough that the sampled kind keeps
    // a trace (all 300 dropped: 0.9^300, about 2e-14) for the check below.
    let rounds = if std::env::args().any(|a| a == "--bench") { 5_000 } else { 300 };
    let mut took: Vec<Vec<Duration>> = kinds.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (kind, took) in kinds.iter().zip(&mut took) {
            let began = Instant::now();
            kind.round_trip(&runtime, &client);
            took.push(began.elapsed());
        }
    }
    let median = |d: &mut Vec<Duration>| {
        d.sort_unstable();
        d[d.len() / 2]
    };
    let medians: Vec<Duration> = took.iter_mut().map(median).collect();
    for (kind, m) in kinds.iter().zip(&medians) {
        let ratio = m.as_secs_f64() / medians[0].as_secs_f64();
        println!("{}: median {} us, {ratio:.2}x untraced", kind.name, m.as_micros());
    }
    // Every traced kind exported spans (the sampled one, some), or it measured nothing.
    for kind in &kinds {
        if let Some((_, provider, exported)) = &kind.tracing {
            provider.force_flush().unwrap();
            let spans = exported.load(Ordering::Relaxed);
            assert!(spans > 0, "{}: exported no spans", kind.name);
            println!("{}: exported {spans} spans", kind.name);
        }
    }
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
