//! The service process and its handle.
//!
//! The Restate server does not run your code: it calls it. A *deployment* is an HTTP/2 endpoint
//! that serves the workflow; the server invokes a handler over one long request whose body
//! streams the journal both ways. [`serve`] is that endpoint. [`ServiceProcess`] starts it as a
//! separate OS process, reads its log, kills it with SIGKILL and starts it again on the same port:
//! what the example's `--kill-worker` and the crash matrix do to it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use orchestration::participant::Names;
use restate_sdk::filter::ReplayAwareFilter;
use restate_sdk::prelude::{Endpoint, HttpServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::info;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Filter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::faults::{Crash, Pausing};
use crate::participants::{Databases, Participants};
use crate::workflow::Checkout;

/// What the service process logs once it accepts calls, followed by its
/// address: how its parent learns the port it got.
pub const LISTENING: &str = "service endpoint listening on ";

/// How the service process is configured: its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The shop whose participants' schemas the steps write to.
    pub prefix: String,
    /// The port to listen on, on 127.0.0.1; 0 takes any free one.
    pub port: u16,
    /// A crash to stop at, if any.
    pub crash: Option<Crash>,
    /// How long a step up to the pivot may go unanswered, in milliseconds.
    pub patience_ms: u64,
}

impl Options {
    /// The options as arguments: `--prefix P --port N --patience-ms N
    /// [--crash before:1]`.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--prefix".to_owned(),
            self.prefix.clone(),
            "--port".to_owned(),
            self.port.to_string(),
            "--patience-ms".to_owned(),
            self.patience_ms.to_string(),
        ];
        if let Some(crash) = self.crash {
            args.extend(["--crash".to_owned(), crash.to_arg()]);
        }
        args
    }

    /// Reads [`Options::to_args`]'s form; an unknown or malformed argument
    /// is an error that names it.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            prefix: String::new(),
            port: 0,
            crash: None,
            patience_ms: 30_000,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value =
                args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: String| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--prefix" => options.prefix = value.clone(),
                "--port" => {
                    options.port = value.parse().map_err(|e| bad(format!("{e}")))?
                }
                "--patience-ms" => {
                    options.patience_ms =
                        value.parse().map_err(|e| bad(format!("{e}")))?
                }
                "--crash" => {
                    let plan = Crash::parse(value)
                        .ok_or_else(|| bad("not a plan".into()))?;
                    options.crash = Some(plan);
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if options.prefix.is_empty() {
            return Err("--prefix is required: it names the shop's schemas".into());
        }
        Ok(options)
    }
}

/// Why the service process could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The port could not be bound (taken, or not allowed).
    #[error("cannot listen on 127.0.0.1:{0}: {1}")]
    Bind(u16, std::io::Error),
    /// The participants' pools could not be built (the URL does not parse).
    #[error(transparent)]
    Pool(#[from] orchestration::PoolSetupError),
    /// The termination signal handler could not be installed.
    #[error("installing the SIGTERM handler: {0}")]
    Signal(std::io::Error),
}

/// Logs to stdout, one line per event (the time since start, the level, the
/// message and its fields; not the SDK's span around every handler call), and
/// hides what the workflow logs while the SDK replays its journal: a resumed
/// workflow narrates only what it does anew. The participants' lines always
/// show: an effect that runs again after a crash is news, replay or not.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(Plain { start: std::time::Instant::now() })
                .with_ansi(false)
                .with_filter(filter)
                .with_filter(HideReplayedWorkflow),
        )
        .init();
}

/// The SDK's replay-aware filter, applied to the workflow's own events only.
/// It learns whether a handler replays from the SDK's span, so every span
/// callback goes to it too.
struct HideReplayedWorkflow;

type Cx<'a, S> = tracing_subscriber::layer::Context<'a, S>;

impl<S> Filter<S> for HideReplayedWorkflow
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn enabled(&self, meta: &tracing::Metadata<'_>, cx: &Cx<'_, S>) -> bool {
        Filter::<S>::enabled(&ReplayAwareFilter, meta, cx)
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, cx: &Cx<'_, S>) -> bool {
        let workflow = concat!(env!("CARGO_CRATE_NAME"), "::workflow");
        event.metadata().target() != workflow
            || Filter::<S>::event_enabled(&ReplayAwareFilter, event, cx)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        cx: Cx<'_, S>,
    ) {
        Filter::<S>::on_new_span(&ReplayAwareFilter, attrs, id, cx)
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        cx: Cx<'_, S>,
    ) {
        Filter::<S>::on_record(&ReplayAwareFilter, id, values, cx)
    }
}

/// The time since start, the level, the message and its fields.
struct Plain {
    start: std::time::Instant,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Plain
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let since = self.start.elapsed();
        let level = event.metadata().level();
        write!(
            writer,
            "{:4}.{:09}s {level:>5} ",
            since.as_secs(),
            since.subsec_nanos()
        )?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

// ANCHOR: serve
/// Serves the `Checkout` workflow on 127.0.0.1 until SIGTERM or Ctrl-C, its
/// steps applying at the participants of the shop `options.prefix`.
pub async fn serve(database_url: &str, options: &Options) -> Result<(), ServeError> {
    let names = Names::new(&options.prefix);
    let databases = Databases::new(database_url, names)?;
    let participants: Arc<dyn Participants> = match options.crash {
        Some(crash) => Arc::new(Pausing::new(databases, crash)),
        None => Arc::new(databases),
    };
    let patience = Duration::from_millis(options.patience_ms);
    let endpoint =
        Endpoint::builder().bind(Checkout::new(participants, patience)).build();
    let listener = TcpListener::bind(("127.0.0.1", options.port))
        .await
        .map_err(|e| ServeError::Bind(options.port, e))?;
    let addr =
        listener.local_addr().map_err(|e| ServeError::Bind(options.port, e))?;
    info!("{LISTENING}{addr} (pid {})", std::process::id());
    let stop = stop_signal()?;
    HttpServer::new(endpoint).serve_with_cancel(listener, stop).await;
    Ok(())
}
// ANCHOR_END: serve

/// Resolves at SIGTERM or SIGINT, whichever comes first.
fn stop_signal() -> Result<impl Future<Output = ()>, ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: finishing the calls in flight"),
            _ = int.recv() => info!("interrupted: finishing the calls in flight"),
        }
    })
}

/// Why a service process could not be started, watched or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started.
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    /// Waiting for it, or signalling it, failed.
    #[error("service process: {0}")]
    Io(#[from] std::io::Error),
    /// It exited (or closed its output) before saying what was awaited.
    #[error("the service process ended before it logged {0:?}")]
    Ended(String),
    /// It did not log what was awaited in time.
    #[error("the service process did not log {0:?} within {1:?}")]
    Silent(String, Duration),
    /// Its listening line did not carry an address.
    #[error("unreadable listening line: {0}")]
    Address(String),
    /// It stopped on SIGTERM with a failure status.
    #[error("the service process exited with {0}")]
    Failed(std::process::ExitStatus),
}

/// How to start the service process: which program, with what in front of
/// the options (an example that re-executes itself passes `--serve`).
#[derive(Clone, Debug)]
pub struct Launch {
    /// The program: the crate's `restate-checkout-service`, or the example.
    pub program: PathBuf,
    /// Arguments before the options.
    pub leading: Vec<String>,
    /// The options.
    pub options: Options,
    /// Whether to copy its log lines to this process's stdout (`[service]`
    /// in front); tests leave it off, examples narrate with it.
    pub echo: bool,
    /// Whether it logs warnings only (and the line that says where it
    /// listens): a benchmark's per-step lines would cost more than what it
    /// measures.
    pub quiet: bool,
}

/// `RUST_LOG` for a quiet service process: warnings, and [`LISTENING`].
const QUIET: &str = concat!("warn,", env!("CARGO_CRATE_NAME"), "::service=info");

/// A running service process, started with [`ServiceProcess::start`].
pub struct ServiceProcess {
    child: Child,
    launch: Launch,
    lines: mpsc::UnboundedReceiver<String>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServiceProcess {
    /// Starts the process and waits (at most 30 s) until it listens.
    pub async fn start(launch: &Launch) -> Result<Self, ProcessError> {
        let program = launch.program.display().to_string();
        let mut child = Command::new(&launch.program)
            .args(&launch.leading)
            .args(launch.options.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .envs(launch.quiet.then_some(("RUST_LOG", QUIET)))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ProcessError::Spawn(program, e))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| ProcessError::Ended(LISTENING.into()))?;
        let (tx, lines) = mpsc::unbounded_channel();
        let echo = launch.echo;
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            // Ends when the process closes its stdout: when it dies.
            while let Ok(Some(line)) = reader.next_line().await {
                if echo {
                    println!("[service] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = ServiceProcess {
            child,
            launch: launch.clone(),
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = process.wait_for(LISTENING, Duration::from_secs(30)).await?;
        let addr = line
            .split(LISTENING)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| ProcessError::Address(line.clone()))?;
        process.addr = addr;
        Ok(process)
    }

    /// The URI to register with the server.
    pub fn uri(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits (at most `limit`) for a log line that contains `needle`.
    pub async fn wait_for(
        &mut self,
        needle: &str,
        limit: Duration,
    ) -> Result<String, ProcessError> {
        let waiting = async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return Ok(line);
                }
            }
            Err(ProcessError::Ended(needle.to_owned()))
        };
        match tokio::time::timeout(limit, waiting).await {
            Ok(found) => found,
            Err(_) => Err(ProcessError::Silent(needle.to_owned(), limit)),
        }
    }

    // ANCHOR: kill
    /// Sends SIGKILL and waits for the process to be gone: no handler runs,
    /// no connection is closed politely, nothing is flushed.
    pub async fn kill(&mut self) -> Result<(), ProcessError> {
        self.child.kill().await?;
        Ok(())
    }

    /// Starts the same service again on the same port (the address the
    /// server knows), without the crash plan.
    pub async fn restart(&mut self) -> Result<(), ProcessError> {
        let mut launch = self.launch.clone();
        launch.options.port = self.addr.port();
        launch.options.crash = None;
        *self = ServiceProcess::start(&launch).await?;
        Ok(())
    }
    // ANCHOR_END: kill

    /// Sends SIGTERM and waits (at most 15 s) for a clean exit.
    pub async fn stop(mut self) -> Result<(), ProcessError> {
        if let Some(pid) = self.child.id() {
            let pid = libc::pid_t::try_from(pid)
                .map_err(|e| std::io::Error::other(format!("pid {pid}: {e}")))?;
            // SAFETY: kill(2) with a pid this process spawned and has not
            // reaped yet (`id()` is `None` once it has), so it is ours.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
        let status =
            match tokio::time::timeout(Duration::from_secs(15), self.child.wait())
                .await
            {
                Ok(status) => status?,
                Err(_) => {
                    self.child.kill().await?;
                    return Err(ProcessError::Silent(
                        "a clean exit".into(),
                        Duration::from_secs(15),
                    ));
                }
            };
        if status.success() { Ok(()) } else { Err(ProcessError::Failed(status)) }
    }
}

/// The service process's `main`: reads the options from the command line
/// (after `skip` leading arguments), logs, and serves until told to stop.
pub fn main(skip: usize) -> std::process::ExitCode {
    init_logging();
    let args: Vec<String> = std::env::args().skip(1 + skip).collect();
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("restate-checkout service: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("restate-checkout service: no tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let url = infra::database_url();
    match runtime.block_on(serve(&url, &options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("restate-checkout service: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_and_bad_ones_are_named() {
        let options = Options {
            prefix: "rs1".into(),
            port: 4100,
            crash: Some(Crash::AfterEffect(1)),
            patience_ms: 500,
        };
        assert_eq!(Options::parse(&options.to_args()), Ok(options));
        let args =
            |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Options::parse(&args(&["--prefix", "x", "--port", "http"])),
            Err("--port http: invalid digit found in string".into())
        );
        assert!(Options::parse(&args(&["--port", "1"])).is_err(), "no prefix");
        assert!(
            Options::parse(&args(&["--prefix", "x", "--crash", "at:1"])).is_err()
        );
    }
}
