//! Logs and traces for every process of the shop.
//!
//! Each process turns its `tracing` spans into OpenTelemetry spans (the tracing chapter's layer),
//! named after its role, so a trace backend shows `shop-gateway`, `shop-saga`, ... as services. A
//! request that arrives with a W3C `traceparent` header continues the caller's trace; the gateway
//! passes the trace on to the service behind it. Spans go to an OTLP endpoint (Jaeger, say) only
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Logs are for people by default: one line per event, time since start. `LOG_FORMAT=json` makes
//! them one JSON object per line, with the `trace_id` and `span_id` of the span the event happened
//! in, so a log search and a trace backend find the same request.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OtelData;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{
    FmtContext, FormatEvent, FormatFields, FormattedFields,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The variable that picks the log format: `json`, or anything else (or nothing) for lines
/// meant for people.
pub const LOG_FORMAT_VAR: &str = "LOG_FORMAT";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per event, for a terminal: time since start, level, spans, message.
    Human,
    /// One JSON object per line, with trace and span ids: for a log pipeline.
    Json,
}

impl LogFormat {
    /// The format a value of `LOG_FORMAT` names (unset: for people); `None` for another value.
    pub fn parse(value: Option<&str>) -> Option<LogFormat> {
        match value {
            None | Some("") | Some("human") => Some(LogFormat::Human),
            Some("json") => Some(LogFormat::Json),
            Some(_) => None,
        }
    }

    /// What `LOG_FORMAT` asks for.
    pub fn from_env() -> Result<LogFormat, String> {
        let value = std::env::var(LOG_FORMAT_VAR).ok();
        LogFormat::parse(value.as_deref()).ok_or_else(|| {
            format!("{LOG_FORMAT_VAR}={value:?} is not json or human")
        })
    }

    /// Its name, as `LOG_FORMAT` spells it.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// Code whose spans last as long as a connection or a loop, not one request: as traces they
/// would put every checkout a process ever handled into one. lapin runs each connection's I/O in
/// such a span; the orchestrator, each participant and each outbox relay run their loops in one.
const LONG_LIVED: [&str; 4] = [
    "lapin",
    "orchestration::orchestrator",
    "orchestration::participant",
    "choreography::shop::relaying",
];

/// Keeps the tracer provider alive; dropping it flushes the spans not exported yet.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            // The subscriber may be gone by now: stderr is all that is left.
            eprintln!("flushing the last spans failed: {error}");
        }
    }
}

/// Installs logs and traces for a process of `service` (`shop-gateway`, ...). Call it inside a
/// tokio runtime: the OTLP exporter's channel runs on it.
pub fn init(service: &str) -> Result<Telemetry, String> {
    let format = LogFormat::from_env()?;
    let resource = Resource::builder().with_service_name(service.to_owned()).build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    let endpoint = trace_context::setup::otlp_endpoint();
    if let Some(endpoint) = &endpoint {
        use opentelemetry_otlp::WithExportConfig as _;
        let otlp = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
        provider = provider.with_batch_exporter(otlp);
    }
    let provider = provider.build();
    let requests = LONG_LIVED
        .iter()
        .fold(Targets::new().with_default(LevelFilter::INFO), |targets, target| {
            targets.with_target(*target, LevelFilter::OFF)
        });
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("shop"))
        .with_filter(requests);
    let filter = || {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let logs = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .with_target(false)
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .event_format(JsonLines)
            .with_filter(filter())
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(spans)
        .with(logs)
        .try_init()
        .map_err(|e| format!("logging was set up already: {e}"))?;
    if let Some(endpoint) = endpoint {
        tracing::info!("exporting traces to {endpoint} as {service}");
    }
    Ok(Telemetry { provider })
}

// ANCHOR: JsonLines
/// One JSON object per event: `timestamp`, `level`, `message` and the
/// event's fields, the spans it happened in (name and fields, outermost
/// first), and the `trace_id` and `span_id` of the innermost span that has
/// them.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = Map::new();
        let mut now = String::new();
        SystemTime.format_time(&mut Writer::new(&mut now))?;
        line.insert("timestamp".into(), now.into());
        line.insert("level".into(), event.metadata().level().as_str().into());
        event.record(&mut Fields(&mut line));
        if let Some(scope) = ctx.event_scope() {
            let mut spans = vec![];
            let mut ids = None;
            for span in scope {
                let extensions = span.extensions();
                if ids.is_none()
                    && let Some(otel) = extensions.get::<OtelData>()
                    && let (Some(trace), Some(id)) =
                        (otel.trace_id(), otel.span_id())
                    && trace != opentelemetry::TraceId::INVALID
                {
                    ids = Some((trace.to_string(), id.to_string()));
                }
                let mut entry = BTreeMap::from([("name", span.name().to_owned())]);
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    entry.insert("fields", fields.fields.clone());
                }
                spans.push(entry);
            }
            spans.reverse();
            if let Some((trace, span)) = ids {
                line.insert("trace_id".into(), trace.into());
                line.insert("span_id".into(), span.into());
            }
            let spans = serde_json::to_value(spans).map_err(|_| std::fmt::Error)?;
            line.insert("spans".into(), spans);
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}
// ANCHOR_END: JsonLines

/// An event's fields, as JSON values under their names.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(
        &mut self,
        field: &Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

/// Routes that are not requests anyone traces: probes and scrapes, asked every few seconds.
const UNTRACED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// `app` with every request but probes and scrapes in a server span of `service` that continues
/// the caller's trace (the tracing chapter's middleware).
pub fn traced(app: Router, service: &'static str) -> Router {
    app.layer(from_fn_with_state(service, server_span))
}

async fn server_span(
    State(service): State<&'static str>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    if route.is_some_and(|route| UNTRACED.contains(&route)) {
        return next.run(request).await;
    }
    trace_context::hops::http_server_span(State(service), request, next).await
}

/// Writes the trace context of the span this runs in into `headers`: what the gateway's composed
/// reads carry to orders (HTTP) and payments (gRPC metadata), so they join the caller's trace.
pub fn propagate(headers: &mut axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    trace_context::carrier::http_headers::inject(
        &tracing::Span::current().context(),
        headers,
    );
}

// ANCHOR: amqp_trace
/// The trace context of the span this runs in, as AMQP headers: what the
/// saga service sends with each command of a checkout, so the participants'
/// work joins the checkout's trace.
pub fn amqp_headers() -> lapin::types::FieldTable {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let mut headers = lapin::types::FieldTable::default();
    let context = tracing::Span::current().context();
    trace_context::carrier::inject_amqp(&context, &mut headers);
    headers
}

/// The span a participant handles one command in, continuing the trace
/// whose context the command's headers carry (a trace of its own when they
/// carry none).
pub fn command_span(properties: &lapin::BasicProperties) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    // The command's id travels as the message's correlation id.
    let id = properties.correlation_id().as_ref().map(|id| id.as_str());
    let span = tracing::info_span!("command", otel.kind = "consumer", id);
    if let Some(headers) = properties.headers() {
        let carrier = trace_context::carrier::AmqpExtractor(headers);
        let context = trace_context::carrier::extract(&carrier);
        if let Err(error) = span.set_parent(context) {
            tracing::warn!(%error, "the command's trace context was not joined");
        }
    }
    span
}
// ANCHOR_END: amqp_trace

// ANCHOR: kafka_trace
/// How a choreographed checkout's trace crosses Kafka: an event leaves with
/// the context of the span it was emitted in, in its outbox row's headers (so
/// the context survives a crash before the relay runs), and the service that
/// consumes it works in a span that continues that trace.
pub const KAFKA_TRACING: choreography::service::Tracing =
    choreography::service::Tracing { inject: kafka_inject, join: kafka_join };

fn kafka_inject(span: &tracing::Span) -> Vec<(String, String)> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let mut headers = std::collections::HashMap::new();
    trace_context::carrier::inject(&span.context(), &mut headers);
    headers.into_iter().collect()
}

fn kafka_join(span: &tracing::Span, headers: &[(String, String)]) {
    let headers: std::collections::HashMap<String, String> =
        headers.iter().cloned().collect();
    trace_context::hops::adopt(span, trace_context::carrier::extract(&headers));
}
// ANCHOR_END: kafka_trace

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// A writer that keeps what is written, for the test to read.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Kept {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_line_carries_the_trace_and_span_ids_of_its_span_and_its_fields() {
        let provider = SdkTracerProvider::builder().build();
        let kept = Kept::default();
        let writer = kept.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer().with_tracer(provider.tracer("test")),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLines)
                    .with_writer(move || writer.clone()),
            );
        let expected = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("checkout", order_id = "o-1");
            let context = span.context();
            let _entered = span.enter();
            tracing::warn!(attempt = 2, "payment declined");
            tracing::info!(second = true, "still in the span");
            context
        });
        let expected = opentelemetry::trace::TraceContextExt::span(&expected)
            .span_context()
            .clone();
        let text = String::from_utf8(kept.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["message"], "payment declined");
        assert_eq!(first["attempt"], 2);
        assert_eq!(first["trace_id"], expected.trace_id().to_string());
        assert_eq!(first["span_id"], expected.span_id().to_string());
        assert_eq!(first["spans"][0]["name"], "checkout");
        assert!(
            first["spans"][0]["fields"].as_str().unwrap().contains("o-1"),
            "{first}"
        );
        // The second event is still inside the entered span: same ids.
        assert_eq!(lines[1]["trace_id"], first["trace_id"]);
    }
}
