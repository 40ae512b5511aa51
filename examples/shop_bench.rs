//! `cargo run --release --example shop_bench [-- --checkouts N --concurrency C --chaos SEED]`
//!
//! The whole shop as processes (as `cargo run --example shop` starts it), measured: checkouts per
//! second and end-to-end p50/p99 through the gateway, where a checkout's time goes, and the same
//! again while every service is SIGKILLed once (a seeded order), with the ratio of the two. Ends
//! by checking every promise over all checkouts, for each style. Needs PostgreSQL, RabbitMQ and a
//! Kafka-API broker (`cargo xtask brokers up`).

fn main() -> std::process::ExitCode {
    shop::bench_main()
}
