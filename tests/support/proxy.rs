//! A TCP proxy on loopback in front of a broker, which the test can cut: every connection through
//! it is dropped and new ones are closed at once, until it is restored.
//!
//! To the services behind it this is the broker going away and coming back: their connections
//! break mid-conversation and reconnecting fails until the proxy is restored. Unlike stopping the
//! broker itself, it disturbs no other test running against the same broker, and it works the
//! same on the native brokers and on compose's.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy; dropping it stops it.
pub struct Proxy {
    /// Where the services connect instead of the broker.
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `upstream` on a free loopback port, passing traffic.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, watch_up) = watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                if !*watch_up.borrow() {
                    drop(client); // the broker is "down": closed at once
                    continue;
                }
                tokio::spawn(pass(client, upstream, watch_up.clone()));
            }
        });
        Proxy { addr, up, task }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Lets traffic through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pass(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut up: watch::Receiver<bool>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    tokio::select! {
        // An error here is one side closing: the connection is over either way.
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = up.wait_for(|up| !*up) => {}
    }
}

/// `url` with its `host:port` (between `@` and the next `/`) replaced by `addr`.
pub fn through(url: &str, addr: SocketAddr) -> String {
    let at = url.find('@').map_or(0, |i| i + 1);
    let end = url[at..].find('/').map_or(url.len(), |i| at + i);
    format!("{}{addr}{}", &url[..at], &url[end..])
}

/// The `host:port` of `url` as a socket address.
pub fn upstream(url: &str) -> SocketAddr {
    let at = url.find('@').map_or(0, |i| i + 1);
    let end = url[at..].find('/').map_or(url.len(), |i| at + i);
    let host_port = url[at..end].replace("localhost", "127.0.0.1");
    host_port.parse().unwrap_or_else(|e| panic!("{host_port} in {url}: {e}"))
}
