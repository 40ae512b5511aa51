//! One trace across HTTP, gRPC, Kafka and AMQP: W3C trace context with OpenTelemetry.
//!
//! A correlation id (the other chapters' `x-correlation-id`) is one string copied from hop to
//! hop: it lets you grep every service's logs for one request, and says nothing about who called
//! whom, when, or for how long. A trace is a tree of spans: every span has the trace id, its own
//! span id and its parent's span id, so a backend can draw the request's path and timings. Both
//! cross process boundaries the same way, in headers; this crate carries the trace context in the
//! standard W3C `traceparent` header on all four transports.
//!
//! - [`carrier`]: where the context rides on each transport (HTTP headers, tonic metadata, Kafka
//!   record headers, AMQP message properties) and the W3C propagator that reads and writes it.
//! - [`hops`]: the span on each side of a hop, with the context carried across.
//! - [`setup`]: `tracing` spans become OpenTelemetry spans; export in memory or over OTLP.
//! - [`checkout`]: five services, one request through all four transports.
//! - [`report`]: the finished spans checked to be one tree, and drawn as a tree and a mermaid
//!   sequence diagram.
//!
//! Use tracing when a request crosses services and you need to see where its time goes or
//! where it failed. It is not free: every span is work on the request's path (measured in the
//! chapter), which is why production systems sample. It does not replace a business id: traces
//! are sampled and expire, orders are not.

#![warn(missing_docs)]

pub mod carrier;
pub mod checkout;
pub mod hops;
pub mod report;
pub mod setup;
