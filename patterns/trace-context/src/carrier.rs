//! Where a trace context rides on each transport, and the W3C propagator that writes and reads it.
//!
//! OpenTelemetry splits propagation in two: a *propagator* knows the format (W3C Trace Context:
//! a `traceparent` header such as `00-<trace id>-<parent span id>-01`, and `tracestate` for
//! vendors), and a *carrier* knows where strings go on one transport. The propagator comes from
//! the `opentelemetry_sdk` crate; the carriers for HTTP headers come from `opentelemetry-http`
//! (axum and reqwest both use the `http` crate's `HeaderMap`). For tonic metadata, Kafka record
//! headers and AMQP message properties no maintained crate exists for these versions, so they are
//! written here: each is a few lines, and each is tested against the transport's own types.
//!
//! Every carrier is lenient on the way in: a value that is not text, a key in capitals, or no
//! header at all yields an empty context, and the receiving span then starts a new trace instead
//! of failing the message. Losing a trace link is a visibility problem; losing an order is not.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};

/// Writes `context` into `carrier` as `traceparent` (and `tracestate` when set).
pub fn inject(context: &Context, carrier: &mut dyn Injector) {
    TraceContextPropagator::new().inject_context(context, carrier);
}

/// Reads a context from `carrier`; an empty context when there is none or it is malformed.
pub fn extract(carrier: &dyn Extractor) -> Context {
    TraceContextPropagator::new().extract(carrier)
}

/// HTTP (axum on the way in, reqwest on the way out): `opentelemetry-http`'s carriers.
pub mod http_headers {
    use super::*;

    /// Adds the trace context to outgoing HTTP headers.
    pub fn inject(context: &Context, headers: &mut http::HeaderMap) {
        super::inject(context, &mut HeaderInjector(headers));
    }

    /// The trace context of an incoming HTTP request.
    pub fn extract(headers: &http::HeaderMap) -> Context {
        super::extract(&HeaderExtractor(headers))
    }
}

// ANCHOR: MetadataCarrier
/// gRPC: tonic keeps metadata in its own `MetadataMap` (ASCII and binary values),
/// so `opentelemetry-http`'s carriers do not apply. Trace context is ASCII.
pub struct MetadataCarrier<'a>(pub &'a mut MetadataMap);

impl Injector for MetadataCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        // Keys from the propagator are lower-case ASCII; skip anything else.
        let key = MetadataKey::from_bytes(key.as_bytes());
        if let (Ok(key), Ok(value)) = (key, MetadataValue::try_from(value)) {
            self.0.insert(key, value);
        }
    }
}

/// Reading needs no `&mut`: the server side only looks.
pub struct MetadataExtractor<'a>(pub &'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|entry| match entry {
                KeyAndValueRef::Ascii(key, _) => Some(key.as_str()),
                KeyAndValueRef::Binary(..) => None,
            })
            .collect()
    }
}
// ANCHOR_END: MetadataCarrier

// ANCHOR: kafka_carrier
/// Kafka: record headers are (string key, byte value) pairs. The context goes in
/// as UTF-8, next to the envelope's own headers.
pub fn inject_kafka(context: &Context, headers: OwnedHeaders) -> OwnedHeaders {
    let mut fields = Pairs::default();
    inject(context, &mut fields);
    fields.0.iter().fold(headers, |headers, (key, value)| {
        headers.insert(Header { key, value: Some(value) })
    })
}

/// Reads the context from any record's headers (owned, or borrowed from a
/// consumed message). The first header of a name wins, as in the envelope.
pub struct KafkaExtractor<'a, H: Headers>(pub &'a H);

impl<H: Headers> Extractor for KafkaExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        let header = self.0.iter().find(|h| h.key == key)?;
        std::str::from_utf8(header.value?).ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}
// ANCHOR_END: kafka_carrier

/// The propagator's (key, value) pairs, gathered before they go into a record.
#[derive(Default)]
struct Pairs(Vec<(String, String)>);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

// ANCHOR: amqp_carrier
/// AMQP: the `headers` property is a table of typed values. We write long strings,
/// which every client reads as text.
pub fn inject_amqp(context: &Context, headers: &mut FieldTable) {
    let mut fields = Pairs::default();
    inject(context, &mut fields);
    for (key, value) in fields.0 {
        let value = AMQPValue::LongString(LongString::from(value));
        headers.insert(ShortString::from(key), value);
    }
}

/// Other senders may put text in a long string, a short string or a byte array
/// (what clients write when handed bytes): all three are read, as UTF-8.
pub struct AmqpExtractor<'a>(pub &'a FieldTable);

impl Extractor for AmqpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let bytes = match self.0.inner().get(key)? {
            AMQPValue::LongString(text) => text.as_bytes(),
            AMQPValue::ShortString(text) => text.as_str().as_bytes(),
            AMQPValue::ByteArray(bytes) => bytes.as_slice(),
            _ => return None,
        };
        std::str::from_utf8(bytes).ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }
}
// ANCHOR_END: amqp_carrier

#[cfg(test)]
mod tests {
    use lapin::types::ByteArray;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use rdkafka::message::{Message, OwnedMessage, Timestamp};

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn remote() -> Context {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("shop", "eu")]).unwrap(),
        );
        Context::new().with_remote_span_context(span)
    }

    fn same_span(extracted: &Context) {
        let got = extracted.span().span_context().clone();
        let want = remote().span().span_context().clone();
        assert!(got.is_valid() && got.is_remote());
        assert_eq!(got.trace_id(), want.trace_id());
        assert_eq!(got.span_id(), want.span_id());
        assert_eq!(got.trace_flags(), want.trace_flags());
        assert_eq!(got.trace_state().header(), "shop=eu");
    }

    #[test]
    fn http_headers_round_trip_in_the_w3c_format() {
        let mut headers = http::HeaderMap::new();
        http_headers::inject(&remote(), &mut headers);
        assert_eq!(headers["traceparent"], PARENT);
        assert_eq!(headers["tracestate"], "shop=eu");
        same_span(&http_headers::extract(&headers));
    }

    #[test]
    fn tonic_metadata_round_trips() {
        let mut metadata = MetadataMap::new();
        inject(&remote(), &mut MetadataCarrier(&mut metadata));
        assert_eq!(metadata.get("traceparent").unwrap(), PARENT);
        // What the server sees is the HTTP/2 headers tonic sends.
        let headers = metadata.clone().into_headers();
        assert_eq!(headers["traceparent"], PARENT);
        same_span(&extract(&MetadataExtractor(&metadata)));
    }

    #[test]
    fn kafka_headers_round_trip_beside_the_envelope() {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "correlation-id", value: Some("checkout-1") });
        let headers = inject_kafka(&remote(), headers);
        assert_eq!(headers.count(), 3);
        // Read back from a message, the way a consumer sees it.
        let message = OwnedMessage::new(
            None,
            None,
            "orders".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        );
        let headers = message.headers().unwrap();
        same_span(&extract(&KafkaExtractor(headers)));
        assert!(KafkaExtractor(headers).keys().contains(&"correlation-id"));
    }

    #[test]
    fn amqp_headers_are_read_as_long_strings_short_strings_or_byte_arrays() {
        let mut table = FieldTable::default();
        inject_amqp(&remote(), &mut table);
        assert!(matches!(
            table.inner().get("traceparent"),
            Some(AMQPValue::LongString(_))
        ));
        same_span(&extract(&AmqpExtractor(&table)));

        for value in [
            AMQPValue::ByteArray(ByteArray::from(PARENT.as_bytes())),
            AMQPValue::ShortString(ShortString::from(PARENT)),
        ] {
            let mut table = FieldTable::default();
            table.insert("traceparent".into(), value);
            table.insert(
                "tracestate".into(),
                AMQPValue::LongString("shop=eu".into()),
            );
            same_span(&extract(&AmqpExtractor(&table)));
        }
    }

    #[test]
    fn a_missing_or_malformed_context_starts_a_new_trace_instead_of_failing() {
        let mut table = FieldTable::default();
        assert!(!extract(&AmqpExtractor(&table)).span().span_context().is_valid());
        table.insert("traceparent".into(), AMQPValue::LongInt(7));
        assert!(!extract(&AmqpExtractor(&table)).span().span_context().is_valid());
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-not-a-trace-01".parse().unwrap());
        let context = http_headers::extract(&headers);
        assert!(!context.span().span_context().is_valid());
    }
}
