//! Liveness and readiness, as every process of the shop answers them, and the signal that stops
//! a process.
//!
//! `/healthz` says the process is alive and serving HTTP. `/readyz` says it can do its work now:
//! each role checks what it depends on (its database answers, its queue has its consumer), so a
//! supervisor or a load balancer sends it work only then. A readiness check runs the real check on
//! every probe, so it goes false while a broker is away and true again when it is back.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use deadpool_postgres::Pool;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

/// How long one dependency may take to answer a probe before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A readiness check: `Ok` when ready, or what is not.
pub type Check = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// `/healthz` and `/readyz`, to merge into a role's router.
pub fn routes(ready: Check) -> Router {
    Router::new().route("/healthz", get(|| async { "alive\n" })).route(
        "/readyz",
        get(move || {
            let ready = Arc::clone(&ready);
            async move {
                match ready().await {
                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    ),
                }
            }
        }),
    )
}

/// Binds `addr`, before the service does anything else: a port that is taken ends the process
/// at its start. A service that went on without its port would look ready to a probe that
/// reaches whatever else listens there.
pub async fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} ({e}): is another shop running? set another port")
    })
}

/// Serves `app` on `listener` until `stop` resolves; requests in flight then finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(stop).await?;
    Ok(())
}

/// Tries `attempt` until it succeeds, waiting between tries from 100 ms, doubling up to 5 s, and
/// logging each failure as a failure to reach `what`. `None` when the process is told to stop
/// first, in the middle of an attempt too (an attempt may wait long for a broker that does not
/// answer): a role stopped while it waits for its brokers stops at once, and exits 0.
pub async fn until_connected<T, F, Fut>(what: &str, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Duration::from_millis(100);
    let mut terminated = std::pin::pin!(terminated());
    loop {
        let tried = tokio::select! {
            tried = attempt() => tried,
            () = &mut terminated => return None,
        };
        match tried {
            Ok(connected) => return Some(connected),
            Err(error) => {
                tracing::warn!(
                    "cannot reach {what} ({error:#}); again in {backoff:?}"
                )
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut terminated => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The port of a role that is still connecting to what it needs (its database, its broker):
/// `/healthz` answers alive and `/readyz` answers `503 not ready: starting: ...`, so a probe in
/// that window is told why instead of waiting for its timeout on a port that accepts and never
/// answers; every other request gets a `503` problem with `Retry-After: 1`, which a client
/// retries. [`Starting::done`] stops this stand-in and hands the port back for the role's
/// server.
pub struct Starting {
    kept: std::net::TcpListener,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Starting {
    /// Answers the probes on `listener` until [`Starting::done`]; `what` says what the role is
    /// waiting for.
    pub fn serve(
        listener: TcpListener,
        what: &'static str,
    ) -> anyhow::Result<Starting> {
        // Two handles on one socket: the stand-in accepts on one, the role's server later on
        // the other. A connection that arrives in between waits in the socket's backlog.
        let shared = listener.into_std()?;
        let kept = shared.try_clone()?;
        let ready: Check = Arc::new(move || {
            Box::pin(async move { Err(format!("starting: {what}")) })
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopping = async {
            if stopped.await.is_err() {
                tracing::debug!("the stand-in's stop handle was dropped");
            }
        };
        let stand_in = TcpListener::from_std(shared)?;
        // Any other request (a checkout the gateway forwards, a read) is told to come back, as
        // a `503` problem with `Retry-After`: a `404` would tell a client the route is wrong and
        // not to retry.
        let app = routes(ready).fallback(move || async move {
            let mut answer = crate::roles::intake::try_again(format!(
                "the service is starting ({what}); retry in a moment"
            ));
            answer.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            answer
        });
        let served = tokio::spawn(serve(stand_in, app, stopping));
        Ok(Starting { kept, stop, served })
    }

    /// Stops answering for the role (requests in flight finish, for up to a second: a client
    /// that sent half a request does not hold the role's start) and returns its port.
    pub async fn done(mut self) -> anyhow::Result<TcpListener> {
        if self.stop.send(()).is_err() {
            tracing::warn!("the stand-in server had stopped already");
        }
        match tokio::time::timeout(Duration::from_secs(1), &mut self.served).await {
            Ok(served) => served??,
            Err(_) => {
                tracing::warn!(
                    "a request to the stand-in did not finish in 1 s: dropped"
                );
                self.served.abort();
            }
        }
        self.kept.set_nonblocking(true)?;
        Ok(TcpListener::from_std(self.kept)?)
    }
}

/// Set by the supervisor for the roles it starts: such a role also stops when the supervisor's
/// pipe on its standard input closes. The pipe closes however the supervisor ends, SIGKILL and
/// a Ctrl-C it did not handle included, so no role outlives it; a role started by hand or by a
/// container runtime does not watch its input.
pub const SUPERVISED_VAR: &str = "SHOP_SUPERVISED";

/// Turns true when the supervisor is gone.
static SUPERVISOR_GONE: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(false).0);

/// When [`SUPERVISED_VAR`] says so, watches standard input for its end, on a thread of its own
/// (a blocking read cannot be cancelled, and a runtime's blocking pool would wait for it on the
/// way out); [`terminated`] then resolves as on SIGTERM.
pub fn stop_with_supervisor() -> std::io::Result<()> {
    if std::env::var(SUPERVISED_VAR).as_deref() != Ok("1") {
        return Ok(());
    }
    std::thread::Builder::new().name("supervisor-pipe".into()).spawn(|| {
        use std::io::Read as _;
        let mut input = std::io::stdin();
        let mut buffer = [0u8; 64];
        loop {
            match input.read(&mut buffer) {
                Ok(0) => {
                    tracing::warn!("the supervisor is gone (its pipe closed): stopping");
                    break;
                }
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot read the supervisor's pipe: stopping");
                    break;
                }
            }
        }
        SUPERVISOR_GONE.send_replace(true);
    })?;
    Ok(())
}

async fn supervisor_gone() {
    let mut gone = SUPERVISOR_GONE.subscribe();
    // The sender is a static: it is never dropped, so this only ends when it turns true.
    if gone.wait_for(|gone| *gone).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves on SIGTERM (how a supervisor, `kill` or Kubernetes stops a process), Ctrl-C, or the
/// end of the supervisor's pipe ([`stop_with_supervisor`]).
pub async fn terminated() {
    tokio::select! {
        () = signalled() => {}
        () = supervisor_gone() => {}
    }
}

async fn signalled() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: finishing the work in hand, then stopping"),
                    _ = ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c().await;
}

async fn ctrl_c() {
    match tokio::signal::ctrl_c().await {
        Ok(()) => {
            tracing::info!("Ctrl-C: finishing the work in hand, then stopping")
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

/// Whether PostgreSQL answers a query through `pool` within the probe timeout.
pub async fn pg_answers(pool: &Pool) -> Result<(), String> {
    let ping = async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client.simple_query("SELECT 1").await.map_err(|e| e.to_string())?;
        Ok(())
    };
    match tokio::time::timeout(PROBE_TIMEOUT, ping).await {
        Ok(answer) => answer.map_err(|e: String| format!("PostgreSQL: {e}")),
        Err(_) => Err("PostgreSQL: no answer in 2 s".to_owned()),
    }
}

/// Asks RabbitMQ about queues over a connection of its own, opened again when it broke.
pub struct AmqpProbe {
    amqp: String,
    connection: Mutex<Option<Connection>>,
}

impl AmqpProbe {
    /// A probe for the broker at `amqp`; it connects on first use.
    pub fn new(amqp: String) -> Self {
        AmqpProbe { amqp, connection: Mutex::new(None) }
    }

    /// How many consumers `queue` has now (a passive declare: it creates nothing).
    pub async fn consumers(&self, queue: &str) -> Result<u32, String> {
        match tokio::time::timeout(PROBE_TIMEOUT, self.ask(queue)).await {
            Ok(answer) => answer.map(|(_, consumers)| consumers),
            Err(_) => Err("RabbitMQ: no answer in 2 s".to_owned()),
        }
    }

    /// How many messages `queue` holds now.
    pub async fn messages(&self, queue: &str) -> Result<u32, String> {
        match tokio::time::timeout(PROBE_TIMEOUT, self.ask(queue)).await {
            Ok(answer) => answer.map(|(messages, _)| messages),
            Err(_) => Err("RabbitMQ: no answer in 2 s".to_owned()),
        }
    }

    async fn ask(&self, queue: &str) -> Result<(u32, u32), String> {
        let mut slot = self.connection.lock().await;
        let usable = slot.as_ref().is_some_and(|c| c.status().connected());
        if !usable {
            let connection =
                Connection::connect(&self.amqp, ConnectionProperties::default())
                    .await
                    .map_err(|e| format!("RabbitMQ: {e}"))?;
            *slot = Some(connection);
        }
        let Some(connection) = slot.as_ref() else {
            return Err("RabbitMQ: no connection".to_owned());
        };
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("RabbitMQ: {e}"))?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .map_err(|e| format!("RabbitMQ, queue {queue}: {e}"))?;
        let counts = (declared.message_count(), declared.consumer_count());
        if let Err(error) = channel.close(200, "probed".into()).await {
            tracing::debug!(%error, "closing a probe channel failed");
        }
        Ok(counts)
    }
}
