//! Serving the payments service on a loopback port, with the correlation interceptor in front.
//!
//! `Server::builder()` needs no deadline setting: tonic wraps every connection's service in its
//! `grpc-timeout` timer whatever the builder says (`Server::timeout` only adds a cap of its own).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};
use tracing::info;

use crate::card::CardNetwork;
use crate::correlation;
use crate::ledger::Ledger;
use crate::proto::v2::payment_queries_server::PaymentQueriesServer;
use crate::proto::v2::payments_server::PaymentsServer;
use crate::queries::PaymentQueriesService;
use crate::service::{PaymentsService, ServiceConfig};

/// A payments server on `127.0.0.1:<port>`; stop it with [`RunningPayments::shutdown`].
pub struct RunningPayments {
    /// Where it listens: `127.0.0.1` and the port the OS chose.
    pub addr: SocketAddr,
    /// The payments it recorded, for tests that check what happened.
    pub ledger: Arc<Ledger>,
    /// The card network the service calls, to count the holds it placed.
    pub cards: Arc<CardNetwork>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Serves [`PaymentsService`] on `127.0.0.1:0` (a free port chosen by the OS)
/// in a background task.
pub async fn spawn(config: ServiceConfig) -> std::io::Result<RunningPayments> {
    spawn_with(config, Duration::ZERO).await
}

/// Like [`spawn`], with every `PaymentQueries` answer `lookup_latency` late.
pub async fn spawn_with(
    config: ServiceConfig,
    lookup_latency: Duration,
) -> std::io::Result<RunningPayments> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = PaymentsService::new(config);
    let (ledger, cards) = (service.ledger(), service.card_network());
    let queries =
        PaymentQueriesService::new(ledger.clone()).with_latency(lookup_latency);
    let (stop, stopped) = oneshot::channel::<()>();
    // Told to stop, or the handle that could tell it was dropped: stop either way.
    let task = tokio::spawn(serve(listener, router(service, queries), async {
        let _stop_or_handle_dropped = stopped.await;
    }));
    info!("payments-service listening on {addr}");
    Ok(RunningPayments { addr, ledger, cards, stop, task })
}

/// The two payments services behind the correlation interceptor, ready for more
/// (the standalone example adds reflection and health).
pub fn router(service: PaymentsService, queries: PaymentQueriesService) -> Router {
    Server::builder()
        .add_service(PaymentsServer::with_interceptor(service, correlation::accept))
        .add_service(InterceptedService::new(
            PaymentQueriesServer::new(queries),
            correlation::accept,
        ))
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the calls
/// in flight finish before it returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // TCP_NODELAY: small messages go out at once, not after the peer's ACK.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    router.serve_with_incoming_shutdown(incoming, shutdown).await
}
impl RunningPayments {
    /// Stops accepting calls, lets running ones finish, and waits for the server to exit.
    pub async fn shutdown(
        self,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        // A refused send means the server task has already ended; awaiting it
        // below returns why.
        if self.stop.send(()).is_err() {
            tracing::debug!("the server had already stopped");
        }
        self.task.await??;
        Ok(())
    }
}
