//! The baseline: a TCP echo server and a client that times one round trip of a
//! message.
//!
//! No framing, no encoding, no routing: the client writes the bytes, the server
//! writes them back. This is the least work a request/response round trip over
//! loopback can do, so every protocol is reported as a ratio to it.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::serve::Running;
use crate::wire::Meter;

/// Starts an echo server on `127.0.0.1:0`.
pub async fn spawn() -> std::io::Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let meter = Meter::default();
    let (stop, mut stopped) = oneshot::channel::<()>();
    let connections = meter.clone();
    let task = tokio::spawn(async move {
        loop {
            let socket = tokio::select! {
                accepted = listener.accept() => accepted?.0,
                _ = &mut stopped => return Ok(()),
            };
            let socket = connections.accepted(socket)?;
            tokio::spawn(echo(socket));
        }
    });
    Ok(Running::new(addr, meter, stop, task))
}

async fn echo(mut socket: impl AsyncReadExt + AsyncWriteExt + Unpin) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if let Err(error) = socket.write_all(&buf[..n]).await {
                    return tracing::warn!(%error, "echo: writing back failed");
                }
            }
            Err(error) => return tracing::warn!(%error, "echo: reading failed"),
        }
    }
}

/// One connection to the echo server; [`round_trip`](Self::round_trip) sends a
/// message and waits for all of it to come back.
pub struct EchoClient {
    socket: TcpStream,
    reply: Vec<u8>,
}

impl EchoClient {
    /// Connects with Nagle's algorithm off, like the HTTP and gRPC clients, so the
    /// baseline measures the round trip and not a delayed-ACK timer.
    pub async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let socket = TcpStream::connect(addr).await?;
        // Small messages must not wait for Nagle's algorithm, or the baseline
        // measures a timer.
        socket.set_nodelay(true)?;
        Ok(EchoClient { socket, reply: Vec::new() })
    }

    /// Sends `message` and reads it back whole: the least work a round trip can do.
    pub async fn round_trip(&mut self, message: &[u8]) -> std::io::Result<()> {
        self.reply.resize(message.len(), 0);
        // Write and read at once: a message larger than the socket buffers would
        // otherwise deadlock, each side waiting for the other to read.
        let (mut read, mut write) = self.socket.split();
        let (written, read) =
            tokio::join!(write.write_all(message), read.read_exact(&mut self.reply));
        written?;
        read?;
        if self.reply != message {
            return Err(std::io::Error::other("the echo differs from the message"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Traffic;

    #[tokio::test]
    async fn echoes_every_byte_back_and_counts_them() {
        let server = spawn().await.unwrap();
        let mut client = EchoClient::connect(server.addr).await.unwrap();
        for size in [1, 100, 200_000] {
            client.round_trip(&vec![7u8; size]).await.unwrap();
        }
        let each_way = 1 + 100 + 200_000;
        assert_eq!(
            server.meter.traffic(),
            Traffic { received: each_way, sent: each_way }
        );
        server.shutdown().await.unwrap();
    }
}
