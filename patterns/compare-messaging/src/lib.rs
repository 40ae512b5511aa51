//! Comparing brokers, measured: the home of
//! `cargo run --release --example messaging_bench`.
//!
//! The benchmark lives in a crate of its own so that the request/response benchmark
//! (`cargo run --release --example protocol_bench`, crate `compare`) compiles no
//! Kafka or AMQP client. Its percentiles come from [`compare::stats`], the same code
//! the protocol benchmark uses; the broker clients are the ones the Kafka and
//! RabbitMQ chapters build (`kafka-events`, `rabbitmq-queues`).

#![warn(missing_docs)]

pub use compare::stats;
