//! The baseline: a TCP echo server and a client that times one fixed-size round trip.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Starts an echo server on `127.0.0.1:0`. It serves until the returned task is aborted.
pub async fn spawn() -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if socket.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok((addr, task))
}

/// One connection to the echo server; [`round_trip`](Self::round_trip) sends a message and waits
/// for all of it to come back.
pub struct EchoClient {
    socket: TcpStream,
    reply: Vec<u8>,
}

impl EchoClient {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = TcpStream::connect(addr).await?;
        // Small messages must not wait for Nagle's algorithm, or the baseline measures a timer.
        socket.set_nodelay(true)?;
        Ok(EchoClient { socket, reply: Vec::new() })
    }

    pub async fn round_trip(&mut self, message: &[u8]) -> std::io::Result<()> {
        self.socket.write_all(message).await?;
        self.reply.resize(message.len(), 0);
        self.socket.read_exact(&mut self.reply).await?;
        if self.reply != message {
            return Err(std::io::Error::other("the echo differs from the message"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_every_byte_back() {
        let (addr, server) = spawn().await.unwrap();
        let mut client = EchoClient::connect(addr).await.unwrap();
        for size in [1, 100, 10_000] {
            client.round_trip(&vec![7u8; size]).await.unwrap();
        }
        server.abort();
    }
}
