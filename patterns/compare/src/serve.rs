//! A server running in a background task on a loopback port, with the meter that
//! counts its bytes on the wire.

use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::wire::Meter;

/// Any error a server task ends with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A server on `127.0.0.1:<port>`; stop it with [`Running::shutdown`].
pub struct Running {
    /// Where the server listens; the port is the one the OS chose.
    pub addr: SocketAddr,
    /// Counts the bytes of every connection the server accepts.
    pub meter: Meter,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), BoxError>>,
}

impl Running {
    pub(crate) fn new(
        addr: SocketAddr,
        meter: Meter,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), BoxError>>,
    ) -> Self {
        Running { addr, meter, stop, task }
    }

    /// Stops accepting connections and waits for the server task to end.
    pub async fn shutdown(self) -> Result<(), BoxError> {
        // A refused send means the server task has already ended; awaiting it
        // below returns why.
        if self.stop.send(()).is_err() {
            tracing::debug!("the server had already stopped");
        }
        self.task.await?
    }
}
