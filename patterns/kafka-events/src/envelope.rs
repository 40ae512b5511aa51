//! The event envelope: a JSON payload, keyed by order id, with its metadata in Kafka headers.
//!
//! Metadata lives in headers so that routing, tracing and dead-lettering never need to parse the
//! payload, and so that a consumer can decide how to decode the payload (by type and schema
//! version) before touching it.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Header names. Kafka header keys are strings; values are bytes (UTF-8 here).
pub mod header {
    /// Fresh per event and kept on redelivery: what a consumer spots duplicates by.
    pub const EVENT_ID: &str = "event-id";
    /// Read first: it decides which payload to decode, and an unknown type is
    /// dead-lettered without parsing the payload.
    pub const EVENT_TYPE: &str = "event-type";
    /// The payload's version: a reader decodes the versions it knows and
    /// dead-letters the rest, never guessing at a newer one.
    pub const SCHEMA_VERSION: &str = "schema-version";
    /// When the fact happened at the producer (RFC 3339, UTC), not when it was
    /// published or read.
    pub const OCCURRED_AT: &str = "occurred-at";
    /// Carried over from the request that caused the event, so the logs of every
    /// service it passes through can be joined.
    pub const CORRELATION_ID: &str = "correlation-id";
    /// Added to a dead-lettered event: why it could not be processed.
    pub const DLQ_ERROR: &str = "dlq-error";
    /// Added to a dead-lettered event: where it came from (`topic/partition/offset`).
    pub const DLQ_ORIGIN: &str = "dlq-origin";
}

/// The `event-type` of an [`OrderPlaced`]; [`decode`] dead-letters any other type.
pub const ORDER_PLACED: &str = "OrderPlaced";

// ANCHOR: OrderPlaced
/// Version 2 of `OrderPlaced`, the one producers write today. Version 1 had no
/// `currency`; a v2 reader fills it in with the default, and a v1 reader ignores it
/// (see the tests).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderPlaced {
    /// Also the message key, so one order's events keep their order.
    pub order_id: String,
    /// Whose totals the idempotent consumer adds the order to.
    pub customer_id: String,
    /// Whole cents, so sums never round.
    pub total_cents: u64,
    /// New in v2. Absent in v1 events, which were all in euros.
    #[serde(default = "euro")]
    pub currency: String,
}

fn euro() -> String {
    "EUR".to_owned()
}

/// The first version, as an old consumer still has it. Unknown fields (v2's
/// currency) are skipped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderPlacedV1 {
    /// As in v2.
    pub order_id: String,
    /// As in v2.
    pub customer_id: String,
    /// As in v2, always in euros.
    pub total_cents: u64,
}
// ANCHOR_END: OrderPlaced

/// The metadata of an event, carried in headers.
#[derive(Clone, Debug, PartialEq)]
pub struct Metadata {
    /// New for each event ([`Metadata::order_placed`]) and the same on every
    /// redelivery: the idempotent consumer's key.
    pub event_id: Uuid,
    /// Which payload to expect; [`ORDER_PLACED`] is the only one this crate reads.
    pub event_type: String,
    /// The payload's version; [`decode`] reads 1 and 2 and refuses the rest.
    pub schema_version: u32,
    /// RFC 3339, UTC.
    pub occurred_at: String,
    /// From the request that caused the event; see [`header::CORRELATION_ID`].
    pub correlation_id: String,
}

/// A decoded event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Read from the headers, before the payload.
    pub metadata: Metadata,
    /// The payload, read as v2 whatever its version: a v1 payload gets `EUR`.
    pub order: OrderPlaced,
}

/// Why a message could not be decoded: it goes to the dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// A required header is absent or not UTF-8; holds its name.
    #[error("header {0} is missing or not UTF-8")]
    MissingHeader(&'static str),
    /// A header is there but cannot be parsed (a version that is not a number,
    /// an event id that is not a UUID).
    #[error("header {name} has a bad value: {value:?}")]
    BadHeader {
        /// Which header.
        name: &'static str,
        /// What it held, so the dead-letter reason shows the bad value.
        value: String,
    },
    /// An `event-type` this reader does not decode; holds it.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// A schema version this reader does not know, such as one from a newer
    /// producer: refused rather than misread.
    #[error("unsupported schema version {0}")]
    UnsupportedVersion(u32),
    /// The payload is not JSON of an `OrderPlaced`; holds serde's message.
    #[error("payload is not a valid OrderPlaced: {0}")]
    BadPayload(String),
}

impl Metadata {
    /// Metadata for a new `OrderPlaced` (schema v2) event.
    pub fn order_placed(correlation_id: &str, occurred_at: &str) -> Self {
        Metadata {
            event_id: Uuid::new_v4(),
            event_type: ORDER_PLACED.to_owned(),
            schema_version: 2,
            occurred_at: occurred_at.to_owned(),
            correlation_id: correlation_id.to_owned(),
        }
    }

    /// The headers [`decode`] reads back, one per field, values as UTF-8 text.
    pub fn to_headers(&self) -> OwnedHeaders {
        let version = self.schema_version.to_string();
        let event_id = self.event_id.to_string();
        [
            (header::EVENT_ID, event_id.as_str()),
            (header::EVENT_TYPE, self.event_type.as_str()),
            (header::SCHEMA_VERSION, version.as_str()),
            (header::OCCURRED_AT, self.occurred_at.as_str()),
            (header::CORRELATION_ID, self.correlation_id.as_str()),
        ]
        .into_iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header { key, value: Some(value) })
        })
    }
}

/// The value of header `name`, as UTF-8.
pub fn header_str<'a, M: Message>(
    message: &'a M,
    name: &'static str,
) -> Option<&'a str>
where
    M::Headers: 'a,
{
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)?
        .value
        .and_then(|v| std::str::from_utf8(v).ok())
}

// ANCHOR: decode
/// Decodes a message: headers first (type and version decide how to read the
/// payload), then the payload. Every failure is a [`DecodeError`]; nothing panics on
/// bad input.
pub fn decode<M: Message>(message: &M) -> Result<Event, DecodeError> {
    let required =
        |name| header_str(message, name).ok_or(DecodeError::MissingHeader(name));
    let event_type = required(header::EVENT_TYPE)?;
    if event_type != ORDER_PLACED {
        return Err(DecodeError::UnknownType(event_type.to_owned()));
    }
    let version = required(header::SCHEMA_VERSION)?;
    let schema_version: u32 =
        version.parse().map_err(|_| DecodeError::BadHeader {
            name: header::SCHEMA_VERSION,
            value: version.to_owned(),
        })?;
    if !(1..=2).contains(&schema_version) {
        return Err(DecodeError::UnsupportedVersion(schema_version));
    }
    let id = required(header::EVENT_ID)?;
    let event_id = Uuid::parse_str(id).map_err(|_| DecodeError::BadHeader {
        name: header::EVENT_ID,
        value: id.to_owned(),
    })?;
    let payload = message.payload().unwrap_or_default();
    // Both versions decode into the v2 struct: v1 payloads get the default currency.
    let order: OrderPlaced = serde_json::from_slice(payload)
        .map_err(|e| DecodeError::BadPayload(e.to_string()))?;
    let metadata = Metadata {
        event_id,
        event_type: event_type.to_owned(),
        schema_version,
        occurred_at: required(header::OCCURRED_AT)?.to_owned(),
        correlation_id: required(header::CORRELATION_ID)?.to_owned(),
    };
    Ok(Event { metadata, order })
}
// ANCHOR_END: decode
