//! Serving the payments service on a loopback port, with the correlation interceptor in front.
//!
//! `Server::builder()` needs no deadline setting: tonic wraps every connection's service in its
//! `grpc-timeout` timer whatever the builder says (`Server::timeout` only adds a cap of its own).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::card::CardNetwork;
use crate::correlation;
use crate::ledger::Ledger;
use crate::proto::v2::payments_server::PaymentsServer;
use crate::service::{PaymentsService, ServiceConfig};

/// A payments server on `127.0.0.1:<port>`; stop it with [`RunningPayments::shutdown`].
pub struct RunningPayments {
    pub addr: SocketAddr,
    pub ledger: Arc<Ledger>,
    /// The card network the service calls, to count the holds it placed.
    pub cards: Arc<CardNetwork>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

// ANCHOR: spawn
/// Serves [`PaymentsService`] on `127.0.0.1:0` (a free port chosen by the OS)
/// in a background task.
pub async fn spawn(config: ServiceConfig) -> std::io::Result<RunningPayments> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = PaymentsService::new(config);
    let (ledger, cards) = (service.ledger(), service.card_network());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        Server::builder()
            .add_service(PaymentsServer::with_interceptor(
                service,
                correlation::accept,
            ))
            // TCP_NODELAY: small messages go out at once, not after the peer's ACK.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    info!("payments-service listening on {addr}");
    Ok(RunningPayments { addr, ledger, cards, stop, task })
}
// ANCHOR_END: spawn

impl RunningPayments {
    /// Stops accepting calls, lets running ones finish, and waits for the server to exit.
    pub async fn shutdown(
        self,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}
