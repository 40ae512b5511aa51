//! One hop per transport: the span on each side, and the context carried between them.
//!
//! The rule is the same on all four transports. The sending side opens a span of kind `client`
//! (a call) or `producer` (a message) and writes *that span's* context into the outgoing
//! headers; the receiving side reads the context and opens its span of kind `server` or
//! `consumer` as a child of it. The receiving span's parent is then a span in another service,
//! and the trace is one tree across services. Spans are named as OpenTelemetry's semantic
//! conventions name them (`POST /checkout`, `shop.payments.Payments/Authorize`,
//! `<destination> publish`, `<destination> process`), so tracing UIs group them correctly. An
//! HTTP server span takes the matched route (`GET /orders/{id}`), never the raw path: one name
//! per order id would make every request a group of its own.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use kafka_events::envelope::{Metadata, OrderPlaced};
use kafka_events::produce::PublishError;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use opentelemetry::Context;
use opentelemetry::propagation::Extractor as _;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tonic::service::Interceptor;
use tonic::{Request as GrpcRequest, Status};
use tracing::{Instrument, Span, field, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::carrier::{
    self, AmqpExtractor, KafkaExtractor, MetadataCarrier, MetadataExtractor,
};

/// Makes `span` a child of the remote span in `parent`; with no remote span (the
/// caller sent no `traceparent`) it stays a root and starts a new trace.
pub fn adopt(span: &Span, parent: Context) {
    use opentelemetry::trace::TraceContextExt;
    if parent.span().span_context().is_valid() {
        // Fails if the span has started already (calling `span.context()` starts
        // it, too), is disabled, or has no OpenTelemetry layer. The span then
        // keeps its own trace: not worth failing a request, worth a line in the
        // log that says why the tree broke here.
        if let Err(error) = span.set_parent(parent) {
            tracing::warn!(%error, "span not joined to the caller's trace");
        }
    }
}

// ANCHOR: http_server_span
/// axum middleware: every request runs in a `server` span that continues the
/// caller's trace. `service` is this service's name, set with `from_fn_with_state`.
pub async fn http_server_span(
    State(service): State<&'static str>,
    request: Request,
    next: Next,
) -> Response {
    // The route template, low-cardinality as the HTTP conventions ask; a request
    // that matched no route (a 404) is named by its method alone.
    let name = match request.extensions().get::<MatchedPath>() {
        Some(route) => format!("{} {}", request.method(), route.as_str()),
        None => request.method().to_string(),
    };
    let span = info_span!(
        "http.server",
        otel.name = name,
        otel.kind = "server",
        shop.service = service,
        http.response.status_code = field::Empty,
    );
    adopt(&span, carrier::http_headers::extract(request.headers()));
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}
// ANCHOR_END: http_server_span

// ANCHOR: http_client
/// reqwest: the `client` span for one call, with its context in the headers.
/// Send the request inside the returned span (`.instrument(span)`).
pub fn http_client(
    service: &'static str,
    method: &str,
    path: &str,
    request: reqwest::RequestBuilder,
) -> (reqwest::RequestBuilder, Span) {
    let name = format!("{method} {path}");
    let span = info_span!(
        "http.client",
        otel.name = name,
        otel.kind = "client",
        shop.service = service,
    );
    let mut headers = http::HeaderMap::new();
    carrier::http_headers::inject(&span.context(), &mut headers);
    (request.headers(headers), span)
}
// ANCHOR_END: http_client

// ANCHOR: grpc
/// tonic client interceptor: writes the current span's context (the caller's
/// `client` span, since tonic runs interceptors inside the call's future) into the
/// request metadata.
pub fn inject_grpc(mut request: GrpcRequest<()>) -> Result<GrpcRequest<()>, Status> {
    let context = Span::current().context();
    carrier::inject(&context, &mut MetadataCarrier(request.metadata_mut()));
    Ok(request)
}

/// The caller's context, stored in the request's extensions by [`extract_grpc`].
#[derive(Clone, Debug, Default)]
pub struct RemoteContext(pub Context);

/// tonic server interceptor: interceptors see the request before the handler but
/// cannot wrap it in a span, so this one only reads the context and keeps it for
/// the handler, which opens its `server` span with [`grpc_server_span`].
pub fn extract_grpc(
    mut request: GrpcRequest<()>,
) -> Result<GrpcRequest<()>, Status> {
    let context = carrier::extract(&MetadataExtractor(request.metadata()));
    request.extensions_mut().insert(RemoteContext(context));
    Ok(request)
}

/// The `server` span of a gRPC handler, child of the caller's span.
pub fn grpc_server_span<T>(
    service: &'static str,
    method: &'static str,
    request: &GrpcRequest<T>,
) -> Span {
    let span = info_span!(
        "grpc.server",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        shop.service = service,
    );
    if let Some(RemoteContext(context)) = request.extensions().get() {
        adopt(&span, context.clone());
    }
    span
}
// ANCHOR_END: grpc

/// The `client` span of a gRPC call; make the call inside it.
pub fn grpc_client_span(service: &'static str, method: &'static str) -> Span {
    info_span!(
        "grpc.client",
        otel.name = method,
        otel.kind = "client",
        rpc.system = "grpc",
        shop.service = service,
    )
}

// ANCHOR: kafka
/// Publishes an event as `kafka_events::produce::publish` does, inside a
/// `producer` span whose context rides in the record's headers.
pub async fn publish_kafka(
    service: &'static str,
    producer: &FutureProducer,
    topic: &str,
    metadata: &Metadata,
    order: &OrderPlaced,
) -> Result<(i32, i64), PublishError> {
    let span = info_span!(
        "kafka.publish",
        otel.name = format!("{topic} publish"),
        otel.kind = "producer",
        messaging.system = "kafka",
        shop.service = service,
    );
    let headers = carrier::inject_kafka(&span.context(), metadata.to_headers());
    let payload = serde_json::to_vec(order)?;
    let record = FutureRecord::to(topic)
        .key(order.order_id.as_str())
        .payload(&payload)
        .headers(headers);
    let delivery = producer
        .send(record, std::time::Duration::from_secs(30))
        .instrument(span)
        .await
        .map_err(|(error, _)| error)?;
    Ok((delivery.partition, delivery.offset))
}

/// The `consumer` span for one received record, child of its producer's span.
pub fn kafka_consumer_span(
    service: &'static str,
    message: &BorrowedMessage,
) -> Span {
    let span = info_span!(
        "kafka.process",
        otel.name = format!("{} process", message.topic()),
        otel.kind = "consumer",
        messaging.system = "kafka",
        shop.service = service,
    );
    if let Some(headers) = message.headers() {
        adopt(&span, carrier::extract(&KafkaExtractor(headers)));
    }
    span
}
// ANCHOR_END: kafka

/// The AMQP header that carries the shop's correlation id. Not the `correlation_id`
/// property: that one pairs a reply with its request (see the RabbitMQ chapter).
pub const AMQP_CORRELATION_HEADER: &str = "x-correlation-id";

// ANCHOR: amqp
/// Publishes to `queue` through the default exchange, confirmed, inside a
/// `producer` span whose context rides in the message's `headers` property
/// (unless `propagate` is false, as with a sender nobody instrumented).
pub async fn publish_amqp(
    service: &'static str,
    channel: &Channel,
    (queue, payload): (&str, &[u8]),
    correlation_id: &str,
    propagate: bool,
) -> Result<(), rabbitmq_queues::publish::PublishError> {
    let span = info_span!(
        "amqp.publish",
        otel.name = format!("{queue} publish"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        shop.service = service,
    );
    let mut headers = FieldTable::default();
    if propagate {
        carrier::inject_amqp(&span.context(), &mut headers);
    }
    let id = AMQPValue::LongString(LongString::from(correlation_id));
    headers.insert(AMQP_CORRELATION_HEADER.into(), id);
    let properties: BasicProperties =
        rabbitmq_queues::publish::persistent().with_headers(headers);
    rabbitmq_queues::publish::publish_confirmed(
        channel, "", queue, payload, properties,
    )
    .instrument(span)
    .await
}

/// The `consumer` span for one delivery, child of its producer's span.
pub fn amqp_consumer_span(
    service: &'static str,
    queue: &str,
    properties: &BasicProperties,
) -> Span {
    let span = info_span!(
        "amqp.process",
        otel.name = format!("{queue} process"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        shop.service = service,
    );
    if let Some(headers) = properties.headers() {
        adopt(&span, carrier::extract(&AmqpExtractor(headers)));
    }
    span
}
// ANCHOR_END: amqp

/// The shop's correlation id from an AMQP message's headers, if it has one.
pub fn amqp_correlation_id(properties: &BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    AmqpExtractor(headers).get(AMQP_CORRELATION_HEADER).map(str::to_owned)
}

/// Runs two interceptors in turn (e.g. the gRPC chapter's correlation id, then the trace).
#[derive(Clone, Debug)]
pub struct Both<A, B>(pub A, pub B);

impl<A: Interceptor, B: Interceptor> Interceptor for Both<A, B> {
    fn call(&mut self, request: GrpcRequest<()>) -> Result<GrpcRequest<()>, Status> {
        self.1.call(self.0.call(request)?)
    }
}
