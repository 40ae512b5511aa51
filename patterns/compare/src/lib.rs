//! Comparing protocols, measured: the tools behind `cargo run --release --example protocol_bench`
//! (request/response). The brokers' benchmark lives in the `compare-messaging` crate, so that
//! this one compiles no Kafka or AMQP client.
//!
//! Latency figures only mean something next to a baseline taken on the same machine in the same
//! run: this crate's baseline is a raw TCP echo ([`echo`]), the least work a request/response
//! round trip over loopback can do. Each protocol is then reported as a ratio to it, which says how
//! much the protocol's framing, encoding and routing cost, independently of how fast the machine is.

pub mod echo;
pub mod stats;
