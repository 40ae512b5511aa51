//! Where the shop's infrastructure lives, and what a test does when it is not there.
//!
//! Every example and test reads broker addresses through this crate, so there is exactly one place
//! that knows the environment variables and their local defaults (the ports `cargo xtask brokers up`
//! and `docker-compose.yml` use). It has no dependencies on purpose: a chapter that needs no broker
//! pays nothing for it. What examples share (logging and flags) sits behind the `examples` feature;
//! the PostgreSQL pool builder is a crate of its own (`pg-pool`), since a feature of this crate
//! would be switched on for every example in the workspace.
//!
//! The rule for tests that need a broker lives here too ([`unavailable`]): when the broker does not
//! answer, a test prints why and skips, unless `REQUIRE_BROKERS=1` is set (as `cargo xtask test` and CI
//! do), in which case the test fails. A skipped test is a visible gap; a failed one is a broken build.

#![warn(missing_docs)]

use std::env;
use std::fmt::Display;

pub mod committed;
#[cfg(feature = "examples")]
pub mod example;
pub mod schemathesis;

/// Kafka bootstrap servers: `KAFKA_BROKERS`, default `127.0.0.1:9092`.
pub fn kafka_brokers() -> String {
    env_or("KAFKA_BROKERS", "127.0.0.1:9092")
}

/// The first of the `KAFKA_BROKERS` addresses, `host:port`: where a plain connection check goes.
pub fn first_kafka_broker() -> String {
    kafka_brokers().split(',').next().unwrap_or_default().trim().to_owned()
}

/// RabbitMQ URI: `AMQP_ADDR`, default `amqp://guest:guest@127.0.0.1:5672/%2f` (the default vhost).
pub fn amqp_addr() -> String {
    env_or("AMQP_ADDR", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// PostgreSQL connection string: `DATABASE_URL`, default the `shop` database on 127.0.0.1:5432.
pub fn database_url() -> String {
    env_or("DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/shop")
}

/// Whether this run insists on real brokers (`REQUIRE_BROKERS` set to anything but `0` or empty).
pub fn brokers_required() -> bool {
    env::var("REQUIRE_BROKERS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Decides what a test does when `broker` could not be reached: panics with `error` and a hint when
/// brokers are required, otherwise prints why the test skips. Call it and `return` from the test.
///
/// ```no_run
/// # async fn connect() -> Result<(), String> { Ok(()) }
/// # async fn test() {
/// let conn = match connect().await {
///     Ok(conn) => conn,
///     Err(e) => return infra::unavailable("RabbitMQ", &infra::amqp_addr(), e),
/// };
/// # }
/// ```
#[track_caller]
pub fn unavailable(broker: &str, addr: &str, error: impl Display) {
    if brokers_required() {
        panic!(
            "{broker} is required (REQUIRE_BROKERS=1) but did not answer at {addr}: {error}\n\
             start it with `cargo xtask brokers up` (or `docker compose up -d --wait`)"
        );
    }
    // libtest captures `eprintln!` and shows it only for failing tests, which would hide the
    // skip. Writing to the stderr handle directly is not captured, so the reason always shows.
    let line = format!(
        "SKIPPED: {broker} did not answer at {addr} ({error}); \
         run `cargo xtask brokers up` to run this test, or `cargo xtask test` to require it\n"
    );
    // A skip nobody can see is the failure this function exists to prevent.
    if let Err(e) =
        std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes())
    {
        panic!("cannot print why this test skips ({e}): {line}");
    }
}

fn env_or(key: &str, default: &str) -> String {
    match env::var(key) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => default.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// Runs this very test again in a child test process (where libtest captures output, as
    /// in any `cargo test`) and checks that the skip line still reaches its stderr.
    #[test]
    fn a_skip_is_printed_even_when_libtest_captures_output() {
        const CHILD: &str = "INFRA_SKIP_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            super::unavailable("Kafka", "127.0.0.1:1", "connection refused");
            return;
        }
        let name = "tests::a_skip_is_printed_even_when_libtest_captures_output";
        let out = Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact"])
            .env(CHILD, "1")
            .env_remove("REQUIRE_BROKERS")
            .output()
            .unwrap();
        assert!(out.status.success(), "the child test failed: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("SKIPPED: Kafka did not answer at 127.0.0.1:1"),
            "the skip reason must be visible under capture; stderr was {stderr:?}"
        );
    }
}
