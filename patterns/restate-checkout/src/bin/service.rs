//! `restate-checkout-service --prefix P [--port N] [--patience-ms N] [--crash before:S|after:S]`
//!
//! The checkout workflow's service process, as the tests start it: it serves `Checkout` on
//! 127.0.0.1 until SIGTERM, and with `--crash` stops at that step boundary to be killed.

fn main() -> std::process::ExitCode {
    restate_checkout::service::main(0)
}
