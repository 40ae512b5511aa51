//! Wiring `tracing` to OpenTelemetry: a tracer provider, the layer that turns spans into
//! OpenTelemetry spans, and an OTLP exporter for a tracing backend such as Jaeger.
//!
//! The services in this crate only ever create `tracing` spans (`info_span!`). The
//! `tracing-opentelemetry` layer gives each one an OpenTelemetry span id in the current trace,
//! and ends it when the `tracing` span closes; the provider hands ended spans to its exporters.
//! That is why the versions must agree: `tracing-opentelemetry` 0.32 is built against
//! `opentelemetry` 0.31, and a provider from another `opentelemetry` release would be a different
//! type (the build fails) or, through the global provider, a silent no-op (no spans at all).

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

// ANCHOR: provider
/// A provider that hands every span to `exporter` as soon as it ends. All five
/// services run in this one process, so they share one resource; each span says
/// which service it belongs to in its `shop.service` attribute.
pub fn provider<E: SpanExporter + 'static>(exporter: E) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name("shop").build())
        .with_simple_exporter(exporter)
        .build()
}

/// The layer that records `tracing` spans (INFO and above) as OpenTelemetry spans.
/// lapin's spans are left out: it runs each connection's I/O loop in an INFO span
/// that lives as long as the connection, which would be a trace of its own.
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("trace-context"))
        .with_filter(
            Targets::new()
                .with_default(LevelFilter::INFO)
                .with_target("lapin", LevelFilter::OFF),
        )
}
// ANCHOR_END: provider

/// Installs the OpenTelemetry layer and the examples' log format (stdout, time since start, no
/// colours unless stdout is a terminal; `RUST_LOG` filters the logs, never the spans).
pub fn init(provider: &SdkTracerProvider) {
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info")),
        );
    tracing_subscriber::registry().with(otel_layer(provider)).with(logs).init();
}

/// The environment variable that switches OTLP export on (the standard one).
pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The OTLP endpoint the reader asked for, if any.
pub fn otlp_endpoint() -> Option<String> {
    std::env::var(OTLP_ENDPOINT).ok().filter(|v| !v.trim().is_empty())
}

// ANCHOR: otlp
/// Like [`provider`], and also exports to an OTLP endpoint over gRPC (Jaeger's is
/// `http://127.0.0.1:4317`), in batches from a background thread, so no request
/// waits for the collector. Call it inside a tokio runtime: tonic's channel runs
/// on it.
pub fn provider_with_otlp<E: SpanExporter + 'static>(
    exporter: E,
    endpoint: &str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let otlp = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name("shop").build())
        .with_simple_exporter(exporter)
        .with_batch_exporter(otlp)
        .build())
}
// ANCHOR_END: otlp
