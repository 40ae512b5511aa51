//! What the checkout's events look like on Kafka: the Kafka chapter's envelope (JSON payload,
//! metadata in headers), keyed by order id, plus a causation id.
//!
//! - The **correlation id** is the checkout's: every event of one checkout carries the same one,
//!   so a reader (or a log search) can pull one checkout out of four services' logs.
//! - The **causation id** is the id of the event this one reacts to. Correlation says "same
//!   story"; causation says "because of that": with both, the story can be drawn as a tree.
//!
//! The event id and type headers are the outbox relay's (it copies the row's id, which is what
//! makes every copy of an event recognisable to an inbox); this module adds the rest.

use std::time::SystemTime;

use kafka_events::envelope::{DecodeError as EnvelopeError, header, header_str};
use outbox::OutboxEvent;
use rdkafka::message::Message;
use shop_domain::time::{Precision, rfc3339};
use shop_domain::{Event, Kind, Service};
use uuid::Uuid;

/// The header this crate adds to the Kafka chapter's envelope.
pub const CAUSATION_ID: &str = "causation-id";
/// The one schema version of the checkout's events so far.
pub const SCHEMA_VERSION: u32 = 1;

/// Topic names of one shop: each service owns one topic for the events it emits
/// (`<prefix>-inventory`), and one for the messages it could not read
/// (`<prefix>-inventory-dlq`).
#[derive(Clone, Debug)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics named `<prefix>-<service>` and `<prefix>-<service>-dlq`.
    pub fn new(prefix: &str) -> Self {
        Topics { prefix: prefix.to_owned() }
    }

    /// Where `service` publishes.
    pub fn of(&self, service: Service) -> String {
        format!("{}-{}", self.prefix, service.name())
    }

    /// The consumer group `service`'s consumer joins.
    pub fn group(&self, service: Service) -> String {
        format!("{}-group", self.of(service))
    }

    /// Where `service` dead-letters what it cannot read.
    pub fn dead_letters(&self, service: Service) -> String {
        format!("{}-{}-dlq", self.prefix, service.name())
    }

    /// Every topic of the shop.
    pub fn all(&self) -> Vec<String> {
        Service::ALL
            .into_iter()
            .flat_map(|s| [self.of(s), self.dead_letters(s)])
            .collect()
    }
}

/// A decoded message: the event and where it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Incoming {
    /// The outbox row's id: what the inbox deduplicates on.
    pub event_id: Uuid,
    /// The checkout this event belongs to, carried by every event it causes.
    pub correlation_id: String,
    /// `None` for the event that starts a checkout.
    pub causation_id: Option<Uuid>,
    /// The event itself.
    pub event: Event,
    /// The W3C trace context headers it arrived with ([`TRACE_HEADERS`]), as
    /// they came; empty when its producer sent none.
    pub trace: Vec<(String, String)>,
}

/// The headers of the W3C trace context: a process that traces puts the context
/// of the work that emitted an event in them ([`crate::service::Tracing`]).
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Why a message cannot be read: it is dead-lettered with this reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The envelope is wrong (missing or bad header, unknown type or version).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("payload is not a valid {kind}: {error}")]
    /// The headers are fine, but the body does not decode as the type they name.
    BadPayload {
        /// The type the header named.
        kind: &'static str,
        /// Serde's complaint, for the dead-letter reason.
        error: String,
    },
}

// ANCHOR: encode
/// The outbox row for `event`: its own topic (the emitting service's), the
/// order id as key, and the checkout's correlation id with the id of the event
/// that caused it. The id is chosen here, once: every copy the relay ever
/// publishes carries it.
pub fn outbox_event(
    event: &Event,
    topics: &Topics,
    correlation_id: &str,
    causation_id: Option<Uuid>,
) -> Result<OutboxEvent, serde_json::Error> {
    let kind = event.kind();
    let topic = topics.of(kind.source());
    let occurred_at = rfc3339(SystemTime::now(), Precision::Millis);
    let mut row =
        OutboxEvent::new(event.order_id(), topic, kind.as_str(), payload(event)?)
            .header(header::SCHEMA_VERSION, SCHEMA_VERSION.to_string())
            .header(header::OCCURRED_AT, occurred_at)
            .header(header::CORRELATION_ID, correlation_id);
    if let Some(cause) = causation_id {
        row = row.header(CAUSATION_ID, cause.to_string());
    }
    Ok(row)
}
// ANCHOR_END: encode

/// The JSON payload of an event: its data, without the type (that is a header).
pub fn payload(event: &Event) -> Result<Vec<u8>, serde_json::Error> {
    let mut tagged = serde_json::to_value(event)?;
    serde_json::to_vec(&tagged["data"].take())
}

/// Reads a message: the type header first (an unknown type is not worth
/// parsing), then ids, then the payload as that type's data.
pub fn decode<M: Message>(message: &M) -> Result<Incoming, DecodeError> {
    let required =
        |name| header_str(message, name).ok_or(EnvelopeError::MissingHeader(name));
    let type_name = required(header::EVENT_TYPE)?;
    let kind = Kind::parse(type_name)
        .ok_or_else(|| EnvelopeError::UnknownType(type_name.to_owned()))?;
    let version = required(header::SCHEMA_VERSION)?;
    if version != SCHEMA_VERSION.to_string() {
        let version = version.parse().unwrap_or(0);
        return Err(EnvelopeError::UnsupportedVersion(version).into());
    }
    let event_id = uuid_header(message, header::EVENT_ID)?
        .ok_or(EnvelopeError::MissingHeader(header::EVENT_ID))?;
    let correlation_id = required(header::CORRELATION_ID)?.to_owned();
    let causation_id = uuid_header(message, CAUSATION_ID)?;
    let event = event_from(kind, message.payload().unwrap_or_default())?;
    let trace = TRACE_HEADERS
        .into_iter()
        .filter_map(|name| {
            Some((name.to_owned(), header_str(message, name)?.to_owned()))
        })
        .collect();
    Ok(Incoming { event_id, correlation_id, causation_id, event, trace })
}

/// The event of type `kind` whose data is `payload`.
pub fn event_from(kind: Kind, payload: &[u8]) -> Result<Event, DecodeError> {
    let bad = |error: serde_json::Error| DecodeError::BadPayload {
        kind: kind.as_str(),
        error: error.to_string(),
    };
    let data: serde_json::Value = serde_json::from_slice(payload).map_err(bad)?;
    let tagged = serde_json::json!({ "type": kind.as_str(), "data": data });
    serde_json::from_value(tagged).map_err(bad)
}

/// An optional header that, when present, must be a UUID.
fn uuid_header<M: Message>(
    message: &M,
    name: &'static str,
) -> Result<Option<Uuid>, EnvelopeError> {
    match header_str(message, name) {
        None => Ok(None),
        Some(value) => Uuid::parse_str(value)
            .map(Some)
            .map_err(|_| EnvelopeError::BadHeader { name, value: value.to_owned() }),
    }
}

/// The first 8 hex digits of an id: enough to follow one checkout in a log.
pub fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
    use shop_domain::{Line, OrderPlaced};

    use super::*;

    fn message(headers: &[(&str, &str)], payload: &[u8]) -> OwnedMessage {
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header { key, value: Some(*value) })
        });
        OwnedMessage::new(
            Some(payload.to_vec()),
            Some(b"o-1".to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        )
    }

    /// What the relay would publish for this outbox row.
    fn published(row: &OutboxEvent) -> OwnedMessage {
        let id = row.id.to_string();
        let mut headers = vec![
            (header::EVENT_ID, id.as_str()),
            (header::EVENT_TYPE, row.event_type.as_str()),
        ];
        headers.extend(row.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        message(&headers, &row.payload)
    }

    fn placed() -> Event {
        Event::OrderPlaced(OrderPlaced {
            order_id: "o-1".into(),
            customer_id: "c-42".into(),
            lines: vec![Line { sku: "kettle".into(), quantity: 2 }],
            total_cents: 5798,
            ship_to: "NL".into(),
        })
    }

    #[test]
    fn an_event_round_trips_with_its_correlation_and_causation() {
        let topics = Topics::new("shop");
        let cause = Uuid::new_v4();
        for (event, causation) in [
            (placed(), None),
            (Event::StockReserved { order_id: "o-1".into() }, Some(cause)),
        ] {
            let row = outbox_event(&event, &topics, "chk-1", causation).unwrap();
            assert_eq!(row.aggregate_id, "o-1");
            assert_eq!(row.topic, topics.of(event.kind().source()));
            let incoming = decode(&published(&row)).unwrap();
            assert_eq!(incoming.event, event);
            assert_eq!(incoming.event_id, row.id);
            assert_eq!(incoming.correlation_id, "chk-1");
            assert_eq!(incoming.causation_id, causation);
        }
        assert_eq!(topics.of(Service::Inventory), "shop-inventory");
    }

    #[test]
    fn the_trace_context_an_event_was_emitted_in_arrives_with_it_and_nothing_else_does()
     {
        let topics = Topics::new("shop");
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let row = outbox_event(&placed(), &topics, "chk-1", None)
            .unwrap()
            .header("traceparent", parent)
            .header("tracestate", "shop=1")
            .header("baggage", "tenant=7");
        let incoming = decode(&published(&row)).unwrap();
        let expected = [("traceparent", parent), ("tracestate", "shop=1")];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(incoming.trace, expected);
        // An event from a producer that does not trace carries none.
        let untraced = outbox_event(&placed(), &topics, "chk-1", None).unwrap();
        assert!(decode(&published(&untraced)).unwrap().trace.is_empty());
    }

    #[test]
    fn unknown_types_bad_payloads_and_missing_ids_are_refused_with_a_reason() {
        let id = Uuid::new_v4().to_string();
        let base = [
            (header::EVENT_ID, id.as_str()),
            (header::SCHEMA_VERSION, "1"),
            (header::CORRELATION_ID, "chk-1"),
        ];
        let with = |kind: &str, payload: &[u8]| {
            let mut headers = base.to_vec();
            headers.push((header::EVENT_TYPE, kind));
            decode(&message(&headers, payload)).unwrap_err()
        };
        let unknown = with("OrderTeleported", b"{}");
        assert_eq!(unknown.to_string(), "unknown event type \"OrderTeleported\"");
        let bad = with("StockReserved", b"{\"order\": 1}");
        assert!(bad.to_string().starts_with("payload is not a valid StockReserved"));
        let no_id =
            decode(&message(&[(header::EVENT_TYPE, "StockReserved")], b"{}"));
        assert!(matches!(no_id, Err(DecodeError::Envelope(_))));
    }
}
