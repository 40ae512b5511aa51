//! The capstone: the whole shop as separate processes, built from the pattern crates.
//!
//! Every service of the checkout runs as its own OS process, from one binary with a role per
//! process (`shop role inventory`): the gateway (the gateway chapter's token check and rate
//! limit), the saga service (the orchestration chapter's orchestrator and its PostgreSQL log), and
//! the four participants (inventory, payments, shipping, orders) on RabbitMQ, each with its own
//! PostgreSQL schema. A small supervisor starts them, restarts one that dies, kills one on
//! request, and stops them all with SIGTERM.
//!
//! - [`config`]: the roles and what each reads from its environment.
//! - [`probe`]: `/healthz`, `/readyz` and the signal that stops a process.
//! - [`roles`]: one module per kind of process.
//! - [`supervisor`]: the child processes.
//! - [`scenario`]: the batch of checkouts, the client that places them, the promises checked from
//!   each service's own records.
//! - [`metrics`]: what each process exports on `/metrics`.
//! - [`telemetry`]: logs (for people, or JSON with trace ids) and traces across the processes.
//! - [`cli`]: `cargo run --example shop` and its flags.
#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod probe;
pub mod roles;
pub mod scenario;
pub mod shop;
pub mod supervisor;
pub mod telemetry;

/// Runs the `shop` command with this process's arguments: what `main` of the binary and of the
/// example both call. Logs go to stdout, one line per event.
pub fn main() -> std::process::ExitCode {
    run(|args| Box::pin(cli::main(args)))
}

/// Runs the benchmark (`cargo run --release --example shop_bench`).
pub fn bench_main() -> std::process::ExitCode {
    run(|args| Box::pin(bench::main(args)))
}

type Program = fn(
    Vec<String>,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<()>>>,
>;

/// Every program of the package is also every role: the supervisor starts its roles from its
/// own executable, as `<program> role <name>`.
fn run(program: Program) -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let service = match args.as_slice() {
            [role, name] if role == "role" => format!("shop-{name}"),
            _ => "shop".to_owned(),
        };
        // Dropped at the end of this block, inside the runtime: the last spans are flushed.
        let _telemetry = match telemetry::init(&service) {
            Ok(telemetry) => telemetry,
            Err(why) => {
                // No logging yet to say it with.
                eprintln!("{why}");
                return Err(anyhow::anyhow!("cannot set up logging: {why}"));
            }
        };
        match args.as_slice() {
            [role, name] if role == "role" => match config::Role::parse(name) {
                Some(role) => {
                    probe::stop_with_supervisor()?;
                    roles::run(role).await
                }
                None => Err(anyhow::anyhow!("no role {name:?}; {}", cli::ROLES)),
            },
            [setup] if setup == "setup" => cli::setup().await,
            [certs, dir] if certs == "certs" => {
                identity::issue(std::path::Path::new(dir))
            }
            _ => program(args).await,
        }
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
