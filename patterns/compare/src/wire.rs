//! Bytes on the wire, counted rather than estimated: every server in this crate
//! wraps each accepted connection in [`Metered`], which counts the bytes read from
//! and written to the socket. That is the TCP payload in both directions (framing,
//! headers and bodies, after compression), without the TCP/IP headers the kernel
//! adds.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Shared counters of one server's traffic, over all its connections.
#[derive(Clone, Debug, Default)]
pub struct Meter(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    received: AtomicU64,
    sent: AtomicU64,
}

/// A reading of a [`Meter`], seen from the server: `received` is what clients sent
/// (requests), `sent` what the server answered (responses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes the clients sent: requests, with their headers and framing.
    pub received: u64,
    /// Bytes the server sent back: answers, with their headers and framing.
    pub sent: u64,
}

impl Traffic {
    /// The traffic between an `earlier` reading and this one.
    pub fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            received: self.received.saturating_sub(earlier.received),
            sent: self.sent.saturating_sub(earlier.sent),
        }
    }

    /// Both directions together.
    pub fn total(self) -> u64 {
        self.received + self.sent
    }
}

impl Meter {
    /// The bytes counted so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            received: self.0.received.load(Ordering::SeqCst),
            sent: self.0.sent.load(Ordering::SeqCst),
        }
    }

    /// Wraps an accepted connection so that its bytes are counted by this meter.
    pub fn wrap<S>(&self, inner: S) -> Metered<S> {
        Metered { inner, meter: self.clone() }
    }

    /// Wraps a freshly accepted TCP connection, with Nagle's algorithm off: small
    /// responses must go out at once, or the benchmark measures the delayed-ACK
    /// timer instead.
    pub fn accepted(&self, socket: TcpStream) -> io::Result<Metered<TcpStream>> {
        socket.set_nodelay(true)?;
        Ok(self.wrap(socket))
    }
}

/// A connection whose bytes are counted by a [`Meter`].
#[derive(Debug)]
pub struct Metered<S> {
    inner: S,
    meter: Meter,
}

impl<S> Metered<S> {
    /// The wrapped connection, for what the server needs to know of it (its peer).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    // Bytes about to be written are counted *before* the write, and what the socket
    // did not take is taken back afterwards. Counting only afterwards would race
    // with the client: it could hold the whole response, and the benchmark read the
    // meter, before the count landed.
    fn count_write(&self, offered: usize, written: &Poll<io::Result<usize>>) {
        let taken = match written {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        let unsent = (offered - taken.min(offered)) as u64;
        self.meter.0.sent.fetch_sub(unsent, Ordering::SeqCst);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = (buf.filled().len() - before) as u64;
        self.meter.0.received.fetch_add(read, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.meter.0.sent.fetch_add(buf.len() as u64, Ordering::SeqCst);
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count_write(buf.len(), &written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let offered: usize = bufs.iter().map(|b| b.len()).sum();
        self.meter.0.sent.fetch_add(offered as u64, Ordering::SeqCst);
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_write(offered, &written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn counts_every_byte_each_way() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client =
            TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let meter = Meter::default();
        let (socket, _) = listener.accept().await.unwrap();
        let mut server = meter.accepted(socket).unwrap();

        client.write_all(&[1u8; 1000]).await.unwrap();
        let mut request = [0u8; 1000];
        server.read_exact(&mut request).await.unwrap();
        server.write_all(&[2u8; 300]).await.unwrap();
        let mut response = [0u8; 300];
        client.read_exact(&mut response).await.unwrap();

        assert_eq!(meter.traffic(), Traffic { received: 1000, sent: 300 });
        let later = Traffic { received: 1100, sent: 350 };
        assert_eq!(later.since(meter.traffic()).total(), 150);
    }
}
