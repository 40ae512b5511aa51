//! `cargo run --example shop [-- --serve | --kill ROLE | --chaos [SEED]]`
//!
//! The whole shop as separate processes: the gateway, the saga service, and inventory, payments,
//! shipping and orders, each its own OS process started from this one program (`shop role
//! <name>`). It waits for each one's `/readyz`, places a batch of checkouts through the gateway
//! with real tokens, follows each to its end, and checks stock and money in every service's own
//! records. Needs PostgreSQL and RabbitMQ, or a Kafka-API broker with `--style choreography`
//! (`cargo xtask brokers up` starts them all).
//!
//! - `--serve`: keep the shop up on its documented ports and print what to try.
//! - `--kill ROLE`: SIGKILL that service while checkouts are in flight; it is started again.
//! - `--chaos [SEED]`: SIGKILL every service in turn, in a seeded order at seeded moments.

fn main() -> std::process::ExitCode {
    shop::main()
}
